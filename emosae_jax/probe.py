"""Phase 0, a first look at an embedding set: is emotion readable, and how?

- A logistic-regression probe, scored two ways: stratified k-fold over
  prompts (the seed's figure; folds share templates), and trained on some
  templates and tested on held-out ones (the honest figure). Chance levels
  and a shuffled-label probe sit beside each.
- Within- vs between-emotion cosine similarity, with a permutation test.
- A PCA scatter plot coloured by emotion.

`phase0(es, out_dir)` runs all of it and writes phase0.json plus PNGs.
numpy/scikit-learn/matplotlib only; no jax needed for a few thousand rows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from emosae_jax import data


def _probe(C: float, seed: int):
  # Standardising first makes C mean the same for T5 (768-d, large norms)
  # and small sentence encoders.
  return make_pipeline(StandardScaler(),
                       LogisticRegression(C=C, max_iter=2000,
                                          random_state=seed))


def chance_levels(y_train: np.ndarray, y_test: np.ndarray) -> dict:
  """Uniform (1/K) and majority-class (most frequent train label) chance."""
  k = len(np.unique(np.concatenate([y_train, y_test])))
  majority = np.bincount(y_train).argmax()
  return dict(uniform=1.0 / k, majority=float(np.mean(y_test == majority)))


def kfold_accuracy(x: np.ndarray, y: np.ndarray, n_folds: int = 5,
                   seed: int = 0, C: float = 1.0) -> dict:
  """Stratified k-fold probe accuracy. x: [N, d]; y: int [N] (>= 0)."""
  n_folds = int(min(n_folds, np.bincount(y)[np.unique(y)].min()))
  if n_folds < 2:
    raise data.DataError("need at least 2 examples of every emotion for "
                         "k-fold probing")
  skf = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
  accs = []
  for tr, te in skf.split(x, y):
    accs.append(float(_probe(C, seed).fit(x[tr], y[tr]).score(x[te], y[te])))
  return dict(accuracy=float(np.mean(accs)), std=float(np.std(accs)),
              folds=accs, n_folds=n_folds,
              chance=chance_levels(y, y)["majority"], chance_uniform=1.0 /
              len(np.unique(y)))


def heldout_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray,
                     test: np.ndarray, label_names: list[str] | None = None,
                     seed: int = 0, C: float = 1.0,
                     by: list[str] | None = None) -> dict:
  """Trains on rows `train`, scores on rows `test` (e.g. unseen templates).

  Rows labelled -1 (neutral, mixed, negated) are left out of both. Also
  trains on shuffled training labels: its test accuracy is an empirical
  chance level that accounts for class imbalance and overfit. Balanced
  accuracy (mean per-class recall) has chance 1/K whatever the imbalance.
  `by` (a tag per row, e.g. caption style) adds balanced accuracy per tag.
  """
  train = np.asarray(train)[y[train] >= 0]
  test = np.asarray(test)[y[test] >= 0]
  probe = _probe(C, seed).fit(x[train], y[train])
  pred = probe.predict(x[test])
  rng = np.random.default_rng(seed)
  shuffled = _probe(C, seed).fit(x[train], rng.permutation(y[train]))
  shuffled_pred = shuffled.predict(x[test])
  k = int(y.max()) + 1
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (y[test], pred), 1)
  per_class = {}
  for c in np.unique(y[test]):
    name = label_names[c] if label_names else str(c)
    per_class[name] = float(np.mean(pred[y[test] == c] == c))
  chance = chance_levels(y[train], y[test])
  return dict(accuracy=float(np.mean(pred == y[test])),
              balanced_accuracy=float(balanced_accuracy_score(y[test], pred)),
              chance=chance["majority"], chance_uniform=chance["uniform"],
              shuffled_label_accuracy=float(np.mean(shuffled_pred
                                                    == y[test])),
              shuffled_label_balanced_accuracy=float(
                  balanced_accuracy_score(y[test], shuffled_pred)),
              n_train=int(len(train)), n_test=int(len(test)), C=C,
              per_emotion=per_class, confusion=confusion.tolist(),
              by=_balanced_by(y[test], pred, by, test) if by else None)


def _balanced_by(y: np.ndarray, pred: np.ndarray, tags: list[str],
                 rows: np.ndarray) -> dict:
  tags = np.asarray(tags, dtype=object)[rows].astype(str)
  return {t: dict(balanced_accuracy=float(balanced_accuracy_score(
      y[tags == t], pred[tags == t])), n=int(np.sum(tags == t)))
          for t in sorted(set(tags))}


def choose_C(x: np.ndarray, y: np.ndarray, train: np.ndarray,
             groups: list[str], Cs: tuple[float, ...] = (0.01, 0.1, 1.0),
             seed: int = 0) -> dict:
  """The C with the best template-grouped 3-fold balanced accuracy on the
  training rows alone (the test rows never choose it)."""
  train = np.asarray(train)[y[train] >= 0]
  g = np.asarray(groups, dtype=object)[train].astype(str)
  if len(np.unique(g)) < 3:
    return dict(C=1.0, scores={}, how="default (fewer than 3 templates)")
  scores = {}
  for C in Cs:
    folds = []
    for a, b in GroupKFold(3).split(x[train], y[train], g):
      p = _probe(C, seed).fit(x[train[a]], y[train[a]]).predict(x[train[b]])
      folds.append(balanced_accuracy_score(y[train[b]], p))
    scores[str(C)] = float(np.mean(folds))
  best = max(Cs, key=lambda C: scores[str(C)])
  return dict(C=best, scores=scores, how="template-grouped 3-fold CV")


# --------------------------------------------------------------------------
# Cosine similarity


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _within_between(u: np.ndarray, y: np.ndarray, k: int,
                    total: float) -> tuple[float, float]:
  """Mean cosine over distinct same-label pairs and different-label pairs.

  With S_c the sum of the unit vectors of class c, the same-class pair sum
  is sum_c (|S_c|^2 - n_c): O(N k d) instead of an N x N Gram matrix.
  """
  onehot = np.eye(k, dtype=u.dtype)[y]  # [N, k]
  sums = onehot.T @ u  # [k, d]
  n_c = onehot.sum(0)
  within_sum = float(np.sum(sums * sums) - n_c.sum())
  within_pairs = float(np.sum(n_c * (n_c - 1)))
  n = len(y)
  between_pairs = n * (n - 1) - within_pairs
  return (within_sum / within_pairs,
          (total - within_sum) / between_pairs)


def cosine_similarity_test(x: np.ndarray, y: np.ndarray,
                           label_names: list[str] | None = None,
                           n_permutations: int = 1000, seed: int = 0,
                           center: bool = False) -> dict:
  """Within- vs between-emotion mean cosine similarity, permutation p-value.

  x: [N, d]; y: int [N] >= 0. The null shuffles labels; p = (1 + #{null gap
  >= observed gap}) / (1 + n_permutations). `center` subtracts the mean
  embedding first (raw T5 vectors share a large common direction that
  pushes every cosine up). Also returns the emotion x emotion matrix of mean
  cosines (diagonal: distinct pairs within the emotion).
  """
  x = np.asarray(x, np.float64)
  u = _unit(x - x.mean(0) if center else x)
  classes, y = np.unique(y, return_inverse=True)
  k = len(classes)
  s = u.sum(0)
  total = float(s @ s - len(u))  # sum over all ordered distinct pairs
  within, between = _within_between(u, y, k, total)
  rng = np.random.default_rng(seed)
  null = np.array([np.subtract(*_within_between(u, rng.permutation(y), k,
                                                total))
                   for _ in range(n_permutations)])
  gap = within - between
  onehot = np.eye(k)[y]
  sums, n_c = onehot.T @ u, onehot.sum(0)
  matrix = (sums @ sums.T) / np.outer(n_c, n_c)
  np.fill_diagonal(matrix, (np.sum(sums * sums, 1) - n_c)
                   / np.maximum(n_c * (n_c - 1), 1))
  names = ([label_names[c] for c in classes] if label_names
           else [str(c) for c in classes])
  return dict(within=within, between=between, gap=gap,
              null_gap_mean=float(null.mean()) if len(null) else None,
              null_gap_std=float(null.std()) if len(null) else None,
              p_value=float((1 + np.sum(null >= gap)) / (1 + len(null))),
              n_permutations=n_permutations, centered=center,
              emotions=names, matrix=matrix.round(4).tolist())


# --------------------------------------------------------------------------
# Plots


def _save_figure(fig, path: Path) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
  data.atomic_write_bytes(path, buf.getvalue())


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(coordinates [N, 2], explained variance ratio [2]) of centred x."""
  xc = np.asarray(x, np.float64) - np.mean(x, 0)
  _, s, vt = np.linalg.svd(xc, full_matrices=False)
  var = s ** 2
  return xc @ vt[:2].T, var[:2] / var.sum()


def centroid_axes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Top-2 principal axes [2, d] of the emotion centroids (rows y >= 0).

  PCA of all embeddings is dominated by template and genre; projecting on
  the axes along which the emotion means differ shows the emotion geometry.
  """
  classes = np.unique(y[y >= 0])
  means = np.stack([x[y == c].mean(0) for c in classes]).astype(np.float64)
  _, _, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
  return vt[:2]


def plot_pca(x: np.ndarray, y: np.ndarray, label_names: list[str],
             path: str | Path, title: str = "") -> dict:
  """Two scatter panels of x [N, d] coloured by label (-1 grey), as a PNG:
  PCA of all rows, and the projection on the emotion-centroid axes."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  xy, ratio = pca_2d(x)
  xc = np.asarray(x, np.float64) - np.mean(x, 0)
  panels = [(xy, f"PC1 ({ratio[0]:.1%} of variance)",
             f"PC2 ({ratio[1]:.1%} of variance)", "all variance"),
            (xc @ centroid_axes(x, y).T, "centroid axis 1", "centroid axis 2",
             "emotion-centroid axes")]
  fig, axes = plt.subplots(1, 2, figsize=(13, 6))
  cmap = plt.get_cmap("tab10" if len(label_names) <= 10 else "tab20")
  for ax, (pts_all, xlabel, ylabel, sub) in zip(axes, panels):
    if np.any(y < 0):
      ax.scatter(*pts_all[y < 0].T, s=5, c="lightgrey", label="unlabelled")
    for c, name in enumerate(label_names):
      pts = pts_all[y == c]
      ax.scatter(*pts.T, s=5, alpha=0.5, color=cmap(c % cmap.N), label=name)
      if len(pts):
        ax.annotate(name, pts.mean(0), fontsize=9, weight="bold",
                    ha="center", color="black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(sub)
  axes[0].legend(markerscale=3, fontsize=8, loc="best")
  fig.suptitle(title or "embeddings by emotion")
  _save_figure(fig, Path(path))
  plt.close(fig)
  return dict(explained_variance_ratio=ratio.tolist())


def plot_similarity(sim: dict, path: str | Path, title: str = "") -> None:
  """Heatmap of the emotion x emotion mean-cosine matrix; writes a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  m, names = np.asarray(sim["matrix"]), sim["emotions"]
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  im = ax.imshow(m, cmap="viridis")
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
              color="white")
  fig.colorbar(im, ax=ax, label="mean cosine similarity")
  ax.set_title(title or f"within {sim['within']:.3f} vs between "
               f"{sim['between']:.3f} (p={sim['p_value']:.3g})")
  _save_figure(fig, Path(path))
  plt.close(fig)


# --------------------------------------------------------------------------
# Phase 0


def heldout_split(es: data.EmbeddingSet, seed: int = 0,
                  fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, str]:
  """(train rows, test rows, how) for the held-out-template probe.

  Uses the sidecar's `heldout_groups` (templates make_prompts held out);
  else holds out whole groups with data.split_indices; without group ids
  (e.g. captions) falls back to a random split and says so in `how`.
  """
  held = es.meta.get("heldout_groups")
  groups = np.asarray(es.groups)
  if held:
    is_test = np.isin(groups, held)
    if is_test.any() and not is_test.all():
      return np.flatnonzero(~is_test), np.flatnonzero(is_test), "templates"
  has_groups = len(set(es.groups) - {""}) >= 2
  train, test = data.split_indices(len(es), list(es.groups) if has_groups
                                   else None, fraction, seed)
  return train, test, "groups" if has_groups else "random (no template ids)"


def heldout_words_split(words: list[list[str]], labels: np.ndarray,
                        fraction: float = 0.3, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(train rows, test rows, held-out words) holding out emotion *words*.

  Held-out templates still share their emotion words with training, so a
  probe may just recognise the words. Here `fraction` of each emotion's
  words is held out: test rows use only held-out words, train rows none
  (rows mixing both are left out). words: per-row emotion words.
  """
  rng = np.random.default_rng(seed)
  held: set[str] = set()
  for c in np.unique(labels[labels >= 0]):
    vocab = sorted({w for i in np.flatnonzero(labels == c) for w in words[i]})
    k = int(round(fraction * len(vocab)))
    if 0 < k < len(vocab):
      held.update(rng.permutation(vocab)[:k].tolist())
  has = np.array([bool(w) for w in words])
  n_held = np.array([sum(x in held for x in w) for w in words])
  n_all = np.array([len(w) for w in words])
  test = np.flatnonzero(has & (n_held == n_all) & (labels >= 0))
  train = np.flatnonzero(has & (n_held == 0) & (labels >= 0))
  return train, test, sorted(held)


def style_of(group: str) -> str:
  """A corpus template id's caption style: 'brief.03' -> 'brief'."""
  return group.split(".", 1)[0] if "." in group else ""


def heldout_style_split(es: data.EmbeddingSet
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(train rows, test rows, held-out styles) of the caption-style split.

  Train: rows of templates make_prompts kept for training. Test: rows of
  held-out templates whose style no training row has (the held-out caption
  style: its templates, and its emotion words, never appear in training).
  Empty test when the set has no held-out style (e.g. captions).
  """
  held = set(es.meta.get("heldout_groups") or ())
  styles = np.array([style_of(g) for g in es.groups], dtype=object)
  is_test = np.isin(np.asarray(es.groups), sorted(held))
  train_styles = set(styles[~is_test])
  test_only = sorted(set(styles[is_test]) - train_styles - {""})
  test = np.flatnonzero(is_test & np.isin(styles, test_only))
  if not held or not len(test):
    return np.arange(0), np.arange(0), []
  return np.flatnonzero(~is_test), test, test_only


def heldout_style_probe(es: data.EmbeddingSet, seed: int) -> dict | None:
  """The probe trained on the training split, scored on the whole held-out
  split (templates + words + style) and on the held-out style alone; C is
  chosen on the training split. None when the set has no held-out style."""
  train, style_test, styles = heldout_style_split(es)
  y = es.labels
  if not len(style_test) or len(np.unique(y[style_test][y[style_test] >= 0])
                               ) < 2:
    return None
  x, names = es.embeddings, es.label_names
  held = np.isin(np.asarray(es.groups), es.meta["heldout_groups"])
  chosen = choose_C(x, y, train, es.groups, seed=seed)
  by = [style_of(g) for g in es.groups]
  whole = heldout_accuracy(x, y, train, np.flatnonzero(held), names, seed,
                           chosen["C"], by=by)
  style = heldout_accuracy(x, y, train, style_test, names, seed, chosen["C"])
  return dict(heldout_styles=styles, C_choice=chosen, heldout_split=whole,
              heldout_style_only=style)


def _val_chosen(splits: dict, seed: int) -> dict:
  """split_probe.val_chosen_probe on the splits, or {"skipped": why} when a
  split cannot carry a probe (e.g. a tiny val split with one emotion)."""
  from emosae_jax import split_probe  # it imports this module
  try:
    return split_probe.val_chosen_probe(splits["train"], splits["val"],
                                        splits["heldout"], seed)
  except data.DataError as e:
    return {"skipped": str(e)}


def phase0(es: data.EmbeddingSet, out_dir: str | Path, n_folds: int = 5,
           n_permutations: int = 1000, seed: int = 0,
           progress: bool = True,
           splits: dict[str, data.EmbeddingSet] | None = None) -> dict:
  """Probe, similarity test and plots for the labelled rows of `es`.

  splits: the corpus's "train", "val" and "heldout" (test) sets, when it
  has a val split; adds `probe_val_chosen` (split_probe.val_chosen_probe:
  fit on train, chosen on val, scored on test), else that key is None.
  Writes out_dir/phase0.json, pca.png and similarity.png (atomically) and
  returns the phase0.json contents.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  labelled = es.subset(np.flatnonzero(es.labels >= 0))
  if len(np.unique(labelled.labels)) < 2:
    raise data.DataError("phase 0 needs at least two emotions with labels")
  x, y, names = labelled.embeddings, labelled.labels, labelled.label_names
  bar = tqdm(total=6, desc="phase0", unit="step", disable=not progress)

  def step(what: str) -> None:
    bar.set_postfix_str(what)
    bar.update(1)
  train, test, how = heldout_split(labelled, seed)
  kfold = kfold_accuracy(x, y, n_folds, seed)
  step("k-fold probe")
  heldout = heldout_accuracy(x, y, train, test, names, seed)
  heldout["split"] = how
  heldout["test_groups"] = sorted(set(labelled.groups[i] for i in test))
  by_words = None
  words = es.meta.get("emotion_words")
  if words and len(words) == len(es):
    wtrain, wtest, held_words = heldout_words_split(words, es.labels,
                                                    seed=seed)
    if len(wtest) and len(np.unique(es.labels[wtest])) >= 2:
      # Indices into the full set, same label space as the labelled subset.
      by_words = heldout_accuracy(es.embeddings, es.labels, wtrain, wtest,
                                  names, seed)
      by_words["heldout_words"] = held_words
  step("held-out templates and words")
  by_style = heldout_style_probe(es, seed)
  val_chosen = _val_chosen(splits, seed) if splits else None
  step("held-out caption style")
  cosine = cosine_similarity_test(x, y, names, n_permutations, seed)
  cosine_c = cosine_similarity_test(x, y, names, n_permutations, seed,
                                    center=True)
  step("cosine permutation tests")
  plot_similarity(cosine, out_dir / "similarity.png")
  pca = plot_pca(es.embeddings, es.labels, es.label_names,
                 out_dir / "pca.png",
                 f"PCA of {es.meta.get('encoder', 'embeddings')} by emotion")
  step("plots")
  counts = {n: int(np.sum(y == c)) for c, n in enumerate(names)}
  result: dict[str, Any] = dict(
      n=len(es), n_labelled=len(labelled), d=es.dim, emotions=names,
      counts=counts, encoder=es.meta.get("encoder"),
      content_hash=es.meta.get("content_hash"),
      probe_kfold=kfold, probe_heldout=heldout,
      probe_heldout_words=by_words, probe_heldout_style=by_style,
      probe_val_chosen=val_chosen,
      cosine=cosine, cosine_centered=cosine_c, pca=pca,
      plots=["pca.png", "similarity.png"], seed=seed)
  data.atomic_write_json(out_dir / "phase0.json", result)
  step("written")
  bar.close()
  return result
