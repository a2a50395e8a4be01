"""Per-feature statistics: pure, vmappable jax functions (ranks of sparse
activations, AUROC from rank sums, BH, the null counts)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from emosae_jax.analysis.settings import DeviceSpec

# Real-vs-shuffled AUROC this close counts as a tie (conservative; rank sums
# are exact in float32 up to a few thousand examples anyway).
_TIE_TOL = 1e-6
_SEL_TOL = 1e-6  # relative, for selectivity-threshold ties
_STAT_RANGE = (0.5, 1.0)  # histogram range of the max-AUROC statistic


def average_ranks(values: jax.Array) -> jax.Array:
  """Float[N] -> Float[N]: 1-based ranks, tied values get their mean rank.

  One sort; each run of equal values finds its first and last position with
  a cumulative max / min. (A dense reference; the analysis ranks only the
  non-zero entries, see `entry_rank_offsets`.)
  """
  n = values.shape[0]
  order = jnp.argsort(values)
  s = values[order]
  pos = jnp.arange(n)
  differs = s[1:] != s[:-1]
  starts = jnp.concatenate([jnp.ones(1, bool), differs])
  ends = jnp.concatenate([differs, jnp.ones(1, bool)])
  first = jax.lax.cummax(jnp.where(starts, pos, 0))
  last = jax.lax.cummin(jnp.where(ends, pos, n), reverse=True)
  mean_rank = (first + last).astype(jnp.float32) / 2 + 1
  return jnp.zeros(n, jnp.float32).at[order].set(mean_rank)


# Float[N, m] -> Float[N, m]: ranks of each feature's activations.
feature_ranks = jax.vmap(average_ranks, in_axes=1, out_axes=1)


def sparse_entries(acts: jax.Array, capacity: int):
  """The non-zeros of acts [N, m] as (row, col, value, valid), each
  Int/Float[capacity]; padding has valid False, col m and value 0."""
  m = acts.shape[1]
  rows, cols = jnp.nonzero(acts, size=capacity, fill_value=-1)
  valid = cols >= 0
  rows, cols = jnp.where(valid, rows, 0), jnp.where(valid, cols, m)
  values = jnp.where(valid, acts[rows, jnp.minimum(cols, m - 1)], 0.0)
  return rows, cols, values, valid


def entry_rank_offsets(rows, cols, values, valid, n: int, m: int):
  """Average ranks of the non-zero entries within their feature, relative to
  the rank shared by that feature's zeros.

  Returns (rows, cols, offset, valid) re-ordered (by feature, value) and
  zero_rank Float[m]: a zero of feature f has average rank zero_rank[f], the
  entry has zero_rank[col] + offset. Ties among non-zeros are averaged too.
  """
  order = jnp.lexsort((values, cols))
  rows, cols, values, valid = (rows[order], cols[order], values[order],
                               valid[order])
  cap = cols.shape[0]
  pos = jnp.arange(cap)
  new_col = jnp.concatenate([jnp.ones(1, bool), cols[1:] != cols[:-1]])
  col_start = jax.lax.cummax(jnp.where(new_col, pos, 0))
  differs = (cols[1:] != cols[:-1]) | (values[1:] != values[:-1])
  starts = jnp.concatenate([jnp.ones(1, bool), differs])
  ends = jnp.concatenate([differs, jnp.ones(1, bool)])
  first = jax.lax.cummax(jnp.where(starts, pos, 0))
  last = jax.lax.cummin(jnp.where(ends, pos, cap), reverse=True)
  seg = functools.partial(jax.ops.segment_sum, segment_ids=cols,
                          num_segments=m + 1)
  nonzero = seg(valid.astype(jnp.float32))[:m]
  negative = seg((valid & (values < 0)).astype(jnp.float32))[:m]
  zeros = n - nonzero
  col = jnp.minimum(cols, m - 1)
  rank = ((first - col_start) + jnp.where(values > 0, zeros[col], 0.0)
          + (last - first + 2) / 2)
  zero_rank = negative + (zeros + 1) / 2
  offset = jnp.where(valid, rank - zero_rank[col], 0.0)
  return rows, col, offset, valid, zero_rank


def reference_selectivity(rate: jax.Array) -> jax.Array:
  """Float[K, m] rates -> Float[m] max_e rate / mean_e rate (0 if dead)."""
  mean = rate.mean(0)
  return jnp.where(mean > 0, rate.max(0) / jnp.maximum(mean, 1e-30), 0.0)


def auroc_from_rank_sums(centred_rank_sums, n_pos, n):
  """One-vs-rest AUROC from sums of centred ranks (rank - (n+1)/2).

  centred_rank_sums: Float[K, m]; n_pos: Float[K] examples per emotion.
  U = R - n_e (n_e + 1) / 2 = R_centred + n_e (n - n_e) / 2.
  """
  return 0.5 + centred_rank_sums / (n_pos * (n - n_pos))[:, None]


def benjamini_hochberg(p: jax.Array, mask: jax.Array) -> jax.Array:
  """BH q-values of p [m] over the entries where mask [m] is true (else 1)."""
  m = p.shape[0]
  n = jnp.sum(mask)
  p = jnp.where(mask, p, jnp.inf)
  order = jnp.argsort(p)
  q_sorted = p[order] * n / jnp.arange(1, m + 1)
  q_sorted = jax.lax.cummin(q_sorted, reverse=True)
  q = jnp.zeros_like(q_sorted).at[order].set(q_sorted)
  return jnp.where(mask, jnp.minimum(q, 1.0), 1.0)


def _histogram(values, mask, lo, hi, bins):
  idx = jnp.clip(((values - lo) / (hi - lo) * bins).astype(jnp.int32), 0,
                 bins - 1)
  return jnp.zeros(bins, jnp.float32).at[idx].add(mask.astype(jnp.float32))


def _emotion_sums(spec: DeviceSpec, entry_labels, cols, weights):
  """Sums weights [B, cap, W] into [B, K, m, W] bins by (entry label,
  feature): one flat segment_sum for the whole member batch (a vmapped
  scatter is several times slower on CPU)."""
  b = cols.shape[0]
  k, m = spec.n_labels, spec.sae.d_sae
  idx = (jnp.arange(b)[:, None] * k + entry_labels) * m + cols
  sums = jax.ops.segment_sum(weights.reshape(-1, weights.shape[-1]),
                             idx.reshape(-1), num_segments=b * k * m)
  return sums.reshape(b, k, m, weights.shape[-1])


def _stats(spec: DeviceSpec, counts, offset_sums, n_pos, n, zero_rank,
           live):
  """Statistics of one labelling of one member, from its bin sums.

  counts, offset_sums: Float[K, m]; zero_rank: Float[m].
  """
  rate = counts / n_pos[:, None]
  selectivity = reference_selectivity(rate)
  rank_sums = n_pos[:, None] * (zero_rank - (n + 1) / 2) + offset_sums
  auroc = auroc_from_rank_sums(rank_sums, n_pos, n)
  emotion = jnp.argmax(auroc, 0).astype(jnp.int32)
  statistic = auroc.max(0)
  return {
      "statistic": statistic, "emotion": emotion,
      "support": jnp.take_along_axis(counts, emotion[None], 0)[0],
      # The tolerance makes "selectivity >= 2" exact-ratio ties (common:
      # rates are small fractions) independent of float rounding.
      "selective_counts": jnp.stack([
          jnp.sum(live & (selectivity >= t * (1 - _SEL_TOL)))
          for t in spec.thresholds]),
      "selectivity_hist": _histogram(selectivity, live, 1.0,
                                     float(spec.n_labels), spec.hist_bins),
      "statistic_hist": _histogram(statistic, live, *_STAT_RANGE,
                                   spec.hist_bins),
      "rate": rate, "auroc": auroc, "selectivity": selectivity,
  }


# Supports are counts and n_pos * fraction a float: 0.1 of 30 is exactly 3.
_SUPPORT_TOL = 1e-6


def _supported(spec: DeviceSpec, support, n_pos_own):
  """(absolute, full): support >= min_support; and also >= min_support_
  fraction of the emotion's n_pos_own examples (the test's breadth part)."""
  absolute = support >= spec.min_support
  share = support >= spec.min_support_fraction * n_pos_own - _SUPPORT_TOL
  return absolute, absolute & share


def _significance(spec: DeviceSpec, p, support, n_pos_own, tested):
  """(q, significant, bh_significant): BH over the tested features; both
  need q <= fdr and support >= min_support; `significant` also fires on >=
  min_support_fraction of its emotion's examples (n_pos_own: Float[m], the
  examples of each feature's emotion)."""
  q = benjamini_hochberg(p, tested)
  absolute, full = _supported(spec, support, n_pos_own)
  rejected = (q <= spec.fdr) & tested
  return q, rejected & full, rejected & absolute


def _at_least_host(stat: np.ndarray) -> np.ndarray:
  """numpy: #{values in the same column >= each value}, columns along axis
  -2 of stat [..., P, m] (exact ties count)."""
  n_perm = stat.shape[-2]
  rows = np.ascontiguousarray(np.swapaxes(stat, -1, -2))  # [..., m, P]
  order = np.argsort(rows, axis=-1)
  ordered = np.take_along_axis(rows, order, -1)
  starts = np.empty(ordered.shape, bool)
  starts[..., 0] = True
  np.not_equal(ordered[..., 1:], ordered[..., :-1], out=starts[..., 1:])
  first = np.maximum.accumulate(
      np.where(starts, np.arange(n_perm, dtype=np.int32), 0), axis=-1)
  out = np.empty(rows.shape, np.int32)
  np.put_along_axis(out, order, n_perm - first, -1)
  return np.swapaxes(out, -1, -2)


def column_at_least(stat: jax.Array) -> jax.Array:
  """Int[P, m]: for each entry, how many entries of its column are >= it.

  A host callback: numpy sorts these [P, m] columns about 10x faster than
  XLA's CPU sort, and this sort is the largest single cost of the null
  counts at 1,000 permutations x 6,144 features.
  """
  return jax.pure_callback(_at_least_host,
                           jax.ShapeDtypeStruct(stat.shape, jnp.int32), stat,
                           vmap_method="expand_dims")


def _null_significance(spec: DeviceSpec, stat, emotion, support, n_pos,
                       tested, reference):
  """Under each shuffle, by the same rule as the real labels: significant
  counts [P] ("significant"; "bh_significant": without the support
  fraction), per emotion [P, K] ("by_emotion"), and of the reference's
  features significant for the reference's emotion [P] ("holds", "holds_
  broad": its broad ones, "bh_holds": both sides BH-significant only).

  reference: {"significant", "bh_significant", "broad": Bool[m], "emotion":
  Int[m]} (e.g. the corpus result a validation set is checked against;
  all False when there is none). n_pos: Float[K] examples per emotion (the
  same under every shuffle).

  stat, emotion, support: [P, m] of one member. Shuffle s is tested against
  all shuffles: p = #{s': stat_s' >= stat_s} / P (itself included, i.e.
  (1 + others) / P). These p-values lie on the grid j / P, so BH runs by
  counting: reject p <= t*, t* the largest grid value with
  t <= fdr * #{tested p <= t} / n_tested.
  """
  n_perm, m = stat.shape
  at_least = column_at_least(stat)
  pos = jnp.arange(n_perm)[:, None]
  levels = jnp.zeros((n_perm, n_perm + 1), jnp.float32).at[
      pos, jnp.where(tested, at_least, 0)].add(tested.astype(jnp.float32))
  below = jnp.cumsum(levels, axis=1)  # [s, j]: tested p <= j / P
  grid = jnp.arange(n_perm + 1)
  passes = (grid * jnp.sum(tested) <= spec.fdr * below * n_perm) & (grid > 0)
  cutoff = jnp.max(jnp.where(passes, grid, 0), axis=1)  # [P]
  rejected = (at_least <= cutoff[:, None]) & tested
  absolute, full = _supported(spec, support, n_pos[emotion])
  sig, bh_sig = rejected & full, rejected & absolute
  by_emotion = jnp.stack([jnp.sum(sig & (emotion == e), 1)
                          for e in range(spec.n_labels)], 1)
  same = emotion == reference["emotion"]
  holding = sig & reference["significant"] & same
  bh_holding = bh_sig & reference["bh_significant"] & same
  return {"significant": jnp.sum(sig, 1), "bh_significant": jnp.sum(
      bh_sig, 1), "by_emotion": by_emotion, "holds": jnp.sum(holding, 1),
          "holds_broad": jnp.sum(holding & reference["broad"], 1),
          "bh_holds": jnp.sum(bh_holding, 1)}
