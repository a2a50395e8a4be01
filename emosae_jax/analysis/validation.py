"""External validation: do the corpus's significant features hold on another
labelled set (imported captions, a held-out split)?

A feature *holds* (DESIGN.md) when it passes the same test on the other set
(the same permutation test, BH at the same level, the same minimum support)
for the same emotion. The other set goes through the same kernels as the
corpus, embedded in the training normaliser's units; its labels are mapped
to the training set's by name (case and spaces ignored). Emotions present on
one side only are left out, as are emotions with fewer than min_support
examples on the other set; the summary names them and why.

The null: under each shuffle of the other set's labels, the same count of
corpus-significant features that come out significant for their corpus
emotion (computed inside the same device program as the other nulls).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from emosae_jax import data, runs
from emosae_jax.analysis.device import compute, group_ids
from emosae_jax.analysis.loading import Members
from emosae_jax.analysis.settings import Settings

PREFIX = "validation{}/"  # array keys of validation set j
# Corpus-AUROC band edges for `holding_by_corpus_auroc`.
AUROC_EDGES = (0.5, 0.6, 0.7, 1.0)


@dataclasses.dataclass
class ValidationSet:
  """Another labelled set, its labels mapped onto the training set's."""

  es: data.EmbeddingSet  # labelled rows only; labels index `names`
  names: list[str]  # emotions used, in training order
  train_index: np.ndarray  # Int[len(names)]: each one's training label
  left_out: dict[str, str]  # emotion -> why it is left out
  path: str


def _key(name: str) -> str:
  return " ".join(name.casefold().split())


def _encoder_name(encoder) -> str | None:
  return encoder.get("name") if isinstance(encoder, dict) else encoder


def load_validation_set(path: str | Path, train_names: list[str], dim: int,
                        min_support: int, encoder=None) -> ValidationSet:
  """Loads and maps another labelled set; DataError when it cannot be used
  (other dimension, another named encoder than `encoder`, fewer than two
  shared emotions)."""
  es = data.load_embedding_set(path)
  if es.dim != dim:
    raise data.DataError(f"validation set {path} has dimension {es.dim}, the "
                         f"SAE {dim}; embed it with the training encoder")
  mine, theirs = _encoder_name(encoder), _encoder_name(es.meta.get("encoder"))
  if mine and theirs and mine != theirs:
    raise data.DataError(f"validation set {path} was embedded with {theirs!r}"
                         f", the training data with {mine!r}; embed it with "
                         "the training encoder")
  val_keys = {_key(n): e for e, n in enumerate(es.label_names)}
  train_keys = {_key(n) for n in train_names}
  counts = np.bincount(es.labels[es.labels >= 0],
                       minlength=len(es.label_names))
  left_out, used = {}, []
  for t, name in enumerate(train_names):
    e = val_keys.get(_key(name))
    if e is None:
      left_out[name] = "not in the validation set"
    elif counts[e] < min_support:
      left_out[name] = (f"{counts[e]} example(s) in the validation set, fewer"
                        f" than min_support={min_support}")
    else:
      used.append((t, e))
  for name in es.label_names:
    if _key(name) not in train_keys:
      left_out[name] = "not in the training set"
  if len(used) < 2:
    raise data.DataError(
        f"validation set {path}: {len(used)} emotion(s) shared with the "
        f"training set ({', '.join(f'{k}: {v}' for k, v in left_out.items())})"
        "; validation needs at least two")
  mapping = np.full(len(es.label_names) + 1, -1, np.int32)  # [-1] stays -1
  for new, (_, e) in enumerate(used):
    mapping[e] = new
  labels = mapping[es.labels]
  keep = np.flatnonzero(labels >= 0)
  names = [train_names[t] for t, _ in used]
  mapped = data.make_embedding_set(
      es.embeddings[keep], labels[keep], names,
      [es.texts[i] for i in keep], [es.groups[i] for i in keep])
  mapped.meta.update({k: v for k, v in es.meta.items() if k != "label_names"})
  return ValidationSet(mapped, names, np.array([t for t, _ in used]),
                       left_out, str(path))


def validate(members: Members, corpus: dict, probe_weights, vset: ValidationSet,
             settings: Settings, progress: bool = False) -> tuple[dict, dict]:
  """Every feature of every member on `vset`, checked against the corpus
  arrays. Returns (arrays, info): arrays [M, ...] (`auroc_own`: each
  feature's AUROC on vset for its corpus emotion, NaN when that emotion is
  left out; `holds`, p/q/significant/emotion on vset, the null counts);
  info: what the summary says about the set."""
  to_val = np.full(int(corpus["auroc"].shape[1]), -1, np.int32)
  to_val[vset.train_index] = np.arange(len(vset.names))
  ref_emotion = to_val[corpus["emotion"]]
  testable = corpus["significant"] & (ref_emotion >= 0)
  reference = {"significant": testable, "emotion": ref_emotion,
               "bh_significant": corpus["bh_significant"] & (
                   ref_emotion >= 0),
               "broad": testable & corpus["broad"]}
  es = vset.es
  x = runs.normalizer_of(members.info).apply(es.embeddings)
  x = x.astype(np.float32)
  arrays, extras = compute(
      members.sae, members.params, x, es.labels, len(vset.names),
      group_ids(es.groups), dataclasses.replace(settings, n_causal=0),
      progress, reference=reference, fall_back_to_all_rows=True)
  own = np.take_along_axis(arrays["auroc"],
                           np.maximum(ref_emotion, 0)[:, None], 1)[:, 0]
  arrays["auroc_own"] = np.where(ref_emotion >= 0, own, np.nan).astype(
      np.float32)
  arrays["corpus_testable"] = reference["significant"]
  arrays["corpus_bh_testable"] = reference["bh_significant"]
  arrays["corpus_broad"] = reference["broad"]
  info = {"path": vset.path, "data_hash": es.meta.get("content_hash"),
          "n_labelled": len(es), "emotions": vset.names,
          "examples_per_emotion": dict(zip(vset.names, np.bincount(
              es.labels, minlength=len(vset.names)).tolist())),
          "left_out": vset.left_out, "permutation": extras["permutation"],
          "probe_own_cv": extras["probe"]["accuracy_cv"],
          "corpus_probe": corpus_probe_accuracy(probe_weights, x, es.labels,
                                                vset.train_index)}
  return arrays, info


def corpus_probe_accuracy(probe_weights, x: np.ndarray, labels: np.ndarray,
                          train_index: np.ndarray) -> dict:
  """The corpus probe on the other set (its logits restricted to the shared
  emotions): balanced accuracy beside chance."""
  w, b = probe_weights
  logits = (x @ w + b)[:, train_index]
  predicted = np.argmax(logits, 1)
  recalls = [float(np.mean(predicted[labels == e] == e))
             for e in range(len(train_index)) if np.any(labels == e)]
  return {"balanced_accuracy": float(np.mean(recalls)),
          "chance": 1.0 / len(train_index)}


def prefixed(arrays: dict, j: int) -> dict:
  """The arrays of validation set j under their stored names."""
  keep = ("auroc", "auroc_own", "statistic", "emotion", "support", "p_value",
          "q_value", "significant", "tested", "holds", "holds_count",
          "null_holds_count", "null_holds_broad_count", "corpus_testable",
          "corpus_broad", "significant_count",
          "null_significant_count", "top_index", "top_value",
          "bh_significant", "bh_holds_count", "null_bh_holds_count",
          "corpus_bh_testable")
  return {PREFIX.format(j) + k: arrays[k] for k in keep}


def member_validation(arrays: dict, info: dict, i: int,
                      n_corpus_significant: int) -> dict:
  """Member i on one validation set: how many corpus-significant features
  hold, beside the same count under shuffled validation labels; the same
  per breadth tier ("by_breadth", breadth.py)."""
  from emosae_jax.analysis.summary import count_entry
  testable = arrays["corpus_testable"][i]
  broad = arrays["corpus_broad"][i]
  holds = arrays["holds"][i]
  null = arrays["null_holds_count"][i]
  null_broad = arrays["null_holds_broad_count"][i]
  tiers = {"broad": (testable & broad, null_broad),
           "narrow": (testable & ~broad, null - null_broad)}
  by_breadth = {
      name: _holding(count_entry(
          f"hold/{name}", f"{name} corpus-significant features significant "
          "on the validation set for the same emotion",
          np.sum(holds & mask), tier_null), int(np.sum(mask)))
      for name, (mask, tier_null) in tiers.items()}
  hold = count_entry(
      "hold", "corpus-significant features significant on the validation "
      "set for the same emotion", arrays["holds_count"][i], null)
  bh_hold = count_entry(
      "hold/bh", "BH-significant corpus features (no support fraction) "
      "BH-significant on the validation set for the same emotion",
      arrays["bh_holds_count"][i], arrays["null_bh_holds_count"][i])
  return {
      "path": info["path"], "corpus_significant": n_corpus_significant,
      **_holding(hold, int(np.sum(testable))),
      "bh": _holding(bh_hold, int(np.sum(arrays["corpus_bh_testable"][i]))),
      "significant_on_validation": count_entry(
          "significant on validation", "features significant on the "
          "validation set (any emotion)", arrays["significant_count"][i],
          arrays["null_significant_count"][i]),
      "by_breadth": by_breadth}


def _holding(hold: dict, testable: int) -> dict:
  """A hold count (count_entry) as shares of the testable features, real
  and under shuffled validation labels."""
  share = lambda c: c / testable if testable else None
  null = hold["shuffled"]
  return {"testable": testable, "hold": hold,
          "share_hold": share(hold["real"]),
          "share_hold_shuffled": {"mean": share(null["mean"]),
                                  "p95": share(null["p95"]),
                                  "max": share(null["max"])}}


def feature_validation(arrays: dict, vset: ValidationSet, i: int, f: int,
                       n_top: int = 3) -> dict:
  """One feature on one validation set, beside its corpus figures."""
  e = int(arrays["emotion"][i, f])
  auroc = float(arrays["auroc_own"][i, f])
  top = [{"text": vset.es.texts[r], "activation": float(v),
          "emotion": vset.names[vset.es.labels[r]]}
         for r, v in zip(arrays["top_index"][i, f][:n_top],
                         arrays["top_value"][i, f][:n_top]) if v > 0]
  return {"path": vset.path,
          "auroc": None if auroc != auroc else auroc,  # NaN: left out
          "emotion": vset.names[e], "p_value": float(arrays["p_value"][i, f]),
          "q_value": float(arrays["q_value"][i, f]),
          "significant": bool(arrays["significant"][i, f]),
          "holds": bool(arrays["holds"][i, f]), "top_prompts": top}


def holding_by_corpus_auroc(features: list[dict], j: int,
                            edges: tuple[float, ...] = AUROC_EDGES
                            ) -> list[dict]:
  """Corpus-significant features (summary records) in bands of their corpus
  AUROC: how many, how many hold on validation set j, how many reappear in
  at least one other seed.

  Why: a feature that fires for one or two of an emotion's words is
  significant on the corpus at an AUROC near 0.5 (it misses the emotion's
  other prompts) and cannot hold where the words are new; one that covers
  the emotion has a high AUROC. The share holding per band tells the two
  apart. The last band includes its upper edge.
  """
  out = []
  for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
    last = k == len(edges) - 2
    band = [r for r in features
            if lo <= r["auroc"] < hi or (last and r["auroc"] == hi)]
    hold = sum(bool(r["validation"][j]["holds"]) for r in band)
    reappear = sum((r.get("reappears_in") or 0) >= 1 for r in band)
    out.append({"band": f"{lo:g}-{hi:g}", "n": len(band), "hold": hold,
                "share_hold": hold / len(band) if band else None,
                "reappear": reappear})
  return out
