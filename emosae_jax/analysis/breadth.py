"""Breadth tiers of the significant features: broad or narrow.

A significant feature is *broad* when it fires on at least
Settings.broad_support (a FRACTION) of its emotion's labelled examples in
the analysed set, else *narrow*. The tier sorts what the permutation test
found; it changes no test and no count of significant features.

Why: on the offline corpus most significant features fire on a handful of
an emotion's prompts (a median of 9 of 209): they follow one emotion word or
its family, and a held-out split whose emotion words are new cannot confirm
them (10-15% hold); those firing on at least 30 of their emotion's prompts
hold and reappear across seeds far more often. Per member the summary gives
each tier's count, the share that reappears (stability.reappearing_share)
and, per validation set, the share that holds beside its shuffled-label null
(validation.member_validation).
"""

from __future__ import annotations

import numpy as np

TIERS = ("broad", "narrow")
_RATE_TOL = 1e-6  # rates are float32 count / n: 0.1 of 30 is exactly 3


def own_rate(arrays: dict) -> np.ndarray:
  """Float[M, m]: the share of its emotion's examples each feature fires
  on (rate[emotion[f], f])."""
  return np.take_along_axis(arrays["rate"], arrays["emotion"][:, None],
                            1)[:, 0]


def broad_features(arrays: dict, broad_support: float) -> np.ndarray:
  """Bool[M, m]: significant and firing on >= broad_support of their
  emotion's examples."""
  return (arrays["significant"].astype(bool)
          & (own_rate(arrays) >= broad_support - _RATE_TOL))


def tier(broad: bool) -> str:
  return TIERS[0] if broad else TIERS[1]


def check_broad_support(value: float, flag: str = "broad_support") -> None:
  """Refuses a support fraction (--broad_support, --min_support_fraction)
  outside [0, 1]."""
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"--{flag} is a fraction of an emotion's "
                     f"examples and must lie in [0, 1], got {value}")


def member_breadth(features: list[dict], stab: dict | None) -> dict:
  """Per tier: how many significant features, the share reappearing in >=
  half of the other seeds (as fraction_reappearing) and in at least one
  (as by_corpus_auroc). features: summary records with "tier"; stab: the
  member's stability entries (None without other seeds)."""
  from emosae_jax.analysis.stability import reappearing_share
  out = {}
  for name in TIERS:
    feats = [r["feature"] for r in features if r["tier"] == name]
    entries = {f: (stab or {})[f] for f in feats if f in (stab or {})}
    seeded = [e for e in entries.values() if e["n_other_seeds"]]
    out[name] = {
        "n": len(feats), "share_reappear": reappearing_share(entries),
        "share_reappear_any": (float(np.mean(
            [e["reappears_in"] >= 1 for e in seeded])) if seeded else None)}
  return out
