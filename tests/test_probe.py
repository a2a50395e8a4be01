"""Phase-0 probe, similarity permutation test, plots, scripts/phase0.py."""

import json

import numpy as np
import pytest

from conftest import last_line, run_script
from emosae_jax import data, probe

K, PER_CLASS_GROUP, N_GROUPS, D = 4, 6, 8, 16


@pytest.fixture(scope="session")
def synthetic():
  """Separable blobs: label = class, group = template with its own offset,
  so a template-held-out test needs the class signal, not the template."""
  rng = np.random.default_rng(0)
  class_means = 3.0 * rng.normal(size=(K, D))
  group_offsets = 2.0 * rng.normal(size=(N_GROUPS, D))
  rows, labels, groups = [], [], []
  for g in range(N_GROUPS):
    for c in range(K):
      rows.append(class_means[c] + group_offsets[g]
                  + rng.normal(size=(PER_CLASS_GROUP, D)))
      labels += [c] * PER_CLASS_GROUP
      groups += [f"t{g}"] * PER_CLASS_GROUP
  x = np.concatenate(rows).astype(np.float32)
  return data.make_embedding_set(
      x, labels, ["happy", "sad", "calm", "energetic"],
      [f"prompt {i}" for i in range(len(x))], groups,
      heldout_groups=["t1", "t6"], encoder="synthetic")


def _shuffled(es, seed=1):
  rng = np.random.default_rng(seed)
  return data.make_embedding_set(es.embeddings, rng.permutation(es.labels),
                                 es.label_names, es.texts, es.groups,
                                 **{k: v for k, v in es.meta.items()
                                    if k != "content_hash"})


def _split(es):
  return probe.heldout_split(es)[:2]


def test_probe_beats_chance_on_separable_data(synthetic):
  x, y = synthetic.embeddings, synthetic.labels
  kfold = probe.kfold_accuracy(x, y, n_folds=5)
  assert kfold["accuracy"] > 0.9 and kfold["chance"] == pytest.approx(0.25)
  train, test = _split(synthetic)
  held = probe.heldout_accuracy(x, y, train, test, synthetic.label_names)
  assert held["accuracy"] > 0.9
  assert held["shuffled_label_accuracy"] < 0.5
  assert held["n_test"] == 2 * K * PER_CLASS_GROUP
  assert np.sum(held["confusion"]) == held["n_test"]


def test_probe_on_shuffled_labels_stays_at_chance(synthetic):
  es = _shuffled(synthetic)
  x, y = es.embeddings, es.labels
  assert probe.kfold_accuracy(x, y)["accuracy"] < 0.25 + 0.15
  train, test = _split(es)
  held = probe.heldout_accuracy(x, y, train, test)
  assert held["accuracy"] < held["chance_uniform"] + 0.15


def test_heldout_split_uses_sidecar_templates_then_groups_then_random(
    synthetic):
  train, test, how = probe.heldout_split(synthetic)
  assert how == "templates"
  assert {synthetic.groups[i] for i in test} == {"t1", "t6"}
  assert not {synthetic.groups[i] for i in train} & {"t1", "t6"}
  no_meta = data.make_embedding_set(synthetic.embeddings, synthetic.labels,
                                    synthetic.label_names, groups=synthetic.groups)
  train, test, how = probe.heldout_split(no_meta)
  assert how == "groups"
  assert not {no_meta.groups[i] for i in train} & {no_meta.groups[i]
                                                   for i in test}
  no_groups = data.make_embedding_set(synthetic.embeddings, synthetic.labels,
                                      synthetic.label_names)
  assert probe.heldout_split(no_groups)[2].startswith("random")


def test_within_between_cosine_matches_brute_force(synthetic):
  x, y = synthetic.embeddings[::3], synthetic.labels[::3]
  res = probe.cosine_similarity_test(x, y, n_permutations=0)
  u = x / np.linalg.norm(x, axis=1, keepdims=True)
  gram = u @ u.T
  same = y[:, None] == y[None, :]
  off = ~np.eye(len(y), dtype=bool)
  assert res["within"] == pytest.approx(gram[same & off].mean(), abs=1e-6)
  assert res["between"] == pytest.approx(gram[~same].mean(), abs=1e-6)
  m = np.asarray(res["matrix"])
  assert m[0, 1] == pytest.approx(gram[np.ix_(y == 0, y == 1)].mean(),
                                  abs=1e-4)


def test_permutation_test_separates_real_from_shuffled(synthetic):
  real = probe.cosine_similarity_test(synthetic.embeddings, synthetic.labels,
                                      n_permutations=300, seed=0)
  assert real["gap"] > 0 and real["p_value"] < 0.01
  shuffled = _shuffled(synthetic)
  null = probe.cosine_similarity_test(shuffled.embeddings, shuffled.labels,
                                      n_permutations=300, seed=0)
  assert null["p_value"] > 0.05


def test_heldout_words_split_keeps_words_apart():
  words = [["sad"], ["sorrow", "sad"], ["gloomy"], ["grief"], ["happy"],
           ["joy"], ["cheerful", "joy"], ["merry"], []] * 3
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1] * 3)
  train, test, held = probe.heldout_words_split(words, labels, 0.5, seed=0)
  assert len(held) == 4 and len(test) and len(train)
  assert all(set(words[i]) <= set(held) for i in test)
  assert not any(set(words[i]) & set(held) for i in train)
  assert not set(train) & set(test) and np.all(labels[train] >= 0)


def test_heldout_accuracy_skips_unlabelled_rows_balanced_accuracy(synthetic):
  x, y = synthetic.embeddings, synthetic.labels.copy()
  y[::7] = -1  # mixed/negated prompts: no class to score
  train, test = _split(synthetic)
  res = probe.heldout_accuracy(x, y, train, test, synthetic.label_names,
                               by=[f"s{i % 2}" for i in range(len(y))])
  assert res["n_test"] == int(np.sum(y[test] >= 0))
  assert res["n_train"] == int(np.sum(y[train] >= 0))
  # Balanced accuracy = mean recall over the emotions present.
  assert res["balanced_accuracy"] == pytest.approx(
      np.mean(list(res["per_emotion"].values())))
  assert set(res["by"]) == {"s0", "s1"}
  assert sum(v["n"] for v in res["by"].values()) == res["n_test"]
  assert res["shuffled_label_balanced_accuracy"] < 0.25 + 0.2


def _corpus_set(signal: float, seed: int = 0):
  """An embedding set laid out as extract.py writes one for a small real
  corpus (templates, held-out templates, emotion words, label -1 for mixed
  and negated), with emotion planted at strength `signal` over noise."""
  from emosae_jax import prompts
  recs = prompts.generate_prompts(180, seed=seed)
  names, labels, groups, heldout = prompts.label_arrays(recs)
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(len(names), 24))
  x = rng.normal(size=(len(recs), 24))
  y = np.asarray(labels)
  x[y >= 0] += signal * means[y[y >= 0]]
  return data.make_embedding_set(
      x, labels, names, [r["text"] for r in recs], groups,
      heldout_groups=heldout,
      emotion_words=[prompts.emotion_words(r) for r in recs])


def test_phase0_scores_the_heldout_caption_style_split(tmp_path):
  es = _corpus_set(signal=2.0)
  res = probe.phase0(es, tmp_path, n_folds=3, n_permutations=10,
                     progress=False)
  st = res["probe_heldout_style"]
  assert st["heldout_styles"] == ["brief"]
  only, whole = st["heldout_style_only"], st["heldout_split"]
  brief = [i for i, g in enumerate(es.groups) if g.startswith("brief.")]
  assert only["n_test"] == int(np.sum(es.labels[brief] >= 0))
  assert whole["n_test"] > only["n_test"]
  assert whole["by"]["brief"]["n"] == only["n_test"]
  assert only["balanced_accuracy"] > 0.9  # the planted signal
  assert only["shuffled_label_balanced_accuracy"] < 1 / 9 + 0.15
  assert st["C_choice"]["C"] in (0.01, 0.1, 1.0)
  on_disk = json.loads((tmp_path / "phase0.json").read_text())
  assert on_disk["probe_heldout_style"] == st
  # No emotion in the embeddings: the same code path reports chance.
  null = probe.heldout_style_probe(_corpus_set(signal=0.0), seed=0)
  assert null["heldout_style_only"]["balanced_accuracy"] < 1 / 9 + 0.15


def test_heldout_style_split_needs_a_style_absent_from_training(synthetic):
  # Template ids without a style, or a style also in training: no split.
  assert not len(probe.heldout_style_split(synthetic)[1])
  groups = [("a." if g in ("t1", "t6") else "b.") + g
            for g in synthetic.groups]
  es = data.make_embedding_set(synthetic.embeddings, synthetic.labels,
                               synthetic.label_names, groups=groups,
                               heldout_groups=["a.t1", "a.t6"])
  train, test, styles = probe.heldout_style_split(es)
  assert styles == ["a"] and len(test) == 2 * K * PER_CLASS_GROUP
  es.meta["heldout_groups"] = ["a.t1"]  # a.t6 trains: style a is seen
  assert not len(probe.heldout_style_split(es)[1])


def test_phase0_writes_json_and_plots(synthetic, tmp_path):
  res = probe.phase0(synthetic, tmp_path, n_permutations=100)
  on_disk = json.loads((tmp_path / "phase0.json").read_text())
  assert on_disk["probe_heldout"]["accuracy"] == res["probe_heldout"][
      "accuracy"]
  assert on_disk["probe_heldout"]["split"] == "templates"
  assert on_disk["probe_heldout_words"] is None  # no emotion_words in meta
  assert on_disk["probe_heldout_style"] is None  # no caption styles
  for key in ("probe_kfold", "probe_heldout", "cosine", "cosine_centered",
              "pca", "counts"):
    assert key in on_disk
  for png in ("pca.png", "similarity.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_phase0_script(synthetic, tmp_path):
  # Two words per class: a probe must carry the class from one to the other.
  words = [[f"w{c}{i % 2}"] for i, c in enumerate(synthetic.labels)]
  es = data.make_embedding_set(synthetic.embeddings, synthetic.labels,
                               synthetic.label_names, synthetic.texts,
                               synthetic.groups, emotion_words=words,
                               **{k: v for k, v in synthetic.meta.items()
                                  if k != "content_hash"})
  data.save_embedding_set(es, tmp_path / "emb")
  proc = run_script("phase0.py", f"--data={tmp_path / 'emb'}",
                    f"--out={tmp_path / 'out'}", "--permutations=50")
  assert proc.returncode == 0, proc.stderr
  assert "held-out templates probe accuracy" in proc.stdout
  assert "held-out emotion words" in proc.stdout
  assert (tmp_path / "out" / "phase0.json").exists()
  proc = run_script("phase0.py", f"--data={tmp_path / 'nothing'}",
                    f"--out={tmp_path / 'out2'}")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert last_line(proc.stderr).startswith("error: no embedding set")


def test_phase0_adds_the_val_chosen_probe_from_the_corpus_splits(tmp_path):
  """A corpus with a val split, split as the pipeline splits it: the probe
  fits on train, val chooses, test reports; planted emotion is found."""
  from emosae_jax import prompts, splits
  recs = prompts.generate_prompts(180, seed=0, val_fraction=0.2)
  names, labels, groups, heldout = prompts.label_arrays(recs)
  rng = np.random.default_rng(0)
  y = np.asarray(labels)
  x = rng.normal(size=(len(recs), 24))
  x[y >= 0] += 2.0 * rng.normal(size=(len(names), 24))[y[y >= 0]]
  es = data.make_embedding_set(x, labels, names, [r["text"] for r in recs],
                               groups, heldout_groups=heldout)
  sets = splits.split_by_prompts(es, recs)
  res = probe.phase0(es, tmp_path, n_folds=3, n_permutations=10,
                     progress=False, splits=sets)
  v = res["probe_val_chosen"]
  assert v["test"]["n_test"] == int(np.sum(sets["heldout"].labels >= 0))
  assert v["val"]["n_test"] == int(np.sum(sets["val"].labels >= 0))
  assert v["test"]["n_train"] == int(np.sum(sets["train"].labels >= 0))
  assert v["test"]["balanced_accuracy"] > 0.9
  # Shuffled labels send whole emotion clusters to random labels: a lottery
  # over 9 clusters, so a loose bound.
  assert v["test"]["shuffled_label_balanced_accuracy"] < 0.5
  assert v["val"]["balanced_accuracy"] == max(v["val_grid"].values())
  on_disk = json.loads((tmp_path / "phase0.json").read_text())
  assert on_disk["probe_val_chosen"]["C"] == v["C"]
