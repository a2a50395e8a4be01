"""The val-chosen probe (emosae_jax.split_probe): train fits, val chooses,
test reports; content directions are the training templates' mean shifts."""

import numpy as np
import pytest

from emosae_jax import data, split_probe

K, D, PER = 3, 12, 8  # emotions, dimensions, rows per emotion and template


def _set(offsets, rng, v, means, prefix, labels_seed=None):
  """Every template holds every emotion equally (minimal pairs) and sits at
  offset * v, v the content axis; emotion c at means[c]."""
  rows, labels, groups = [], [], []
  for t, off in enumerate(offsets):
    for c in range(K):
      rows.append(means[c] + off * v + 0.3 * rng.normal(size=(PER, D)))
      labels += [c] * PER
      groups += [f"{prefix}.{t:02d}"] * PER
  y = np.array(labels)
  if labels_seed is not None:
    y = np.random.default_rng(labels_seed).permutation(y)
  return data.make_embedding_set(np.concatenate(rows), y,
                                 ["happy", "sad", "calm"], groups=groups)


def _planted(shift: float, labels_seed=None):
  """Train templates spread along the content axis v; val and test are a
  new style shifted far along v. The emotions differ along e_0..e_2 and
  also along v, so a probe fit on train leans on v and a shift
  along v swamps the emotion; with v projected out only e_0..e_2 remain."""
  rng = np.random.default_rng(0)
  v = np.zeros(D)
  v[-1] = 1.0
  means = np.eye(K, D) + np.arange(K)[:, None] * v
  train = _set(rng.normal(0, 1.0, 10), rng, v, means, "caption",
               labels_seed)
  val = _set(shift + rng.normal(0, 1.0, 3), rng, v, means, "prompt")
  test = _set(shift + rng.normal(0, 1.0, 3), rng, v, means, "brief")
  return train, val, test, v


def test_content_directions_recover_the_planted_content_axis():
  train, _, _, v = _planted(shift=0.0)
  dirs = split_probe.content_directions(train.embeddings, train.groups, 3)
  assert dirs.shape == (3, D)
  np.testing.assert_allclose(dirs @ dirs.T, np.eye(3), atol=1e-8)
  assert abs(dirs[0] @ v) > 0.98  # the template means vary along v only
  left = split_probe.remove_directions(train.embeddings, dirs)
  np.testing.assert_allclose(left @ dirs.T, 0, atol=1e-8)
  # Fewer groups than asked: at most groups - 1 directions exist.
  assert split_probe.content_directions(
      train.embeddings[:48], train.groups[:48], 5).shape == (1, D)


def test_val_chooses_content_removal_when_content_swamps_the_emotion():
  train, val, test, _ = _planted(shift=8.0)
  r = split_probe.val_chosen_probe(train, val, test, Cs=(1.0,),
                                   content_ks=(0, 1))
  assert r["val_grid"]["C=1.0,k=0"] < 0.6  # the plain probe is swamped
  assert r["content_directions"] == 1 and r["C"] == 1.0
  assert r["val"]["balanced_accuracy"] > 0.9
  assert r["test"]["balanced_accuracy"] > 0.85
  assert r["test"]["shuffled_label_balanced_accuracy"] < 1 / K + 0.25
  assert r["test"]["n_train"] == len(train) and r["test"]["n_test"] == len(
      test)
  assert set(r["test"]["by"]) == {"brief"}


def test_val_chosen_probe_keeps_chance_without_signal_and_checks_inputs():
  train, val, test, _ = _planted(shift=0.0, labels_seed=1)
  r = split_probe.val_chosen_probe(train, val, test, Cs=(1.0,),
                                   content_ks=(0, 1))
  assert r["test"]["balanced_accuracy"] < 1 / K + 0.25
  bad = data.make_embedding_set(test.embeddings[:, :4], test.labels,
                                test.label_names, groups=test.groups)
  with pytest.raises(data.DataError, match="4-d embeddings"):
    split_probe.val_chosen_probe(train, val, bad)
