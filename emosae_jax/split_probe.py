"""The val-chosen probe: trained on the train split, its settings chosen on
the val split, reported once on the held-out test split.

`probe.heldout_style_probe` (the older figure, kept beside this one) trains
on every row outside the held-out templates, val included, and picks C by
template-grouped CV on those rows. Here each split does one job: the probe
fits on train rows only; val alone chooses C and how many content
directions to project out first; test only reports, beside a probe fit on
shuffled training labels with the same settings.

Content directions: the principal directions of the training templates'
mean embeddings. Every template carries every emotion in equal measure
(minimal pairs), so what its mean holds is template and carrier content
(genre, instruments, sentence shape), not emotion. Projecting them out
keeps a probe from leaning on content that a new caption style shifts
wholesale. Measured on the offline demo (MiniLM) it did not help on val
(`emosae_jax/prompt_data/README.md`); val decides, with 0 on the grid.
"""

from __future__ import annotations

import numpy as np

from emosae_jax import data
from emosae_jax.probe import heldout_accuracy, style_of

# A small grid: val (297 prompts offline, standard error of a balanced
# accuracy about 0.03) cannot tell finer settings apart, and every extra
# candidate makes the val figure more optimistic.
DEFAULT_CS = (0.003, 0.01, 0.03, 0.1, 0.3)
DEFAULT_CONTENT_KS = (0, 16)


def content_directions(x: np.ndarray, groups, k: int) -> np.ndarray:
  """Float[k', d]: the top-k principal directions (orthonormal rows) of
  the group means of x, k' = min(k, groups - 1). groups: a tag per row."""
  tags, inv = np.unique(np.asarray(groups, dtype=object).astype(str),
                        return_inverse=True)
  if k <= 0 or len(tags) < 2:
    return np.zeros((0, x.shape[1]))
  x = np.asarray(x, np.float64)
  means = np.zeros((len(tags), x.shape[1]))
  np.add.at(means, inv, x)
  means /= np.bincount(inv)[:, None]
  _, _, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
  return vt[:min(k, len(tags) - 1)]


def remove_directions(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
  """x with its components along the (orthonormal) rows removed."""
  x = np.asarray(x, np.float64)
  return x - (x @ directions.T) @ directions


def _stack(train: data.EmbeddingSet, other: data.EmbeddingSet):
  """(x, y, train rows, other rows, tags) of train then other, labelled
  rows only (unlabelled ones are left out of every probe)."""
  a = np.flatnonzero(train.labels >= 0)
  b = np.flatnonzero(other.labels >= 0)
  x = np.concatenate([train.embeddings[a], other.embeddings[b]])
  y = np.concatenate([train.labels[a], other.labels[b]])
  groups = [train.groups[i] for i in a] + [other.groups[i] for i in b]
  return x, y, np.arange(len(a)), len(a) + np.arange(len(b)), groups


def _score(train, other, C: float, k: int, seed: int) -> dict:
  x, y, tr, te, groups = _stack(train, other)
  x = remove_directions(x, content_directions(
      x[tr], [groups[i] for i in tr], k))
  result = heldout_accuracy(x, y, tr, te, train.label_names, seed, C,
                            by=[style_of(g) for g in groups])
  return result | {"content_directions": k}


def _check(train, val, test) -> None:
  names = train.label_names
  for name, es in (("val", val), ("test", test)):
    if es.label_names != names:
      raise data.DataError(f"the {name} split's emotions {es.label_names} "
                           f"differ from the train split's {names}")
    if es.dim != train.dim:
      raise data.DataError(f"the {name} split has {es.dim}-d embeddings, "
                           f"the train split {train.dim}-d")
    if len(np.unique(es.labels[es.labels >= 0])) < 2:
      raise data.DataError(f"the {name} split needs at least two labelled "
                           "emotions for a probe")


def val_chosen_probe(train: data.EmbeddingSet, val: data.EmbeddingSet,
                     test: data.EmbeddingSet, seed: int = 0,
                     Cs=DEFAULT_CS, content_ks=DEFAULT_CONTENT_KS) -> dict:
  """Logistic probe fit on `train`; (C, content directions) with the best
  balanced accuracy on `val`; then scored once on `test`. Each of "val" and
  "test" is `probe.heldout_accuracy`'s record (balanced accuracy, the
  shuffled-label probe's, per emotion, confusion, by caption style)."""
  _check(train, val, test)
  grid = {(C, k): _score(train, val, C, k, seed)
          for k in content_ks for C in Cs}
  # Ties go to the smallest k, then the smallest C (the simpler probe).
  C, k = max(grid, key=lambda s: (grid[s]["balanced_accuracy"], -s[1],
                                  -s[0]))
  return dict(
      how="fit on train, C and content directions chosen on val, "
          "scored once on test",
      C=C, content_directions=k,
      val_grid={f"C={c},k={n}": r["balanced_accuracy"]
                for (c, n), r in grid.items()},
      val=grid[(C, k)], test=_score(train, test, C, k, seed))
