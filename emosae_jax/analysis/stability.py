"""Stability: significant features matched one-to-one to other members'
features by decoder cosine (linear_sum_assignment)."""

from __future__ import annotations

import numpy as np


def match_features(dec_a: np.ndarray, dec_b: np.ndarray,
                   features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One-to-one match of dec_a[features] to rows of dec_b by cosine.

  Returns (matched row of dec_b, cosine) for each feature. Matching only the
  listed (significant) features keeps the assignment problem small
  ([n, m] instead of [m, m]) while staying one-to-one.
  """
  from scipy.optimize import linear_sum_assignment
  if len(features) == 0:
    return np.zeros(0, int), np.zeros(0)
  a = dec_a[features]
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = dec_b / np.maximum(np.linalg.norm(dec_b, axis=1, keepdims=True), 1e-12)
  cos = a @ b.T
  rows, cols = linear_sum_assignment(-cos)
  matched = np.empty(len(features), int)
  matched[rows] = cols
  return matched, cos[np.arange(len(features)), matched]


def stability(decoders: np.ndarray, significant: np.ndarray,
              emotion: np.ndarray, threshold: float) -> list[dict]:
  """Per member, per significant feature: where it reappears.

  decoders: [M, m, d]; significant, emotion: [M, m]. Returns, for each
  member, {feature: {"matches": [{"member", "feature", "cosine",
  "significant_same_emotion"}], "stability", "stability_significant"}}.
  """
  n_members = decoders.shape[0]
  result = []
  for i in range(n_members):
    feats = np.flatnonzero(significant[i])
    per = {int(f): {"matches": []} for f in feats}
    for j in range(n_members):
      if j == i:
        continue
      matched, cos = match_features(decoders[i], decoders[j], feats)
      for f, g, c in zip(feats, matched, cos):
        per[int(f)]["matches"].append({
            "member": j, "feature": int(g), "cosine": float(c),
            "significant_same_emotion": bool(
                significant[j, g] and emotion[j, g] == emotion[i, f])})
    for f, entry in per.items():
      ms = entry["matches"]
      entry["stability"] = (float(np.mean([x["cosine"] >= threshold
                                           for x in ms])) if ms else None)
      entry["stability_significant"] = (float(np.mean(
          [x["cosine"] >= threshold and x["significant_same_emotion"]
           for x in ms])) if ms else None)
    result.append(per)
  return result
