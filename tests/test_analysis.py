"""Feature analysis: exactness against a per-feature loop, planted-feature
recall, false discoveries under shuffled labels, sweeps, errors, report."""

import json
import re

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

import analysis_helpers as helpers
from conftest import last_line, run_script
from emosae_jax import analysis, data, runs, saes


def settings(**kw):
  return analysis.Settings(**{**helpers.RANDOM_SETTINGS, **kw})


# --------------------------------------------------------------------------
# The vmapped computation equals a plain loop


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _bh(p, mask):
  """Benjamini-Hochberg, the textbook loop."""
  idx = [i for i in range(len(p)) if mask[i]]
  n = len(idx)
  q = np.ones(len(p))
  ordered = sorted(idx, key=lambda i: p[i])
  running = 1.0
  for rank in range(n, 0, -1):
    i = ordered[rank - 1]
    running = min(running, p[i] * n / rank)
    q[i] = running
  return q


def _label_stats(acts, labels, k):
  """Per feature, a loop: rates, selectivity, AUROC (rankdata), argmax."""
  n, m = acts.shape
  rate, sel, auroc = np.zeros((k, m)), np.zeros(m), np.zeros((k, m))
  for f in range(m):
    a = acts[:, f]
    r = rankdata(a)
    for e in range(k):
      pos = labels == e
      rate[e, f] = np.mean(a[pos] != 0)
      n1 = pos.sum()
      auroc[e, f] = (r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * (n - n1))
    sel[f] = rate[:, f].max() / rate[:, f].mean() if rate[:, f].mean() else 0
  emo = auroc.argmax(0)
  counts = np.array([[np.sum((acts[:, f] != 0) & (labels == e))
                      for f in range(m)] for e in range(k)])
  return rate, sel, auroc, emo, counts[emo, np.arange(m)]


def _reference(acts, labels, k, perms, s, w, b, x, w_dec, dirs):
  n, m = acts.shape
  rate, sel, auroc, emo, support = _label_stats(acts, labels, k)
  stat = auroc.max(0)
  fires = (acts != 0).sum(0)
  live, tested = fires > 0, fires >= s.min_support
  null = [_label_stats(acts, labels[perm], k) for perm in perms]
  null_stat = np.array([x_[2].max(0) for x_ in null])
  p = np.array([(1 + np.sum(null_stat[:, f] >= stat[f] - 1e-6))
                / (len(perms) + 1) for f in range(m)])
  q = _bh(p, tested)
  sig = (q <= s.fdr) & tested & (support >= s.min_support)
  null_sig = []
  for i, (_, _, _, emo_i, sup_i) in enumerate(null):
    p_i = np.array([np.sum(null_stat[:, f] >= null_stat[i, f] - 1e-6)
                    / len(perms) for f in range(m)])
    null_sig.append(np.sum((_bh(p_i, tested) <= s.fdr) & tested
                           & (sup_i >= s.min_support)))
  null_sel = [np.sum(live & (x_[1] >= 2.0 - 1e-6)) for x_ in null]
  typical = np.zeros(m)
  for f in range(m):
    a = acts[:, f]
    own = (labels == emo[f]) & (a != 0)
    typical[f] = a[own].mean() if own.any() else (
        a[a != 0].mean() if (a != 0).any() else 0)
  ref = dict(rate=rate, selectivity=sel, auroc=auroc, emotion=emo,
             support=support, p_value=p, q_value=q, significant=sig,
             typical_activation=typical,
             mean_activation=np.array([[acts[labels == e, f].mean()
                                        for f in range(m)]
                                       for e in range(k)]),
             null_significant_count=np.array(null_sig),
             null_selective_counts=np.array(null_sel)[:, None],
             selective_counts=np.array([np.sum(live & (sel >= 2.0 - 1e-6))]))
  # Causal checks, by explicit edits of the embeddings.
  causal = {}
  strengths = np.array(s.strengths)
  for f in range(m):
    e, own = emo[f], labels == emo[f]
    base = _softmax(x @ w + b)[:, e]
    abl = _softmax((x - acts[:, f:f + 1] * w_dec[f]) @ w + b)[:, e]
    dose, dose_r = [], []
    norm = typical[f] * np.linalg.norm(w_dec[f])
    for st in strengths:
      dose.append(_softmax((x + st * typical[f] * w_dec[f]) @ w + b)[~own, e]
                  .mean())
      dose_r.append(np.mean([_softmax((x + st * norm * r) @ w + b)[~own, e]
                             .mean() for r in dirs]))
    causal[f] = dict(ablation_own=(base - abl)[own].mean(),
                     ablation_other=(base - abl)[~own].mean(), dose=dose,
                     dose_random=dose_r,
                     slope=np.polyfit(strengths, dose, 1)[0],
                     slope_random=np.polyfit(strengths, dose_r, 1)[0])
  return ref, causal


def test_vmapped_equals_per_feature_loop():
  import jax.numpy as jnp
  members = analysis.load_members(helpers.random_run())
  es = analysis.load_data(members)
  s = settings()
  x = runs.normalizer_of(members.info).apply(es.embeddings)
  x = x.astype(np.float32)
  groups = analysis.group_ids(es.groups)
  arrays, extras = analysis.compute(members.sae, members.params, x, es.labels,
                                    3, groups, s)
  params = {k: jnp.asarray(v[0]) for k, v in members.params.items()}
  acts = np.asarray(saes.encode(members.sae, params, jnp.asarray(x)),
                    np.float64)
  perms = analysis.label_permutations(s.seed, s.permutations, groups, len(x))
  w, b = extras["probe_weights"]
  ref, causal = _reference(acts, es.labels, 3, perms, s, w, b, x,
                           members.params["W_dec"][0], extras["random_dirs"])
  assert 0 < ref["significant"].sum() < len(ref["significant"])  # non-trivial
  for key, want in ref.items():
    np.testing.assert_allclose(arrays[key][0], want, rtol=1e-4, atol=1e-5,
                               err_msg=key)
  for c, f in enumerate(arrays["causal_features"][0]):
    for key, want in causal[int(f)].items():
      np.testing.assert_allclose(arrays[key][0, c], want, rtol=1e-3,
                                 atol=1e-5, err_msg=f"{key} of feature {f}")
  top = np.sort(acts, 0)[::-1][:s.n_top].T
  np.testing.assert_allclose(arrays["top_value"][0], top, rtol=1e-5)


def test_average_ranks_and_bh_match_references():
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  v = rng.integers(0, 5, 40).astype(np.float32)  # many ties
  np.testing.assert_allclose(analysis.average_ranks(jnp.asarray(v)),
                             rankdata(v))
  p = rng.uniform(size=30)
  mask = rng.uniform(size=30) < 0.7
  np.testing.assert_allclose(
      analysis.benjamini_hochberg(jnp.asarray(p), jnp.asarray(mask)),
      _bh(p, mask), rtol=1e-6)
  a = rng.exponential(size=60) * (rng.uniform(size=60) < 0.4)
  y = rng.integers(0, 2, 60)
  r = rankdata(a)
  u = r[y == 1].sum() - (y == 1).sum() * ((y == 1).sum() + 1) / 2
  assert u / ((y == 1).sum() * (y == 0).sum()) == pytest.approx(
      roc_auc_score(y, a))


def test_sparse_entry_ranks_match_dense_ranks():
  """Ranks from the non-zero entries alone, with ties and negative values."""
  import jax.numpy as jnp
  rng = np.random.default_rng(1)
  acts = rng.integers(-2, 4, (30, 6)) * (rng.uniform(size=(30, 6)) < 0.4)
  acts = acts.astype(np.float32)
  acts[:, 5] = 0  # a dead feature
  entries = analysis.sparse_entries(jnp.asarray(acts), 128)
  rows, cols, offset, valid, zero_rank = map(np.asarray, (
      analysis.entry_rank_offsets(*entries, 30, 6)))
  ranks = np.tile(zero_rank, (30, 1))
  ranks[rows[valid], cols[valid]] += offset[valid]
  np.testing.assert_allclose(ranks, np.apply_along_axis(rankdata, 0, acts))


def test_permutations_stay_within_groups():
  groups = np.random.default_rng(0).permutation(np.repeat(np.arange(5), 7))
  labels = np.tile(np.arange(7), 5)
  perms = analysis.label_permutations(0, 20, groups, len(groups))
  for perm in perms:
    assert sorted(perm) == list(range(len(groups)))
    assert np.all(groups[perm] == groups)
  assert np.mean(labels[perms] != labels) > 0.5


# --------------------------------------------------------------------------
# Planted features


@pytest.fixture(scope="module")
def planted():
  workdir = helpers.planted_run()
  result = analysis.analyze(workdir, settings=analysis.Settings(
      permutations=200, n_causal=64))
  return workdir, result


def test_finds_planted_emotion_features(planted):
  _, result = planted
  syn = helpers.planted_data()
  arrays = result.arrays
  dec = result.decoders[0] / np.linalg.norm(result.decoders[0], axis=1,
                                            keepdims=True)
  found = []
  for label, feats in syn.label_features.items():
    for j in feats:
      f = int(np.argmax(dec @ syn.features[j]))
      found.append(bool(arrays["significant"][0, f]
                        and arrays["emotion"][0, f] == label))
  print(f"planted recall {np.mean(found):.3f} of {len(found)}")
  assert np.mean(found) >= 0.9
  member = result.summary["members"][0]
  sig = next(c for c in member["counts"] if c["name"] == "significant")
  assert sig["real"] >= len(found)
  assert sig["shuffled"]["mean"] <= 0.05 * len(found)
  # Steering with a significant feature moves the probe more than random.
  slopes = [(r["causal"]["slope"], r["causal"]["slope_random"])
            for r in member["features"] if r["causal"]]
  assert np.median([a - b for a, b in slopes]) > 0


def test_shuffled_labels_give_few_false_discoveries(planted):
  workdir, _ = planted
  es = helpers.planted_data().embedding_set
  rng = np.random.default_rng(1)
  shuffled = data.make_embedding_set(
      es.embeddings, rng.permutation(es.labels), es.label_names, es.texts,
      es.groups, encoder=es.meta["encoder"])
  path = data.save_embedding_set(shuffled, helpers.scratch("shuffled"))
  result = analysis.analyze(workdir, str(path), analysis.Settings(
      permutations=200, n_causal=64))
  n_sig = int(result.arrays["significant_count"][0])
  n_tested = int(result.arrays["tested"][0].sum())
  print(f"shuffled labels: {n_sig} significant of {n_tested} tested")
  assert n_sig <= 0.05 * n_tested
  assert not result.summary["source"]["same_data_as_training"]


def test_heatmap_shows_every_emotion(planted):
  """Defect: rows sorted by emotion and cut showed only the first emotions."""
  from emosae_jax.analysis import figures
  _, result = planted
  member = result.summary["members"][0]
  names = result.summary["data"]["label_names"]
  per_emotion = {n: sum(r["emotion"] == n for r in member["features"])
                 for n in names}
  assert sum(per_emotion.values()) > 8 and min(per_emotion.values()) >= 2
  rows = figures.heatmap_rows(member, names, max_features=8)
  assert len(rows) == 8
  assert {n: sum(r["emotion"] == n for r in rows) for n in names} == {
      n: 2 for n in names}
  for n in names:  # each emotion's strongest features, strongest first
    mine = [r["auroc"] for r in rows if r["emotion"] == n]
    best = sorted((r["auroc"] for r in member["features"]
                   if r["emotion"] == n), reverse=True)
    assert mine == best[:2]


def test_features_sorted_by_effect_and_floor_p_values_bounded(planted):
  from emosae_jax import report
  _, result = planted
  records = result.summary["members"][0]["features"]
  aurocs = [r["auroc"] for r in records]
  assert aurocs == sorted(aurocs, reverse=True)
  floor = 1 / (200 + 1)
  assert any(r["p_value"] == pytest.approx(floor) for r in records)
  page = report.features_section(result.summary).body
  assert "&lt; 0.005" in page  # 1/201
  assert f"{floor:.2e}" not in page


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
  import io
  import sys
  members = analysis.load_members(helpers.random_run())
  es = analysis.load_data(members)
  x = runs.normalizer_of(members.info).apply(es.embeddings)
  args = (members.sae, members.params, x.astype(np.float32), es.labels, 3,
          analysis.group_ids(es.groups), settings())
  analysis.compute(*args, progress=True)  # pytest's capture: not a tty
  out = capsys.readouterr()
  assert out.out == "" and out.err == ""

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  terminal = Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  analysis.compute(*args, progress=True)
  assert "analysis" in terminal.getvalue()
  assert "1/1" in terminal.getvalue()
  terminal.truncate(0)
  analysis.compute(*args, progress=False)
  assert terminal.getvalue().strip("\x00") == ""


# --------------------------------------------------------------------------
# Sweeps: members, failed members, stability


def test_sweep_members_and_stability(tmp_path):
  sweep, perm = helpers.permuted_sweep(tmp_path)
  result = analysis.analyze(sweep, settings=settings(member_batch=1))
  a = result.arrays
  assert [m["index"] for m in result.summary["members"]] == [0, 2]
  # Member 2 is member 0 with features renamed: same statistics, permuted.
  for key in ("selectivity", "p_value", "q_value", "significant"):
    np.testing.assert_allclose(a[key][1], a[key][0][perm], err_msg=key)
  inverse = np.argsort(perm)
  for record in result.summary["members"][0]["features"]:
    match = record["matches"][0]
    assert match["member"] == 1 and match["feature"] == inverse[
        record["feature"]]
    assert match["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert record["stability"] == 1.0
    assert record["stability_significant"] == 1.0


def test_match_features_is_one_to_one():
  rng = np.random.default_rng(0)
  b = rng.normal(size=(10, 8))
  a = np.stack([b[3], b[3] + 0.01, b[7]])  # two rows want the same match
  matched, cos = analysis.match_features(a, b, np.arange(3))
  assert len(set(matched)) == 3 and matched[2] == 7
  assert 3 in matched[:2]


# --------------------------------------------------------------------------
# Bad input


def _bad_run(tmp_path, es, d_sae=32):
  es_path = data.save_embedding_set(es, tmp_path / "data")
  return helpers.write_run(tmp_path / "run", es_path,
                           helpers.random_params(es.dim, d_sae, 0), d_sae, 4)


@pytest.mark.parametrize("case, message", [
    ("single_emotion", "only one emotion"),
    ("small_emotion", "fewer than --min_support"),
    ("unlabelled", "no labelled examples"),
    ("dimension", "input dimension 16"),
    ("width", "d_sae=32 but its config says"),
])
def test_bad_input_errors(tmp_path, case, message):
  es = helpers.labelled_set()
  run = _bad_run(tmp_path, es)
  data_path = None
  if case in ("single_emotion", "small_emotion", "unlabelled"):
    labels = es.labels.copy()
    if case == "single_emotion":
      labels[labels > 0] = -1
    elif case == "small_emotion":
      labels[np.flatnonzero(labels == 2)[2:]] = -1
    else:
      labels[:] = -1
    bad = data.make_embedding_set(es.embeddings, labels, es.label_names,
                                  es.texts, es.groups)
    data_path = str(data.save_embedding_set(bad, tmp_path / case))
  elif case == "dimension":
    bad = helpers.labelled_set(d=12)
    data_path = str(data.save_embedding_set(bad, tmp_path / case))
  else:
    config = json.loads((run / "config.json").read_text())
    config["model"]["d_sae"] = 48
    data.atomic_write_json(run / "config.json", config)
    message = "d_sae=32 but its config says d_in=16, d_sae=48"
  with pytest.raises(data.DataError, match=re.escape(message)):
    analysis.analyze(run, data_path, settings())


def test_script_bad_input_is_one_line_error(tmp_path):
  es = helpers.labelled_set()
  run = _bad_run(tmp_path, es)
  proc = run_script("analyze.py", f"--workdir={run}", "--min_support=80")
  assert proc.returncode == 2
  assert last_line(proc.stderr).startswith("error: ")
  assert "fewer than --min_support=80" in proc.stderr
  assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------
# Script, JSON and report


def test_script_writes_json_figures_and_report(tmp_path):
  run = helpers.random_run()
  out = tmp_path / "out"
  proc = run_script("analyze.py", f"--workdir={run}", f"--out={out}",
                    "--permutations=60", "--fdr=0.1", "--min_support=3")
  assert proc.returncode == 0, proc.stderr
  assert "shuffled" in proc.stdout
  for name in ("analysis.json", "analysis_arrays.safetensors", "heatmap.png",
               "selectivity_null.png", "dose_response.png", "report.html"):
    assert (out / name).stat().st_size > 0, name
  summary = json.loads((out / "analysis.json").read_text())
  n_counts = 0
  for member in summary["members"]:
    for c in member["counts"]:
      n_counts += 1
      assert {"mean", "min", "max", "n_shuffles"} <= set(c["shuffled"])
  # selectivity>=2, significant, bh_significant, one per emotion
  assert n_counts == 3 + 3

  page = (out / "report.html").read_text()
  counts = re.findall(r'<span class="count">\d+</span>( <span class='
                      r'"baseline">\(shuffled labels: mean [\d.]+, range '
                      r"\d+–\d+, 60 shuffles\)</span>)?", page)
  assert len(counts) == n_counts and all(counts)  # a baseline beside each
  assert page.count('class="count"') == n_counts
  assert page.count('class="baseline"') == n_counts
  assert "data:image/png;base64," in page and "<script>" in page
  assert not re.search(r'(src|href)="(https?:)?//', page)  # offline
  if summary["members"][0]["features"]:
    assert "&lt;b&gt;prompt&lt;/b&gt;" in page and "<b>prompt" not in page


def test_report_sections_can_be_extended(tmp_path):
  from emosae_jax import report
  extra = report.Section("Steering", report.audio_tag(b"RIFF0000WAVE",
                                                      "x<y") + "<p>ok</p>")
  path = report.write_report(tmp_path / "r.html", "t & u", [
      report.Section("A", report.table(["a", "b"], [[report.cell(2.5),
                                                     report.cell("<i>")]])),
      extra])
  page = path.read_text()
  assert "<title>t &amp; u</title>" in page
  assert 'href="#steering"' in page and "data:audio/wav;base64," in page
  assert "&lt;i&gt;" in page and 'title="x&lt;y"' in page
