"""Feature analysis: which SAE features are emotion-selective beyond chance.

For every SAE (a training run, or each member of a sweep) and every feature f,
on the labelled examples (label -1 rows are left out):

  rate[e, f]            fraction of emotion e's prompts on which f fires
  mean_activation[e, f] mean activation of f on emotion e's prompts (zeros in)
  selectivity[f]        the reference system's max_e rate / mean_e rate, as
                        is (its maximum is K, the number of emotions)
  auroc[e, f]           one-vs-rest AUROC of f's activation for emotion e
                        (rank based, ties averaged)
  statistic[f]          max_e auroc[e, f]; emotion[f] is the argmax
  p_value[f]            permutation test of `statistic` under P label shuffles
                        (within template groups): (1 + #{null >= real})/(P + 1)
  q_value[f]            Benjamini-Hochberg over the tested features (those
                        firing on >= min_support labelled examples in total, a
                        label-blind filter)
  significant[f]        q <= fdr and f fires on >= min_support examples of its
                        own emotion

Every count of "selective" features (the reference rule selectivity >= 2, the
significant features, per emotion) comes with the same count under each
shuffle of the labels (mean and range), so that chance has a number beside
it. For the significant count under a shuffle, that shuffle's statistics get
p-values against the other shuffles and go through the same BH + support
filter.

Stability: significant features of each member are matched one-to-one to the
other members' features by decoder cosine (linear_sum_assignment).
Causal checks use a logistic-regression emotion probe on the (normalised)
embeddings: ablating a feature (x - a_f W_dec[f]) and steering with it
(x + s * typical_f * W_dec[f], against random directions of the same norm).
Because the probe is linear in x, both reduce to shifts of the probe's logits.

How it is computed. Shuffling labels leaves every feature's ranks and firing
pattern unchanged, so each shuffle only re-sums per-emotion counts and rank
sums. Activations are sparse: a feature's zeros share one rank, so a shuffle
needs only the non-zero entries (N x k for a topk SAE), summed into
[emotion, feature] bins by one segment_sum over all members of a batch --
about 25x cheaper on CPU than the dense [K, N] @ [N, m] product. The device
work is one jitted function, `analyze_members`: `jax.vmap` over a batch of
members for everything per member (encoding, ranks, p-values, BH, null
counts, top prompts, causal checks, themselves vmapped over features),
`jax.lax.scan` over the permutations, memory bounded at 6,144 features x
1,000 permutations x 16 members. A host loop feeds member batches of one size
(the last padded), so a sweep of any size compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emosae_jax import checkpoint, data, saes

FORMAT_VERSION = 1
ANALYSIS_FILE = "analysis.json"
ARRAYS_FILE = "analysis_arrays.safetensors"
# Real-vs-shuffled AUROC this close counts as a tie (conservative; rank sums
# are exact in float32 up to a few thousand examples anyway).
_TIE_TOL = 1e-6
_SEL_TOL = 1e-6  # relative, for selectivity-threshold ties
_STAT_RANGE = (0.5, 1.0)  # histogram range of the max-AUROC statistic
_CAUSAL_BATCH = 64  # features per vmapped batch in the causal checks


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the analysis computes; the defaults are the command line's."""

  permutations: int = 1000
  fdr: float = 0.05
  min_support: int = 5
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
  thresholds: tuple[float, ...]
  n_top: int
  strengths: tuple[float, ...]
  n_causal: int
  hist_bins: int
  capacity: int  # non-zero activations kept per member (>= the most seen)


# --------------------------------------------------------------------------
# Per-feature statistics (pure, vmappable)


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


def _significance(spec: DeviceSpec, p, support, tested):
  q = benjamini_hochberg(p, tested)
  return q, (q <= spec.fdr) & tested & (support >= spec.min_support)


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


def _null_significance(spec: DeviceSpec, stat, emotion, support, tested):
  """Significant counts [P] and per emotion [P, K] under each shuffle.

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
  sig = ((at_least <= cutoff[:, None]) & tested
         & (support >= spec.min_support))
  by_emotion = jnp.stack([jnp.sum(sig & (emotion == e), 1)
                          for e in range(spec.n_labels)], 1)
  return jnp.sum(sig, 1), by_emotion


# --------------------------------------------------------------------------
# Causal checks with a linear probe


def _softmax_at(logits, e):
  return jax.nn.softmax(logits, -1)[..., e]


def _slope(s, y):
  s = s - s.mean()
  return jnp.sum(s * (y - y.mean(-1, keepdims=True)), -1) / jnp.sum(s * s)


def _causal_one(spec: DeviceSpec, base_logits, labels, steer_logits,
                steer_labels, rand_u, a, u, e, typical, norm):
  """Ablation and steering effects of one feature on the probe.

  base_logits: Float[N, K] probe logits of the prompts, labels: Int[N];
  steer_logits, steer_labels: the same for the rows the steering check uses
  (a fixed subset when N is large); a: Float[N] activations; u: Float[K]
  probe-logit change per unit activation (W_dec[f] @ W_probe); e: the
  feature's emotion; typical: its typical activation; norm:
  |typical * W_dec[f]|; rand_u: Float[R, K] probe logits of unit random
  directions.
  """
  own = (labels == e).astype(jnp.float32)
  other = 1.0 - own
  p_base = _softmax_at(base_logits, e)
  drop = p_base - _softmax_at(base_logits - a[:, None] * u[None], e)
  own_drop = jnp.sum(drop * own) / jnp.sum(own)
  other_drop = jnp.sum(drop * other) / jnp.sum(other)
  s = jnp.asarray(spec.strengths, jnp.float32)
  other = (steer_labels != e).astype(jnp.float32)
  steered = steer_logits[None] + (s * typical)[:, None, None] * u  # [S,N,K]
  dose = jnp.sum(_softmax_at(steered, e) * other, -1) / jnp.sum(other)
  rand = (steer_logits[None, None] + (s * norm)[:, None, None, None]
          * rand_u[None, :, None, :])  # [S, R, N, K]
  dose_random = jnp.sum(_softmax_at(rand, e).mean(1) * other, -1) / jnp.sum(
      other)
  return {"ablation_own": own_drop, "ablation_other": other_drop,
          "dose": dose, "dose_random": dose_random,
          "slope": _slope(s, dose), "slope_random": _slope(s, dose_random)}


def _n_causal(requested: int, m: int) -> int:
  # A multiple of the batch when above it, so lax.map needs no remainder.
  n = min(requested, m)
  return n if n <= _CAUSAL_BATCH else n // _CAUSAL_BATCH * _CAUSAL_BATCH


# --------------------------------------------------------------------------
# One batch of members


def _prepare(spec: DeviceSpec, x, labels, n_pos, params):
  """Per member: activations, the ranked non-zero entries, real statistics."""
  n = x.shape[0]
  m = spec.sae.d_sae
  acts = saes.encode(spec.sae, params, x)  # [N, m]
  rows, cols, values, valid = sparse_entries(acts, spec.capacity)
  rows, cols, offset, valid, zero_rank = entry_rank_offsets(
      rows, cols, values, valid, n, m)
  fires = jax.ops.segment_sum(valid.astype(jnp.float32), cols,
                              num_segments=m)
  return {"acts": acts, "rows": rows, "cols": cols, "valid": valid,
          "weights": jnp.stack([valid.astype(jnp.float32), offset], -1),
          "zero_rank": zero_rank, "fires": fires, "live": fires > 0,
          "tested": fires >= spec.min_support}


def _finish(spec: DeviceSpec, n_perm, x, labels, n_pos, probe_w, probe_b,
            random_dirs, steer_rows, params, prep, real, null):
  """Per member: p-values, BH, null counts, typical activation, top
  prompts and causal checks. null: [P, ...] arrays of this member."""
  k = spec.n_labels
  acts = prep["acts"]
  onehot = jax.nn.one_hot(labels, k, axis=0, dtype=jnp.float32)
  mean_activation = (onehot @ acts) / n_pos[:, None]
  exceed = jnp.sum(null["statistic"] >= real["statistic"] - _TIE_TOL, 0)
  p_value = (1.0 + exceed) / (n_perm + 1.0)
  q_value, significant = _significance(spec, p_value, real["support"],
                                       prep["tested"])
  null_sig, null_sig_by_emotion = _null_significance(
      spec, null["statistic"], null["emotion"], null["support"],
      prep["tested"])

  emotion = real["emotion"]
  own_rate = jnp.take_along_axis(real["rate"], emotion[None], 0)[0]
  own_mean = jnp.take_along_axis(mean_activation, emotion[None], 0)[0]
  overall = jnp.sum(acts, 0) / jnp.maximum(prep["fires"], 1.0)
  typical = jnp.where(own_rate > 0, own_mean / jnp.maximum(own_rate, 1e-30),
                      overall)
  top_values, top_index = jax.lax.top_k(acts.T, min(spec.n_top, x.shape[0]))

  # Causal checks on the strongest candidates: lowest p, then highest AUROC.
  n_causal = _n_causal(spec.n_causal, spec.sae.d_sae)
  candidates = jnp.lexsort((-real["statistic"], p_value))[:n_causal]
  w_dec = params["W_dec"][candidates]
  base_logits = x @ probe_w + probe_b
  rand_u = random_dirs @ probe_w
  causal = jax.lax.map(
      lambda args: _causal_one(spec, base_logits, labels,
                               base_logits[steer_rows], labels[steer_rows],
                               rand_u, *args),
      (acts[:, candidates].T, w_dec @ probe_w, emotion[candidates],
       typical[candidates],
       typical[candidates] * jnp.linalg.norm(w_dec, axis=1)),
      batch_size=min(n_causal, _CAUSAL_BATCH))
  return {
      "rate": real["rate"], "mean_activation": mean_activation,
      "auroc": real["auroc"], "selectivity": real["selectivity"],
      "statistic": real["statistic"], "emotion": emotion,
      "support": real["support"], "fires": prep["fires"],
      "typical_activation": typical, "p_value": p_value,
      "q_value": q_value, "significant": significant,
      "tested": prep["tested"],
      "selective_counts": real["selective_counts"],
      "null_selective_counts": null["selective_counts"],  # [P, T]
      "significant_count": jnp.sum(significant),
      "significant_by_emotion": jnp.stack(
          [jnp.sum(significant & (emotion == e)) for e in range(k)]),
      "null_significant_count": null_sig,  # [P]
      "null_significant_by_emotion": null_sig_by_emotion,  # [P, K]
      "selectivity_hist": real["selectivity_hist"],
      "null_selectivity_hist": null["selectivity_hist"].sum(0) / n_perm,
      "statistic_hist": real["statistic_hist"],
      "null_statistic_hist": null["statistic_hist"].sum(0) / n_perm,
      "top_index": top_index, "top_value": top_values,
      "causal_features": candidates, **causal,
  }


@functools.partial(jax.jit, static_argnums=0)
def analyze_members(spec: DeviceSpec, params, x, labels, perms, probe_w,
                    probe_b, random_dirs, steer_rows):
  """A batch of members: params have a leading member axis [B, ...].

  x: Float[N, d] normalised embeddings of the labelled rows; labels: Int[N]
  in [0, K); perms: Int[P, N] (labels[perms[i]] is shuffle i); probe_w:
  Float[d, K], probe_b: Float[K]; random_dirs: Float[R, d] unit rows;
  steer_rows: Int[S] the rows the steering check runs on.
  Returns a dict of arrays with a leading [B] axis (see the module doc).
  """
  n, n_perm = x.shape[0], perms.shape[0]
  n_pos = jnp.zeros(spec.n_labels, jnp.float32).at[labels].add(1.0)
  prep = jax.vmap(functools.partial(_prepare, spec, x, labels, n_pos))(params)
  member_stats = jax.vmap(functools.partial(_stats, spec, n_pos=n_pos, n=n))

  def labelling(perm):
    sums = _emotion_sums(spec, labels[perm][prep["rows"]], prep["cols"],
                         prep["weights"])
    return member_stats(sums[..., 0], sums[..., 1],
                        zero_rank=prep["zero_rank"], live=prep["live"])

  real = labelling(jnp.arange(n))

  def shuffle(carry, perm):
    out = labelling(perm)
    for key in ("rate", "auroc", "selectivity"):
      del out[key]  # [K, m] per shuffle is not needed and would not fit
    return carry, out

  _, null = jax.lax.scan(shuffle, None, perms)  # [P, B, ...]
  null = jax.tree.map(lambda v: jnp.moveaxis(v, 0, 1), null)
  finish = functools.partial(_finish, spec, n_perm, x, labels, n_pos,
                             probe_w, probe_b, random_dirs, steer_rows)
  return jax.vmap(finish)(params, prep, real, null)


@functools.partial(jax.jit, static_argnums=0)
def _nonzero_counts(sae: saes.SAESpec, params, x):
  """Int[B]: non-zero activations of each member on x."""
  return jax.vmap(lambda p: jnp.sum(saes.encode(sae, p, x) != 0))(params)


def run_members(spec: DeviceSpec, member_batch: int, params: dict, x,
                labels, perms, probe_w, probe_b, random_dirs, steer_rows,
                progress: bool = False) -> dict[str, np.ndarray]:
  """All members [M, ...], `member_batch` at a time (the last batch padded
  with copies, so every call reuses one compiled program)."""
  n_members = int(params["W_dec"].shape[0])
  args = [jnp.asarray(a) for a in (x, labels, perms, probe_w, probe_b,
                                   random_dirs, steer_rows)]
  batches = []
  for start in range(0, n_members, member_batch):
    index = np.minimum(np.arange(start, start + member_batch), n_members - 1)
    batches.append((start, {k: jnp.asarray(v[index])
                            for k, v in params.items()}))
  if spec.capacity == 0:  # room for the most non-zeros of any member
    most = max(int(jnp.max(_nonzero_counts(spec.sae, b, args[0])))
               for _, b in batches)
    spec = dataclasses.replace(spec, capacity=entry_capacity(most))
  chunks = []
  for start, batch in batches:
    out = jax.device_get(analyze_members(spec, batch, *args))
    keep = min(member_batch, n_members - start)
    chunks.append({k: np.asarray(v)[:keep] for k, v in out.items()})
    if progress:
      print(f"analysed members {start + keep}/{n_members}", flush=True)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def entry_capacity(most: int) -> int:
  """A power of two >= most, so similar runs share one compiled program."""
  return 1 << max(int(most) - 1, 1).bit_length()


# --------------------------------------------------------------------------
# Permutations, probe, random directions


def group_ids(groups: list[str]) -> np.ndarray:
  """Int[N] ids of the group strings (order of first sorted appearance)."""
  _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str),
                         return_inverse=True)
  return inverse.astype(np.int32)


def label_permutations(seed: int, n_perm: int, groups: np.ndarray | None,
                       n: int) -> np.ndarray:
  """Int[P, N]: P label shuffles of n rows (labels[perm] is a shuffle), each
  mapping rows only within their group when `groups` is given."""
  g = np.zeros(n, np.int32) if groups is None else np.asarray(groups,
                                                               np.int32)
  by_group = np.argsort(g, kind="stable")
  rng = np.random.default_rng(seed)
  perms = np.empty((n_perm, n), np.int32)
  for i in range(n_perm):
    # Rows sorted by (group, random key): position j of `order` is a random
    # row of the same group as position j of `by_group`.
    order = np.lexsort((rng.random(n), g))
    perms[i, by_group] = order
  return perms


def fit_probe(x: np.ndarray, labels: np.ndarray, n_labels: int,
              groups: np.ndarray | None = None) -> dict:
  """Multinomial logistic regression on x [N, d]; W [d, K], b [K] and its
  3-fold cross-validated accuracy (folds by group when there are groups)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GroupKFold, StratifiedKFold

  def fit(xs, ys):
    return LogisticRegression(C=1.0, max_iter=2000).fit(xs, ys)

  n_groups = len(np.unique(groups)) if groups is not None else 0
  if n_groups >= 3:
    folds, how = GroupKFold(3).split(x, labels, groups), "3-fold by group"
  else:
    folds = StratifiedKFold(3, shuffle=True, random_state=0).split(x, labels)
    how = "3-fold stratified"
  scores = []
  for tr, te in folds:
    if len(np.unique(labels[tr])) == n_labels:
      scores.append(float(fit(x[tr], labels[tr]).score(x[te], labels[te])))
  model = fit(x, labels)
  w, b = model.coef_, model.intercept_
  if n_labels == 2:  # sklearn keeps one logit for two classes
    w, b = np.stack([-w[0] / 2, w[0] / 2]), np.array([-b[0] / 2, b[0] / 2])
  return {"w": np.asarray(w.T, np.float32), "b": np.asarray(b, np.float32),
          "accuracy_train": float(model.score(x, labels)),
          "accuracy_cv": float(np.mean(scores)) if scores else None,
          "cv": how}


def steering_rows(seed: int, n: int, most: int) -> np.ndarray:
  """Int[min(n, most)]: the rows of the steering check, a fixed random
  subset when n is large (its cost is strengths x directions x rows)."""
  if n <= most:
    return np.arange(n, dtype=np.int32)
  rng = np.random.default_rng(seed + 2)
  return np.sort(rng.choice(n, most, replace=False)).astype(np.int32)


def random_directions(seed: int, n: int, d: int) -> np.ndarray:
  g = jax.random.normal(jax.random.PRNGKey(seed + 1), (n, d))
  return np.asarray(g / jnp.linalg.norm(g, axis=1, keepdims=True))


def default_member_batch(n_members, n, m, n_perm, budget_gb) -> int:
  """Members per vmapped batch so the working set stays near the budget;
  batches are made even so the padded last batch wastes little."""
  per_member = 4 * (4 * n * m + 6 * n_perm * m)  # bytes, rough
  most = int(max(1, min(n_members, budget_gb * 2**30 // per_member)))
  n_batches = -(-n_members // most)
  return -(-n_members // n_batches)


def device_spec(sae: saes.SAESpec, n_labels: int, settings: Settings,
                capacity: int = 0) -> DeviceSpec:
  """capacity 0: sized from the data when the analysis runs."""
  return DeviceSpec(
      sae=sae, n_labels=n_labels, fdr=float(settings.fdr),
      min_support=int(settings.min_support),
      thresholds=tuple(float(t) for t in settings.selectivity_thresholds),
      n_top=settings.n_top,
      strengths=tuple(float(s) for s in settings.strengths),
      n_causal=settings.n_causal, hist_bins=settings.hist_bins,
      capacity=capacity)


def compute(sae: saes.SAESpec, params: dict, x_norm: np.ndarray,
            labels: np.ndarray, n_labels: int, groups: np.ndarray | None,
            settings: Settings, progress: bool = False) -> tuple[dict, dict]:
  """Runs the device analysis on labelled rows; returns (arrays, extras).

  params: numpy dict with a leading member axis; x_norm: Float[N, d]
  normalised; labels: Int[N] in [0, K). arrays: numpy, leading [M] axis;
  extras: the probe, the permutation scheme.
  """
  n = x_norm.shape[0]
  n_members = int(params["W_dec"].shape[0])
  use_groups = (groups if settings.within_groups and groups is not None
                and len(np.unique(groups)) > 1 else None)
  perms = label_permutations(settings.seed, settings.permutations, use_groups,
                             n)
  moved = float(np.mean(labels[perms] != labels[None]))
  if moved == 0.0:
    raise data.DataError(
        "shuffling labels within template groups never changes a label (each"
        " group holds one emotion); pass --within_groups=false")
  probe = fit_probe(x_norm, labels, n_labels, groups)
  dirs = random_directions(settings.seed, settings.n_random, x_norm.shape[1])
  spec = device_spec(sae, n_labels, settings)
  member_batch = min(n_members, settings.member_batch or default_member_batch(
      n_members, n, sae.d_sae, settings.permutations,
      settings.memory_budget_gb))
  steer_rows = steering_rows(settings.seed, n, settings.steer_rows)
  arrays = run_members(spec, member_batch, params, x_norm,
                       np.asarray(labels, np.int32), perms, probe["w"],
                       probe["b"], dirs, steer_rows, progress=progress)
  extras = {
      "probe": {k: v for k, v in probe.items() if k not in ("w", "b")},
      "permutation": {
          "scheme": ("within groups" if use_groups is not None
                     else "all labelled rows"),
          "n_groups": int(len(np.unique(use_groups))) if use_groups
          is not None else 1,
          "labels_moved_fraction": moved},
      "member_batch": member_batch,
      "probe_weights": (probe["w"], probe["b"]), "random_dirs": dirs,
      "steer_rows": steer_rows,
  }
  return arrays, extras


# --------------------------------------------------------------------------
# Loading runs and sweeps


@dataclasses.dataclass
class Members:
  """The SAEs of a workdir: one run (M = 1) or the ok members of a sweep."""

  workdir: Path
  sae: saes.SAESpec
  params: dict[str, np.ndarray]  # leading member axis [M, ...]
  indices: list[int]  # member index in the sweep (0 for a run)
  seeds: list[int]
  overrides: list[dict]
  config: dict  # the (base) resolved config
  info: dict  # data_info.json
  is_sweep: bool


def _sae_spec(config: dict) -> saes.SAESpec:
  from emosae_jax.train_core import static_spec_from_config
  return static_spec_from_config(ml_collections.ConfigDict(config), 1).sae


def load_members(workdir: str | Path) -> Members:
  """Loads a training run or a sweep group (skipping failed members); the
  run layout and the member <-> row pairing belong to emosae_jax.runs."""
  from emosae_jax import runs
  run = runs.load_members(workdir)
  shapes = {(s.arch, s.d_sae) for s in map(_sae_spec, run.configs)}
  if len(shapes) > 1:
    raise data.DataError(f"{run.workdir}: members differ in architecture or "
                         f"width {sorted(shapes)}; analyse one group at a "
                         "time")
  return Members(run.workdir, _sae_spec(run.configs[0]), run.params,
                 run.indices, run.seeds, run.overrides, run.config, run.info,
                 run.is_sweep)


def load_data(members: Members, data_path: str | None = None
              ) -> data.EmbeddingSet:
  """The embedding set to analyse: --data, else what the run trained on."""
  config = members.config
  if data_path:
    es = data.load_embedding_set(data_path)
    es.meta["path"] = str(data_path)
  elif config.get("data", {}).get("synthetic"):
    from emosae_jax.prepare import load_config_data
    es = load_config_data(ml_collections.ConfigDict(config))[0]
  else:
    path = config.get("data", {}).get("path") or members.info.get("path")
    if not path:
      raise data.DataError(f"{members.workdir}: the run records no data "
                           "path; pass --data=PATH")
    es = data.load_embedding_set(path)
    es.meta["path"] = str(path)
  return es


def check_inputs(members: Members, es: data.EmbeddingSet,
                 min_support: int) -> None:
  """Raises DataError for data the analysis cannot use, naming the fix."""
  d_in, d_sae = members.params["W_enc"].shape[-2:]
  src = es.meta.get("path") or "the embedding set"
  if d_in != es.dim:
    raise data.DataError(
        f"checkpoint {members.workdir} has input dimension {d_in} but "
        f"{src} has dimension {es.dim}; pass the embeddings it was trained on")
  if d_sae != members.sae.d_sae or d_in != members.sae.d_in:
    raise data.DataError(
        f"checkpoint {members.workdir} has shape d_in={d_in}, d_sae={d_sae} "
        f"but its config says d_in={members.sae.d_in}, "
        f"d_sae={members.sae.d_sae}; the workdir is inconsistent")
  norm_dim = len(members.info["normalizer"]["mean"])
  if norm_dim != es.dim:
    raise data.DataError(f"{members.workdir}: normaliser has dimension "
                         f"{norm_dim}, embeddings {es.dim}")
  check_labels(es, min_support, src)


def check_labels(es: data.EmbeddingSet, min_support: int,
                 src: str = "embedding set") -> None:
  if min_support < 1:
    raise data.DataError(f"--min_support must be >= 1, got {min_support}")
  labelled = es.labels[es.labels >= 0]
  if labelled.size == 0:
    raise data.DataError(f"{src}: no labelled examples (every label is -1); "
                         "the analysis needs emotion labels")
  present = np.unique(labelled)
  if len(present) < 2:
    raise data.DataError(
        f"{src}: only one emotion ({es.label_names[present[0]]!r}) among the "
        "labelled examples; selectivity needs at least two emotions")
  counts = np.bincount(labelled, minlength=len(es.label_names))
  for name, c in zip(es.label_names, counts):
    if c < max(min_support, 1):
      raise data.DataError(
          f"{src}: emotion {name!r} has {c} labelled examples, fewer than "
          f"--min_support={min_support}; add prompts, lower --min_support, "
          "or drop that emotion from the label names")


# --------------------------------------------------------------------------
# Stability across members


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


# --------------------------------------------------------------------------
# Summary (analysis.json)


def count_entry(name: str, description: str, real, null) -> dict:
  """A count of selective features with its shuffled-label baseline."""
  null = np.asarray(null, np.float64)
  return {"name": name, "description": description, "real": int(real),
          "shuffled": {"mean": float(null.mean()), "min": int(null.min()),
                       "max": int(null.max()),
                       "p95": float(np.percentile(null, 95)),
                       "n_shuffles": int(null.size)}}


def member_counts(arrays: dict, i: int, label_names: list[str],
                  settings: Settings) -> list[dict]:
  out = []
  for t_i, t in enumerate(settings.selectivity_thresholds):
    out.append(count_entry(
        f"selectivity>={t:g}",
        f"reference rule: live features with max rate / mean rate >= {t:g}",
        arrays["selective_counts"][i, t_i],
        arrays["null_selective_counts"][i, :, t_i]))
  out.append(count_entry(
      "significant",
      f"permutation test, BH q <= {settings.fdr:g}, support >= "
      f"{settings.min_support}", arrays["significant_count"][i],
      arrays["null_significant_count"][i]))
  for e, name in enumerate(label_names):
    out.append(count_entry(
        f"significant/{name}", f"significant features whose emotion is "
        f"{name}", arrays["significant_by_emotion"][i, e],
        arrays["null_significant_by_emotion"][i, :, e]))
  return out


def _causal_of(arrays: dict, i: int, f: int) -> dict | None:
  where = np.flatnonzero(arrays["causal_features"][i] == f)
  if not where.size:
    return None
  c = int(where[0])
  pick = lambda k: arrays[k][i, c]
  return {"ablation_own": float(pick("ablation_own")),
          "ablation_other": float(pick("ablation_other")),
          "ablation_effect": float(pick("ablation_own")
                                   - pick("ablation_other")),
          "dose": pick("dose").tolist(),
          "dose_random": pick("dose_random").tolist(),
          "slope": float(pick("slope")),
          "slope_random": float(pick("slope_random"))}


def feature_records(arrays: dict, i: int, es_texts: list[str],
                    row_labels: np.ndarray, label_names: list[str],
                    stab: dict | None) -> list[dict]:
  """Details of member i's significant features, best first."""
  feats = np.flatnonzero(arrays["significant"][i])
  order = np.lexsort((-arrays["statistic"][i, feats],
                      arrays["p_value"][i, feats]))
  records = []
  for f in feats[order]:
    f = int(f)
    e = int(arrays["emotion"][i, f])
    top = [{"text": es_texts[r], "activation": float(v),
            "emotion": label_names[row_labels[r]]}
           for r, v in zip(arrays["top_index"][i, f],
                           arrays["top_value"][i, f]) if v > 0]
    st = (stab or {}).get(f, {})
    records.append({
        "feature": f, "emotion": label_names[e],
        "selectivity": float(arrays["selectivity"][i, f]),
        "auroc": float(arrays["auroc"][i, e, f]),
        "p_value": float(arrays["p_value"][i, f]),
        "q_value": float(arrays["q_value"][i, f]),
        "support": int(arrays["support"][i, f]),
        "rate": {n: float(arrays["rate"][i, k, f])
                 for k, n in enumerate(label_names)},
        "mean_activation": {n: float(arrays["mean_activation"][i, k, f])
                            for k, n in enumerate(label_names)},
        "typical_activation": float(arrays["typical_activation"][i, f]),
        "stability": st.get("stability"),
        "stability_significant": st.get("stability_significant"),
        "matches": st.get("matches", []),
        "causal": _causal_of(arrays, i, f),
        "top_prompts": top,
    })
  return records


@dataclasses.dataclass
class Result:
  """An analysis: the JSON summary plus the full per-feature arrays."""

  summary: dict
  arrays: dict[str, np.ndarray]  # leading member axis [M, ...]
  decoders: np.ndarray  # [M, m, d] normalised units


def summarize(members: Members, es: data.EmbeddingSet, arrays: dict,
              extras: dict, settings: Settings, labelled: np.ndarray) -> dict:
  """Builds analysis.json from the device arrays."""
  names = es.label_names
  row_labels = es.labels[labelled]
  texts = [es.texts[r] for r in labelled]
  stab = (stability(members.params["W_dec"], arrays["significant"],
                    arrays["emotion"], settings.stability_threshold)
          if len(members.indices) > 1 else [None] * len(members.indices))
  member_out = []
  for i, index in enumerate(members.indices):
    feats = feature_records(arrays, i, texts, row_labels, names, stab[i])
    stable = [r["stability"] for r in feats if r["stability"] is not None]
    member_out.append({
        "index": index, "seed": members.seeds[i],
        "overrides": members.overrides[i],
        "n_features": int(members.sae.d_sae),
        "n_live": int(np.sum(arrays["fires"][i] > 0)),
        "n_tested": int(np.sum(arrays["tested"][i])),
        "counts": member_counts(arrays, i, names, settings),
        "fraction_reappearing": (
            float(np.mean([s >= 0.5 for s in stable])) if stable else None),
        "features": feats,
    })
  counts = np.bincount(row_labels, minlength=len(names))
  settings_dict = dataclasses.asdict(settings)
  return {
      "format_version": FORMAT_VERSION,
      "source": {"workdir": str(members.workdir.resolve()),
                 "is_sweep": members.is_sweep,
                 "arch": members.sae.arch, "d_in": members.sae.d_in,
                 "d_sae": members.sae.d_sae,
                 "trained_data_hash": members.info.get("content_hash"),
                 "data_path": es.meta.get("path", ""),
                 "data_hash": es.meta.get("content_hash"),
                 "same_data_as_training": es.meta.get("content_hash")
                 == members.info.get("content_hash"),
                 "encoder": es.meta.get("encoder")
                 or members.info.get("encoder")},
      "settings": settings_dict,
      "data": {"n_labelled": int(len(labelled)),
               "n_unlabelled": int(len(es) - len(labelled)),
               "label_names": names,
               "examples_per_emotion": dict(zip(names, counts.tolist()))},
      "probe": extras["probe"],
      "permutation": extras["permutation"],
      "histograms": {
          "selectivity_edges": np.linspace(1, len(names),
                                           settings.hist_bins + 1).tolist(),
          "statistic_edges": np.linspace(*_STAT_RANGE,
                                         settings.hist_bins + 1).tolist(),
          "members": [{k: arrays[k][i].tolist() for k in (
              "selectivity_hist", "null_selectivity_hist", "statistic_hist",
              "null_statistic_hist")} for i in range(len(members.indices))]},
      "members": member_out,
  }


def analyze(workdir: str | Path, data_path: str | None = None,
            settings: Settings = Settings(), progress: bool = False
            ) -> Result:
  """The whole analysis of a training run or sweep workdir."""
  members = load_members(workdir)
  es = load_data(members, data_path)
  check_inputs(members, es, settings.min_support)
  if settings.permutations < 1:
    raise ValueError(f"--permutations must be >= 1, got "
                     f"{settings.permutations}")
  if not 0 < settings.fdr < 1:
    raise ValueError(f"--fdr must lie in (0, 1), got {settings.fdr}")
  labelled = np.flatnonzero(es.labels >= 0)
  normalizer = checkpoint.normalizer_of(members.info)
  x = normalizer.apply(es.embeddings[labelled]).astype(np.float32)
  groups = group_ids([es.groups[r] for r in labelled])
  arrays, extras = compute(members.sae, members.params, x,
                           es.labels[labelled], len(es.label_names), groups,
                           settings, progress)
  summary = summarize(members, es, arrays, extras, settings, labelled)
  return Result(summary, arrays, members.params["W_dec"])


def write(result: Result, out: str | Path, report: bool = True) -> Path:
  """Writes analysis.json, the arrays, the figures and report.html."""
  from safetensors.numpy import save_file

  from emosae_jax import analysis_figures, report as report_lib
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  tensors = {k: np.ascontiguousarray(v) for k, v in result.arrays.items()
             if v.dtype != bool}
  tensors.update({k: v.astype(np.uint8) for k, v in result.arrays.items()
                  if v.dtype == bool})
  data.atomic_write(out / ARRAYS_FILE, lambda tmp: save_file(tensors, tmp))
  figures = analysis_figures.write_all(result, out)
  result.summary["figures"] = {k: p.name for k, p in figures.items()}
  data.atomic_write_json(out / ANALYSIS_FILE, result.summary)
  if report:
    report_lib.write_analysis_report(result.summary, figures,
                                     out / "report.html")
  return out / ANALYSIS_FILE


def load_arrays(directory: str | Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  path = Path(directory) / ARRAYS_FILE
  if not path.exists():
    raise data.DataError(f"{directory}: no {ARRAYS_FILE}; run "
                         "scripts/analyze.py first")
  return load_file(str(path))


def load_summary(directory: str | Path) -> dict[str, Any]:
  path = Path(directory) / ANALYSIS_FILE
  if not path.exists():
    raise data.DataError(f"{directory}: no {ANALYSIS_FILE}; run "
                         f"scripts/analyze.py --workdir={directory} first")
  return json.loads(path.read_text())
