"""What the analysis computes (`Settings`, the command line's defaults) and
the static, shape-determining part of its jitted program (`DeviceSpec`)."""

from __future__ import annotations

import dataclasses

from emosae_jax import saes


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the analysis computes; the defaults are the command line's."""

  permutations: int = 1000
  fdr: float = 0.05
  min_support: int = 5
  # Part of the test (kernels._significance): a feature is significant only
  # if it also fires on >= this FRACTION of its emotion's labelled examples
  # (BH-significant features below it are still counted, as
  # "bh_significant"). Shuffled labels go through the same rule. 0 = off
  # here (older analyses reproduce); scripts/analyze.py and the pipeline
  # use 0.15, chosen on the offline run's val split, never the test split
  # (benchmarks/support_scan.py on a fraction-0 analysis, pooled over its
  # 6 SAEs): the share holding on val rises with the fraction (0: 2%,
  # 0.10: 10%, 0.15: 15%, 0.20: 33%) and the share reappearing in >= half
  # the other seeds too (22%, 46%, 56%, 58%) while the SAEs cover fewer
  # emotions (9, 8.3, 4.7, 1.8 of 9 per SAE); 0.15 is the largest fraction
  # leaving significant features for at least half the emotions.
  min_support_fraction: float = 0.0
  # Breadth tier (breadth.py): a significant feature is "broad" when it
  # fires on >= this FRACTION of its emotion's labelled examples, else
  # "narrow". It sorts significant features; it changes no test.
  broad_support: float = 0.1
  within_groups: bool = True
  seed: int = 0
  selectivity_thresholds: tuple[float, ...] = (2.0,)
  n_top: int = 10  # top-activating prompts kept per feature
  stability_threshold: float = 0.7  # decoder cosine for "reappears"
  strengths: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
  n_random: int = 8  # random directions per feature in the steering check
  n_causal: int = 512  # causal checks on this many top features per member
  steer_rows: int = 512  # prompts (at most) the steering check runs on
  hist_bins: int = 40
  member_batch: int = 0  # members vmapped at once; 0 = from memory_budget
  memory_budget_gb: float = 4.0


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """Static (shape-determining) part of the jitted analysis."""

  sae: saes.SAESpec
  n_labels: int
  fdr: float
  min_support: int
  min_support_fraction: float
  thresholds: tuple[float, ...]
  n_top: int
  strengths: tuple[float, ...]
  n_causal: int
  hist_bins: int
  capacity: int  # non-zero activations kept per member (>= the most seen)

