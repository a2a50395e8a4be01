"""Robust directions: consensus of a feature across seeds, compared with the
simplest baselines.

A significant feature is *robust* when it reappears (stability.py) in at
least half of the other seeds of its configuration and, when validation sets
are given, holds on every one of them (analyze passes only its selection
set when it has one, so that the test split only reports). Per configuration (members differing
only in seed) and emotion, robust features joined by a reappearance match
(cosine >= the stability threshold) form clusters (connected components);
a cluster's consensus is the mean of its sign-aligned unit decoder rows,
renormalised, and its spread the mean cosine of those rows to it. The
emotion's consensus direction is chosen among its clusters containing at
least one broad feature (breadth.py) when there are any, else among all: the
one covering the most seeds (ties: higher mean corpus AUROC). All robust
features, broad and narrow, are clustered, because a broad feature's match
in another seed can be narrow: clustering only the broad ones split such
clusters and lost seeds. The consensus' "tier" is "broad" when its cluster
contains a broad feature, else "narrow" ("n_broad": how many); the record's
"clustered" names the tier of the clusters it was chosen among (the same).

Each emotion's consensus is compared with the best single-seed feature (the
significant feature of the configuration with the highest corpus AUROC:
chosen on the corpus, not on the validation set it is then scored on), the
class-mean direction (mean normalised training embedding of the emotion
minus the mean of the other emotions' embeddings) and random directions, by
  (a) the probe's slope: P(emotion) on the other emotions' prompts per unit
      strength when adding strength x scale x direction (unit directions,
      one scale for all four: the best feature's typical displacement,
      typical activation x decoder norm, as in the feature steering check);
  (b) the one-vs-rest AUROC of the score x . direction on each validation
      set (and on the corpus), the class-mean baseline's own score.
All directions are in normalised units (x_norm = (x - mean) * scale); raw
units divide by the normaliser's scale.
"""

from __future__ import annotations

import numpy as np

from emosae_jax.analysis.stability import same_config_groups

PREFIX = "directions/"


def robust_features(arrays: dict, stab: list[dict],
                    validations=()) -> np.ndarray:
  """Bool[M, m]: significant, reappearing in >= half of the other seeds of
  the configuration, and holding on every validation set."""
  robust = np.zeros(arrays["significant"].shape, bool)
  for i, per in enumerate(stab):
    for f, e in (per or {}).items():
      if e["n_other_seeds"] and e["reappears_in"] >= e["n_other_seeds"] / 2:
        robust[i, f] = True
  for v_arrays, _, _ in validations:
    robust &= v_arrays["holds"]
  return robust


def _unit(v: np.ndarray) -> np.ndarray:
  return v / max(float(np.linalg.norm(v)), 1e-12)


def clusters(stab: list[dict], robust: np.ndarray, emotion: np.ndarray,
             members: list[int], threshold: float) -> list[list[tuple]]:
  """Connected components of the robust (member, feature) nodes of
  `members` (positions), joined by reappearance matches for one emotion."""
  nodes = [(i, f) for i in members for f in np.flatnonzero(robust[i])]
  parent = {n: n for n in nodes}

  def root(n):
    while parent[n] != n:
      parent[n] = parent[parent[n]]
      n = parent[n]
    return n

  for i, f in nodes:
    for x in stab[i][int(f)]["matches"]:
      other = (x["member"], x["feature"])
      if (x["cosine"] >= threshold and other in parent
          and emotion[other] == emotion[i, f]):
        parent[root((i, f))] = root(other)
  groups: dict[tuple, list[tuple]] = {}
  for n in nodes:
    groups.setdefault(root(n), []).append((int(n[0]), int(n[1])))
  return list(groups.values())


def tier_of(cluster: list[tuple], broad: np.ndarray) -> str:
  """"broad" when the cluster contains a broad feature, else "narrow"."""
  return "broad" if any(broad[n] for n in cluster) else "narrow"


def pick_cluster(cl: list[list[tuple]], broad: np.ndarray,
                 statistic: np.ndarray) -> list[tuple] | None:
  """Among the clusters containing a broad feature (all clusters if none
  does; narrow features follow single words, breadth.py), the one covering
  the most seeds, ties broken by the higher mean corpus AUROC. None: no
  clusters."""
  pool = [c for c in cl if tier_of(c, broad) == "broad"] or cl
  if not pool:
    return None
  return max(pool, key=lambda c: (len({i for i, _ in c}), np.mean(
      [statistic[n] for n in c])))


def consensus_of(decoders: np.ndarray, cluster: list[tuple]):
  """(unit consensus Float[d], spread): sign-aligned mean of unit rows."""
  rows = np.stack([_unit(decoders[i, f]) for i, f in cluster])
  rows *= np.where(rows @ rows[0] < 0, -1.0, 1.0)[:, None]
  mean = _unit(rows.mean(0))
  return mean, float(np.mean(rows @ mean))


def class_mean_directions(x: np.ndarray, labels: np.ndarray,
                          n_labels: int) -> np.ndarray:
  """Float[K, d]: mean of emotion e's rows minus the mean of the others'."""
  return np.stack([x[labels == e].mean(0) - x[labels != e].mean(0)
                   for e in range(n_labels)])


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
  """One-vs-rest AUROC (ties averaged)."""
  from scipy.stats import rankdata
  n_pos, n = int(positive.sum()), len(positive)
  if n_pos in (0, n):
    return float("nan")
  ranks = rankdata(scores)
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2)
               / (n_pos * (n - n_pos)))


def probe_slope(x: np.ndarray, labels: np.ndarray, probe_weights,
                direction: np.ndarray, e: int, scale: float,
                strengths) -> float:
  """P(e) on the other emotions' rows per unit strength, adding
  strength x scale x direction (the same fit as the feature check)."""
  w, b = probe_weights
  other = labels != e
  base = x[other] @ w + b
  shift = direction @ w
  s = np.asarray(strengths, np.float64)
  dose = []
  for st in s:
    z = base + st * scale * shift
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    dose.append(float(np.mean(p[:, e] / p.sum(1))))
  dose = np.asarray(dose)
  s0 = s - s.mean()
  return float(np.sum(s0 * (dose - dose.mean())) / np.sum(s0 * s0))


def compare(directions: dict[str, np.ndarray], e: int, scale: float,
            corpus: tuple, probe_weights, strengths, val_sets: list[tuple],
            random_dirs: np.ndarray) -> dict:
  """Slope and AUROCs of each named unit direction for emotion e (random:
  the mean over random_dirs). corpus, val_sets: (x, labels, e_there)."""
  x, labels = corpus
  out = {}
  for name, u in list(directions.items()) + [("random", None)]:
    dirs = [u] if u is not None else list(random_dirs)
    entry = {"slope": float(np.mean([probe_slope(
        x, labels, probe_weights, d, e, scale, strengths) for d in dirs])),
             "auroc_corpus": float(np.mean([auroc(x @ d, labels == e)
                                            for d in dirs]))}
    entry["auroc_validation"] = [
        None if ev < 0 else float(np.mean([auroc(xv @ d, lv == ev)
                                           for d in dirs]))
        for xv, lv, ev in ((v[0], v[1], v[2][e]) for v in val_sets)]
    out[name] = entry
  return out


def robust_directions(decoders: np.ndarray, arrays: dict, stab: list[dict],
                      overrides: list[dict], indices: list[int],
                      label_names: list[str], corpus: tuple, probe_weights,
                      random_dirs: np.ndarray, settings,
                      validations=(), val_sets: list[tuple] = ()
                      ) -> tuple[dict, dict]:
  """Consensus directions per configuration and emotion, compared with the
  best single feature, the class mean and random directions.

  decoders: [M, m, d]; corpus: (x_norm, labels) of the labelled training
  rows; val_sets: (x_norm, labels, to_val Int[K]: each training emotion's
  label there, -1 if left out) per validation set. Returns (summary,
  arrays) with arrays under PREFIX (see the report for the export)."""
  k, d = len(label_names), decoders.shape[-1]
  robust = robust_features(arrays, stab, validations)
  class_mean = class_mean_directions(corpus[0], corpus[1], k)
  groups = same_config_groups(overrides)
  consensus = np.full((len(groups), k, d), np.nan, np.float32)
  spread = np.full((len(groups), k), np.nan, np.float32)
  n_seeds = np.zeros((len(groups), k), np.int32)
  best = np.full((len(groups), k, 2), -1, np.int32)
  scale = np.full((len(groups), k), np.nan, np.float32)
  out = []
  for g, members in enumerate(groups):
    entry = {"members": [indices[i] for i in members],
             "overrides": {kk: v for kk, v in overrides[members[0]].items()
                           if kk != "seed"}, "emotions": {}}
    for e, name in enumerate(label_names):
      sig = [(i, f) for i in members for f in np.flatnonzero(
          arrays["significant"][i] & (arrays["emotion"][i] == e))]
      if not sig:
        entry["emotions"][name] = None
        continue
      bi, bf = max(sig, key=lambda n: arrays["statistic"][n])
      best[g, e] = (bi, bf)
      scale[g, e] = (arrays["typical_activation"][bi, bf]
                     * np.linalg.norm(decoders[bi, bf]))
      dirs = {"best_feature": _unit(decoders[bi, bf]),
              "class_mean": _unit(class_mean[e])}
      robust_e = robust & (arrays["emotion"] == e)
      cl = clusters(stab, robust_e, arrays["emotion"], members,
                    settings.stability_threshold)
      pick = pick_cluster(cl, arrays["broad"], arrays["statistic"])
      used = tier_of(pick, arrays["broad"]) if cl else None
      record = {"best_feature": {"member": indices[bi], "feature": int(bf),
                                 "auroc": float(arrays["statistic"][bi, bf])},
                "n_robust": int(np.sum((robust & (arrays["emotion"] == e))[
                    members])),
                "n_robust_broad": int(np.sum(
                    (robust & arrays["broad"] & (arrays["emotion"] == e))[
                        members])),
                "clustered": used,
                "n_clusters": len(cl), "consensus": None}
      if cl:
        consensus[g, e], spread[g, e] = consensus_of(decoders, pick)
        n_seeds[g, e] = len({i for i, _ in pick})
        dirs["consensus"] = consensus[g, e]
        record["consensus"] = {
            "n_seeds": int(n_seeds[g, e]), "spread": float(spread[g, e]),
            "tier": used,
            "n_broad": int(sum(bool(arrays["broad"][n]) for n in pick)),
            "features": [[indices[i], f] for i, f in pick]}
      record["comparison"] = compare(dirs, e, float(scale[g, e]), corpus,
                                     probe_weights, settings.strengths,
                                     list(val_sets), random_dirs)
      entry["emotions"][name] = record
    out.append(entry)
  stored = {"robust": robust, "consensus": consensus,
            "consensus_spread": spread, "consensus_seeds": n_seeds,
            "class_mean": class_mean.astype(np.float32),
            "best_feature": best, "scale": scale}
  return ({"groups": out, "definition": DEFINITION},
          {PREFIX + kk: v for kk, v in stored.items()})


DEFINITION = (
    "robust: significant, reappears in >= half of the other seeds of its "
    "configuration, holds on the selection set (every validation set when "
    "none is named); consensus: sign-aligned "
    "mean of the unit decoder rows of a cluster of robust features matched "
    "across seeds, renormalised (spread: their mean cosine to it), all robust "
    "features clustered, the consensus chosen among the clusters containing "
    "a broad feature when any do (tier: broad when it contains one), the one "
    "covering the most seeds; "
    "class_mean: mean normalised training embedding of the emotion minus the "
    "mean of the others'; slope: probe P(emotion) on other emotions' prompts "
    "per unit strength, every unit direction scaled by the best feature's "
    "typical displacement; AUROC: score = x . direction")
