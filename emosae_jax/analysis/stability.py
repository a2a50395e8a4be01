"""Stability: significant features matched one-to-one (Hungarian,
linear_sum_assignment on decoder cosine) to the features of the other seeds
of the same configuration; a feature reappears in a seed when its match
reaches Settings.stability_threshold (0.7, DESIGN.md)."""

from __future__ import annotations

import json

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


def same_config_groups(overrides: list[dict]) -> list[list[int]]:
  """Positions of the members that differ only in their seed, grouped (a
  feature that reappears under another learning rate says nothing about
  seeds; DESIGN.md counts only seeds of the same configuration)."""
  groups: dict[str, list[int]] = {}
  for i, o in enumerate(overrides):
    key = json.dumps({k: v for k, v in o.items() if k != "seed"},
                     sort_keys=True, default=str)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def stability(decoders: np.ndarray, significant: np.ndarray,
              emotion: np.ndarray, threshold: float,
              overrides: list[dict] | None = None) -> list[dict]:
  """Per member, per significant feature: where it reappears among the
  other seeds of its configuration.

  decoders: [M, m, d]; significant, emotion: [M, m]; overrides: each
  member's sweep overrides (None: all members are seeds of one
  configuration). Returns, for each member, {feature: {"matches":
  [{"member", "feature", "cosine", "significant_same_emotion"}],
  "n_other_seeds", "reappears_in" (other seeds matching it at cosine >=
  threshold), "stability" (reappears_in / n_other_seeds),
  "stability_significant" (the share where the match is also significant
  for the same emotion)}}; the last two are None without other seeds.
  """
  n_members = decoders.shape[0]
  groups = same_config_groups(overrides or [{}] * n_members)
  group_of = {i: g for g in groups for i in g}
  result = []
  for i in range(n_members):
    feats = np.flatnonzero(significant[i])
    per = {int(f): {"matches": []} for f in feats}
    others = [j for j in group_of[i] if j != i]
    for j in others:
      matched, cos = match_features(decoders[i], decoders[j], feats)
      for f, g, c in zip(feats, matched, cos):
        per[int(f)]["matches"].append({
            "member": j, "feature": int(g), "cosine": float(c),
            "significant_same_emotion": bool(
                significant[j, g] and emotion[j, g] == emotion[i, f])})
    for f, entry in per.items():
      ms = entry["matches"]
      entry["n_other_seeds"] = len(others)
      entry["reappears_in"] = sum(x["cosine"] >= threshold for x in ms)
      entry["stability"] = (entry["reappears_in"] / len(ms) if ms else None)
      entry["stability_significant"] = (float(np.mean(
          [x["cosine"] >= threshold and x["significant_same_emotion"]
           for x in ms])) if ms else None)
    result.append(per)
  return result


def reappearing_share(per: dict | None) -> float | None:
  """The share of a member's significant features that reappear in at
  least half of the other seeds of its configuration (None: no other
  seeds, or no significant features)."""
  entries = [e for e in (per or {}).values() if e["n_other_seeds"]]
  if not entries:
    return None
  return float(np.mean([e["reappears_in"] >= e["n_other_seeds"] / 2
                        for e in entries]))
