"""Breadth tiers (emosae_jax/analysis/breadth.py), known answers.

A planted corpus read by an SAE whose encoder IS the planted dictionary (no
training: activations equal the planted coefficients): per emotion one
broad feature firing on 60% of the emotion's prompts in both sets, and
narrow features each firing only on the prompts of one emotion word (about
8 of 100), which the validation set, whose words are new, does not share
(there they fire at random). Both kinds are significant on the corpus; the
tiers must separate them exactly, and only the broad ones hold.
"""

import json

import numpy as np
import pytest

import analysis_helpers as helpers
from emosae_jax import analysis, data, export
from emosae_jax import directions_format as fmt
from emosae_jax.analysis import breadth

K, D, WORDS, NARROW_WORDS = 3, 16, 12, 2
N_PER = {"train": 100, "validation": 60}
# Dictionary rows: broad[e], narrow[e, w] (w < NARROW_WORDS), background.
N_BROAD, N_NARROW, N_BACKGROUND = K, K * NARROW_WORDS, 3


def _dictionary() -> np.ndarray:
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
  return q.T[:N_BROAD + N_NARROW + N_BACKGROUND]  # orthonormal rows


def _coefficients(split: str, seed: int):
  """(labels, coefficients [N, m] >= 0) of one split."""
  rng = np.random.default_rng(seed)
  n = N_PER[split] * K
  labels = np.arange(n) % K
  word = (np.arange(n) // K) % WORDS  # each emotion's prompts cycle words
  own = labels[:, None] == np.arange(K)[None]
  broad = rng.uniform(size=own.shape) < np.where(own, 0.6, 0.03)
  if split == "train":  # a word-specific habit of the corpus
    narrow = np.stack([(labels == e) & (word == w) for e in range(K)
                       for w in range(NARROW_WORDS)], 1)
  else:  # new words: the narrow features fire at random
    narrow = rng.uniform(size=(n, N_NARROW)) < 0.05
  background = rng.uniform(size=(n, N_BACKGROUND)) < 0.2
  on = np.concatenate([broad, narrow, background], 1)
  return labels, on * rng.uniform(1.0, 2.0, on.shape)


def _set(split: str, seed: int) -> data.EmbeddingSet:
  labels, c = _coefficients(split, seed)
  x = c @ _dictionary()
  n = len(labels)
  return data.make_embedding_set(
      x, labels, ["happy", "sad", "tense"],
      [f"{split} {i}" for i in range(n)],
      [f"{split}{i % 10}" for i in range(n)],
      encoder={"name": "planted", "revision": "1"})


def write_planted_run(name):
  """(run, params, validation folder): the dictionary SAE as a run on the
  planted training set."""
  from emosae_jax import runs
  root = helpers.scratch(name)
  train = data.save_embedding_set(_set("train", 0), root / "train")
  val = data.save_embedding_set(_set("validation", 1), root / "validation")
  dic = _dictionary()
  m = len(dic)
  # A placeholder run gives the normaliser training records; the encoder
  # then undoes it: pre = (x_norm - b_dec) @ W_enc = scale * c.
  placeholder = {"W_enc": dic.T, "b_enc": np.zeros(m), "W_dec": dic,
                 "b_dec": np.zeros(D)}
  run = helpers.write_run(root / "run", train, _f32(placeholder), m, m)
  norm = runs.normalizer_of(runs.load_members(run).info)
  # b_enc < 0: float rounding leaves ~1e-7 where a feature is off.
  params = _f32(dict(placeholder, b_dec=-norm.mean * norm.scale,
                     b_enc=np.full(m, -0.01)))
  runs.write_params(run, params)
  return run, params, val


@pytest.fixture(scope="module")
def planted():
  """(run, validation folder, Result) of the dictionary SAE."""
  run, _, val = write_planted_run("breadth")
  result = analysis.analyze(run, settings=analysis.Settings(
      permutations=200, n_causal=8, n_random=2),
                            validation=[str(val)])
  return run, val, result


def _f32(params):
  return {k: np.asarray(v, np.float32) for k, v in params.items()}


def test_tiers_separate_broad_from_word_specific_features(planted):
  _, _, result = planted
  a = result.arrays
  broad_ids = np.arange(N_BROAD)
  narrow_ids = N_BROAD + np.arange(N_NARROW)
  # Both kinds are significant for their emotion on the corpus.
  assert np.all(a["significant"][0, broad_ids])
  assert np.all(a["significant"][0, narrow_ids])
  np.testing.assert_array_equal(a["emotion"][0, broad_ids], np.arange(K))
  np.testing.assert_array_equal(a["emotion"][0, narrow_ids],
                                np.repeat(np.arange(K), NARROW_WORDS))
  # The tiers separate them exactly (background features: not significant).
  sig = np.flatnonzero(a["significant"][0])
  assert set(sig) == set(broad_ids) | set(narrow_ids)
  assert set(np.flatnonzero(a["broad"][0])) == set(broad_ids)
  member = result.summary["members"][0]
  tiers = {r["feature"]: r["tier"] for r in member["features"]}
  assert tiers == {int(f): "broad" if f < N_BROAD else "narrow" for f in sig}
  assert member["breadth"]["broad"]["n"] == N_BROAD
  assert member["breadth"]["narrow"]["n"] == N_NARROW
  assert result.summary["settings"]["broad_support"] == 0.1


def test_broad_tier_holds_and_narrow_does_not(planted):
  _, _, result = planted
  v = result.summary["members"][0]["validation"][0]
  by = v["by_breadth"]
  assert by["broad"]["testable"] == N_BROAD
  assert by["narrow"]["testable"] == N_NARROW
  assert by["broad"]["share_hold"] == 1.0
  assert by["narrow"]["share_hold"] == 0.0
  # The tiers add up to the member's totals, real and shuffled.
  assert by["broad"]["hold"]["real"] + by["narrow"]["hold"]["real"] == (
      v["hold"]["real"])
  assert by["broad"]["testable"] + by["narrow"]["testable"] == v["testable"]
  assert by["broad"]["hold"]["shuffled"]["mean"] + by["narrow"]["hold"][
      "shuffled"]["mean"] == pytest.approx(v["hold"]["shuffled"]["mean"])
  assert by["broad"]["share_hold_shuffled"]["p95"] < 0.5  # the null


def test_export_and_report_put_broad_first(planted, tmp_path):
  run, _, result = planted
  analysis.write(result, tmp_path / "analysis")
  page = (tmp_path / "analysis" / "report.html").read_text()
  body = page.split('id="validation"')[1].split("</section>")[0]
  assert body.index(">broad<") < body.index(">narrow<")
  out = export.export_directions(run, tmp_path / "export",
                                 top_per_emotion=3,
                                 analysis_dir=tmp_path / "analysis")
  _, meta = fmt.read(out)
  features = [(f, t) for f, t, k in zip(meta["feature_ids"], meta["tiers"],
                                        meta["kinds"]) if k == "feature"]
  tiers = [t for _, t in features]
  assert tiers == sorted(tiers, key=lambda t: t != "broad")  # broad first
  assert {f for f, t in features if t == "broad"} == set(range(N_BROAD))
  assert all(t is None for t, k in zip(meta["tiers"], meta["kinds"])
             if k == "class_mean")


def test_order_entries_broad_before_narrow_within_robust_and_rest():
  def entry(kind, robust, tier, name):
    return {"kind": kind, "robust": robust, "tier": tier, "id": name}
  entries = [entry("feature", False, "narrow", 1),
             entry("class_mean", False, None, "m"),
             entry("feature", False, "broad", 2),
             entry("feature", True, "narrow", 3),
             entry("consensus", True, "narrow", "c"),
             entry("feature", True, "broad", 4),
             entry("feature", False, None, 5)]
  order = export.order_entries(entries)
  assert [e["id"] for e in order] == [-1, 4, 3, 2, 1, 5, -2]
  assert [e["kind"] for e in order][:1] == ["consensus"]


def test_old_directions_files_read_without_tiers(tmp_path):
  meta = {k: [0] for k in fmt.PER_FEATURE}
  fmt.write(tmp_path / "old", np.ones((1, 4)), meta)
  assert fmt.read_meta(tmp_path / "old")["tiers"] == [None]
  fmt.write(tmp_path / "new", np.ones((1, 4)), dict(meta, tiers=["broad"]))
  assert fmt.read_meta(tmp_path / "new")["tiers"] == ["broad"]
  with pytest.raises(fmt.DirectionsError, match="unknown tier"):
    fmt.write(tmp_path / "bad", np.ones((1, 4)), dict(meta, tiers=["wide"]))
  stored = json.loads((tmp_path / "old" / fmt.META_FILE).read_text())
  assert "tiers" not in stored


def test_member_breadth_reappearing_shares():
  feats = [{"feature": f, "tier": t} for f, t in
           ((0, "broad"), (1, "broad"), (2, "narrow"), (3, "narrow"),
            (4, "narrow"))]
  stab = {0: {"n_other_seeds": 2, "reappears_in": 2},
          1: {"n_other_seeds": 2, "reappears_in": 1},
          2: {"n_other_seeds": 2, "reappears_in": 0},
          3: {"n_other_seeds": 2, "reappears_in": 0},
          4: {"n_other_seeds": 2, "reappears_in": 1}}
  out = breadth.member_breadth(feats, stab)
  assert out["broad"] == {"n": 2, "share_reappear": 1.0,
                          "share_reappear_any": 1.0}
  assert out["narrow"]["n"] == 3
  assert out["narrow"]["share_reappear"] == pytest.approx(1 / 3)
  assert out["narrow"]["share_reappear_any"] == pytest.approx(1 / 3)
  assert breadth.member_breadth(feats, None)["broad"]["share_reappear"] is None


def test_broad_support_must_be_a_fraction():
  with pytest.raises(ValueError, match=r"broad_support.*\[0, 1\]"):
    breadth.check_broad_support(5)


def _planted_consensus():
  """Three seeds, one emotion. Seed 0's broad feature 0 matches seed 1's
  narrow feature 0 (the match of a broad feature can be narrow); seeds 0, 1
  and 2 share a narrow feature 1 with a higher AUROC. Decoder rows: feature
  0 along axis 0, feature 1 along axis 1 (so matches are exact)."""
  from types import SimpleNamespace
  m, d = 2, 4
  decoders = np.zeros((3, m, d))
  decoders[:, 0, 0] = decoders[:, 1, 1] = 1.0
  arrays = {"significant": np.array([[1, 1], [1, 1], [0, 1]], bool),
            "emotion": np.zeros((3, m), int),
            "statistic": np.array([[0.7, 0.9], [0.7, 0.9], [0.5, 0.9]]),
            "broad": np.array([[1, 0], [0, 0], [0, 0]], bool),
            "typical_activation": np.ones((3, m))}

  def node(i, f, matches):
    return {"n_other_seeds": 2, "reappears_in": len(matches),
            "matches": [{"member": j, "feature": g, "cosine": 1.0}
                        for j, g in matches]}
  stab = [{0: node(0, 0, [(1, 0)]), 1: node(0, 1, [(1, 1), (2, 1)])},
          {0: node(1, 0, [(0, 0)]), 1: node(1, 1, [(0, 1), (2, 1)])},
          {1: node(2, 1, [(0, 1), (1, 1)])}]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, d))
  labels = np.arange(20) % 2
  settings = SimpleNamespace(stability_threshold=0.7, strengths=[0, 1])
  return (decoders, arrays, stab, [{"seed": s} for s in range(3)],
          [0, 1, 2], ["happy", "sad"], (x, labels),
          (np.zeros((d, 2)), np.zeros(2)), rng.normal(size=(2, d)), settings)


def test_consensus_keeps_the_narrow_match_of_a_broad_feature():
  """All robust features are clustered; the consensus is the cluster with a
  broad feature (seeds 0 and 1), not the larger narrow one, marked broad."""
  from emosae_jax.analysis import consensus
  summary, stored = consensus.robust_directions(*_planted_consensus())
  record = summary["groups"][0]["emotions"]["happy"]
  assert record["n_clusters"] == 2 and record["n_robust_broad"] == 1
  assert record["clustered"] == "broad"
  chosen = record["consensus"]
  assert sorted(map(tuple, chosen["features"])) == [(0, 0), (1, 0)]
  assert chosen["n_seeds"] == 2 and chosen["tier"] == "broad"
  assert chosen["n_broad"] == 1
  np.testing.assert_allclose(stored["directions/consensus"][0, 0],
                             [1, 0, 0, 0], atol=1e-6)


def test_consensus_without_broad_features_takes_the_most_seeds():
  from emosae_jax.analysis import consensus
  args = list(_planted_consensus())
  args[1] = dict(args[1], broad=np.zeros((3, 2), bool))
  summary, _ = consensus.robust_directions(*args)
  chosen = summary["groups"][0]["emotions"]["happy"]["consensus"]
  assert chosen["n_seeds"] == 3 and chosen["tier"] == "narrow"
  assert sorted(map(tuple, chosen["features"])) == [(0, 1), (1, 1), (2, 1)]
