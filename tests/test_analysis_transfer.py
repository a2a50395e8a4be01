"""Beyond the corpus: validation on another labelled set, stability across
seeds of one configuration, consensus directions. Known answers from a
planted corpus where some features follow the emotion in both sets
(general) and some only in the training set (corpus-specific)."""

import json
import re

import numpy as np
import pytest

import analysis_helpers as helpers
from conftest import last_line, run_script
from emosae_jax import analysis, data
from emosae_jax.analysis.validation import holding_by_corpus_auroc


@pytest.fixture(scope="module")
def transfer():
  return helpers.transfer_analysis()


def _planted_feature(result, i, direction):
  dec = result.decoders[i]
  cos = dec @ direction / np.linalg.norm(dec, axis=1)
  f = int(np.argmax(cos))
  return f, float(cos[f])


def test_validation_tells_general_from_corpus_specific(transfer):
  _, _, result = transfer
  a, dic = result.arrays, helpers.transfer_dictionary()
  for i, member in enumerate(result.summary["members"]):
    for kind, should_hold in (("general", True), ("corpus", False)):
      for e, direction in enumerate(dic[kind]):
        f, cos = _planted_feature(result, i, direction)
        assert cos > 0.8, (i, kind, e)
        assert a["significant"][i, f] and a["emotion"][i, f] == e
        assert bool(a["validation0/holds"][i, f]) == should_hold, (i, kind, e)
    v = member["validation"][0]
    assert v["hold"]["real"] >= 3
    assert v["hold"]["shuffled"]["max"] <= 1  # the null: shuffled labels
    assert v["share_hold"] == v["hold"]["real"] / v["testable"]
    holding = [r["feature"] for r in member["features"]
               if r["validation"][0]["holds"]]
    assert sorted(holding) == sorted(np.flatnonzero(
        a["validation0/holds"][i]).tolist())


def test_validation_labels_mapped_by_name(transfer):
  _, _, result = transfer
  info = result.summary["validation"][0]
  assert info["emotions"] == ["happy", "sad", "tense"]  # training order
  assert info["left_out"] == {"calm": "not in the training set"}
  # The corpus probe transfers: general features carry the emotion.
  assert info["corpus_probe"]["balanced_accuracy"] > 0.5


def test_validation_bad_input(transfer, tmp_path):
  workdir, _, _ = transfer
  es = helpers.transfer_set("validation", 2)
  narrow = data.make_embedding_set(es.embeddings[:, :8], es.labels,
                                   es.label_names, es.texts, es.groups)
  one = data.make_embedding_set(es.embeddings, es.labels,
                                ["Tense", "glad", "blue", "calm"], es.texts,
                                es.groups)
  other = data.make_embedding_set(es.embeddings, es.labels, es.label_names,
                                  es.texts, es.groups,
                                  encoder={"name": "t5-large"})
  for name, bad, message in (
      ("narrow", narrow, "dimension 8, the SAE 32"),
      ("encoder", other, "embedded with 't5-large', the training data with "
       "'planted'"),
      ("one", one, "1 emotion(s) shared with the training set")):
    path = data.save_embedding_set(bad, tmp_path / name)
    with pytest.raises(data.DataError, match=re.escape(message)):
      analysis.analyze(workdir, validation=[str(path)])
  path = data.save_embedding_set(one, tmp_path / "script")
  proc = run_script("analyze.py", f"--workdir={workdir}",
                    f"--validation={path}", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "1 emotion(s) shared" in last_line(proc.stderr)


def test_report_leads_with_what_holds(transfer, tmp_path):
  _, val_path, result = transfer
  analysis.write(result, tmp_path)
  page = (tmp_path / "report.html").read_text()
  sections = re.findall(r'<section id="([^"]+)"', page)
  assert sections[:2] == ["summary", "validation"]
  body = page.split('id="validation"')[1].split("</section>")[0]
  holds = re.findall(r"<td[^>]*>(yes|no)</td>", body)
  assert holds and holds == sorted(holds, key=lambda h: h != "yes")
  assert "not in the training set" in body
  assert (tmp_path / "validation.png").stat().st_size > 0
  stored = analysis.load_arrays(tmp_path)
  np.testing.assert_array_equal(stored["validation0/holds"],
                                result.arrays["validation0/holds"])
  summary = json.loads((tmp_path / "analysis.json").read_text())
  assert summary["validation"][0]["path"] == str(val_path)
  assert "By corpus AUROC" in body


def test_holding_by_corpus_auroc_counts_each_band():
  def rec(auroc, holds, reappears_in):
    return {"auroc": auroc, "reappears_in": reappears_in,
            "validation": [{"holds": holds}]}
  feats = [rec(0.55, False, 0), rec(0.58, True, 1), rec(0.6, True, 2),
           rec(0.69, False, None), rec(0.95, True, 1), rec(1.0, True, 0)]
  bands = holding_by_corpus_auroc(feats, 0)
  assert [(b["band"], b["n"], b["hold"], b["reappear"]) for b in bands] == [
      ("0.5-0.6", 2, 1, 1), ("0.6-0.7", 2, 1, 1), ("0.7-1", 2, 2, 1)]
  assert bands[0]["share_hold"] == 0.5
  assert holding_by_corpus_auroc([], 0)[0][
      "share_hold"] is None


def test_by_corpus_auroc_adds_up_to_the_member_counts(transfer):
  """The bands cover every corpus-significant feature and every one that
  holds (in the planted corpus both kinds of feature follow the emotion on
  the corpus, so the band alone does not tell them apart there)."""
  _, _, result = transfer
  for m in result.summary["members"]:
    v = m["validation"][0]
    bands = v["by_corpus_auroc"]
    assert sum(b["n"] for b in bands) == v["corpus_significant"]
    assert sum(b["hold"] for b in bands) == v["hold"]["real"]


def test_stability_matches_only_seeds_of_one_configuration(transfer):
  _, _, result = transfer
  members = result.summary["members"]
  lr = [m["overrides"]["train.lr"] for m in members]
  assert sorted(set(lr)) == list(helpers.TRANSFER_LRS)
  dic = helpers.transfer_dictionary()
  for i, member in enumerate(members):
    assert member["n_other_seeds"] == len(helpers.TRANSFER_SEEDS) - 1
    for r in member["features"]:
      others = {x["member"] for x in r["matches"]}
      assert others == {j for j in range(len(members))
                        if j != i and lr[j] == lr[i]}
      assert r["reappears_in"] == sum(
          x["cosine"] >= result.summary["settings"]["stability_threshold"]
          for x in r["matches"])
    # Planted directions come back in every other seed.
    for e, direction in enumerate(dic["general"]):
      f, _ = _planted_feature(result, i, direction)
      record = next(r for r in member["features"] if r["feature"] == f)
      assert record["reappears_in"] == member["n_other_seeds"]
    share = np.mean([r["reappears_in"] >= r["n_other_seeds"] / 2
                     for r in member["features"]])
    assert member["fraction_reappearing"] == pytest.approx(share)


def test_same_config_groups():
  groups = analysis.same_config_groups([
      {"train.lr": 1, "seed": 0}, {"train.lr": 2, "seed": 0},
      {"train.lr": 1, "seed": 1}, {"seed": 5}, {}])
  assert groups == [[0, 2], [1], [3, 4]]


def test_consensus_recovers_the_general_directions(transfer):
  """Only general features are robust (corpus-specific ones do not hold),
  so each configuration's consensus per emotion is the planted general
  direction; it steers the probe like the best feature, random does not."""
  _, _, result = transfer
  a, dic = result.arrays, helpers.transfer_dictionary()
  consensus = a["directions/consensus"]  # [G, K, d]
  assert consensus.shape == (len(helpers.TRANSFER_LRS), 3, 32)
  cos = np.abs(consensus @ dic["general"].T)  # [G, K, K]
  assert np.all(np.diagonal(cos, axis1=1, axis2=2) > 0.95), cos
  assert np.all(a["directions/consensus_seeds"] == len(helpers.TRANSFER_SEEDS))
  robust = a["directions/robust"]
  assert not np.any(robust & ~a["validation0/holds"])
  for group in result.summary["directions"]["groups"]:
    for name, r in group["emotions"].items():
      assert r["consensus"]["spread"] > 0.95
      c = r["comparison"]
      assert c["consensus"]["slope"] > 3 * abs(c["random"]["slope"])
      assert c["consensus"]["auroc_validation"][0] > 0.75
      assert abs(c["random"]["auroc_validation"][0] - 0.5) < 0.1
  # The class-mean baseline: emotion means, by direct computation.
  es = helpers.transfer_set("train", 0)
  from emosae_jax import runs
  members = analysis.load_members(helpers.transfer_sweep()[0])
  x = runs.normalizer_of(members.info).apply(es.embeddings)
  want = x[es.labels == 1].mean(0) - x[es.labels != 1].mean(0)
  np.testing.assert_allclose(a["directions/class_mean"][1], want, rtol=1e-4,
                             atol=1e-5)


def test_script_validation_flag_and_fallback_shuffle(tmp_path):
  """--validation on a run; a validation set whose groups each hold one
  emotion is shuffled over all rows (a corpus run would refuse)."""
  run = helpers.random_run()
  other = helpers.labelled_set(seed=1)
  one_per_group = data.make_embedding_set(
      other.embeddings, other.labels, other.label_names, other.texts,
      [f"g{label}" for label in other.labels])
  path = data.save_embedding_set(one_per_group, tmp_path / "validation")
  proc = run_script("analyze.py", f"--workdir={run}", f"--out={tmp_path}",
                    f"--validation={path}", "--permutations=60",
                    "--fdr=0.1", "--min_support=3")
  assert proc.returncode == 0, proc.stderr
  assert f"holds on {path}:" in proc.stdout
  summary = json.loads((tmp_path / "analysis.json").read_text())
  assert summary["validation"][0]["permutation"]["scheme"] == (
      "all labelled rows")
  assert summary["permutation"]["scheme"] == "within groups"
  assert "What holds on other labelled sets" in (
      tmp_path / "report.html").read_text()


def test_report_says_whether_sae_directions_reach_the_class_mean(transfer):
  """Per emotion and validation set: the best SAE-derived direction's
  validation AUROC against the class mean's, said in one sentence."""
  from emosae_jax.analysis import report_sections
  _, val_path, result = transfer
  verdicts = analysis.class_mean_verdicts(result.summary)
  groups = result.summary["directions"]["groups"]
  assert len(verdicts) == len(groups) * 3
  for v in verdicts:
    group = next(g for g in groups if g["overrides"] == v["configuration"])
    c = group["emotions"][v["emotion"]]["comparison"]
    best = max(c["consensus"]["auroc_validation"][0],
               c["best_feature"]["auroc_validation"][0])
    base = c["class_mean"]["auroc_validation"][0]
    assert v["set"] == str(val_path)
    assert v["best_auroc"] == best and v["class_mean_auroc"] == base
    assert v["gap"] == pytest.approx(best - base)
    assert v["reaches"] == (best >= base)
    word = "reaches" if best >= base else "does NOT reach"
    assert f"{word} the class-mean direction's AUROC {base:.3f}" in v["text"]
    assert f"{abs(best - base):.3f})" in v["text"]
  body = report_sections.directions_section(result.summary).body
  from emosae_jax.report import esc
  assert all(esc(v["text"]) in body for v in verdicts)


def test_breadth_tiers_add_up_to_the_member_counts(transfer):
  """Tiers partition the corpus-significant features: counts, holding
  (real and shuffled) and the records' tiers agree with the totals."""
  _, _, result = transfer
  a = result.arrays
  for i, m in enumerate(result.summary["members"]):
    b, v = m["breadth"], m["validation"][0]
    assert b["broad"]["n"] + b["narrow"]["n"] == len(m["features"])
    assert b["broad"]["n"] == sum(r["tier"] == "broad"
                                  for r in m["features"])
    assert b["broad"]["n"] == int(np.sum(a["broad"][i]))
    tiers = v["by_breadth"]
    assert sum(t["hold"]["real"] for t in tiers.values()) == v["hold"]["real"]
    assert sum(t["testable"] for t in tiers.values()) == v["testable"]
    np.testing.assert_array_equal(
        a["validation0/null_holds_broad_count"][i]
        <= a["validation0/null_holds_count"][i], True)
