"""The device work: one jitted program per batch of members (`analyze_members`),
label permutations, and the host loop that feeds it member batches."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from emosae_jax import data, saes
from emosae_jax.analysis.causal import (_CAUSAL_BATCH, _causal_one,
                                        _n_causal, fit_probe,
                                        random_directions, steering_rows)
from emosae_jax.analysis.kernels import (
    _TIE_TOL, _emotion_sums, _null_significance, _significance, _stats,
    entry_rank_offsets, sparse_entries)
from emosae_jax.analysis.settings import DeviceSpec, Settings


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
            random_dirs, steer_rows, params, reference, prep, real, null):
  """Per member: p-values, BH, null counts, typical activation, top
  prompts and causal checks. null: [P, ...] arrays of this member;
  reference: see `_null_significance`."""
  k = spec.n_labels
  acts = prep["acts"]
  onehot = jax.nn.one_hot(labels, k, axis=0, dtype=jnp.float32)
  mean_activation = (onehot @ acts) / n_pos[:, None]
  exceed = jnp.sum(null["statistic"] >= real["statistic"] - _TIE_TOL, 0)
  p_value = (1.0 + exceed) / (n_perm + 1.0)
  q_value, significant, bh_significant = _significance(
      spec, p_value, real["support"], n_pos[real["emotion"]], prep["tested"])
  nulls = _null_significance(spec, null["statistic"], null["emotion"],
                             null["support"], n_pos, prep["tested"],
                             reference)
  same = real["emotion"] == reference["emotion"]
  holds = significant & reference["significant"] & same
  bh_holds = bh_significant & reference["bh_significant"] & same

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
  causal = {}
  if n_causal:  # 0: none (a validation set needs no causal checks)
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
      "bh_significant": bh_significant, "tested": prep["tested"],
      "selective_counts": real["selective_counts"],
      "null_selective_counts": null["selective_counts"],  # [P, T]
      "significant_count": jnp.sum(significant),
      "significant_by_emotion": jnp.stack(
          [jnp.sum(significant & (emotion == e)) for e in range(k)]),
      "bh_significant_count": jnp.sum(bh_significant),
      "null_significant_count": nulls["significant"],  # [P]
      "null_significant_by_emotion": nulls["by_emotion"],  # [P, K]
      "null_bh_significant_count": nulls["bh_significant"],  # [P]
      "holds": holds, "holds_count": jnp.sum(holds),
      "bh_holds_count": jnp.sum(bh_holds),
      "null_holds_count": nulls["holds"],  # [P]
      "null_holds_broad_count": nulls["holds_broad"],  # [P]
      "null_bh_holds_count": nulls["bh_holds"],  # [P]
      "selectivity_hist": real["selectivity_hist"],
      "null_selectivity_hist": null["selectivity_hist"].sum(0) / n_perm,
      "statistic_hist": real["statistic_hist"],
      "null_statistic_hist": null["statistic_hist"].sum(0) / n_perm,
      "top_index": top_index, "top_value": top_values,
      "causal_features": candidates, **causal,
  }


@functools.partial(jax.jit, static_argnums=0)
def analyze_members(spec: DeviceSpec, params, x, labels, perms, probe_w,
                    probe_b, random_dirs, steer_rows, reference):
  """A batch of members: params have a leading member axis [B, ...].

  x: Float[N, d] normalised embeddings of the labelled rows; labels: Int[N]
  in [0, K); perms: Int[P, N] (labels[perms[i]] is shuffle i); probe_w:
  Float[d, K], probe_b: Float[K]; random_dirs: Float[R, d] unit rows;
  steer_rows: Int[S] the rows the steering check runs on; reference:
  {"significant": Bool[B, m], "bh_significant": Bool[B, m], "emotion":
  Int[B, m], "broad": Bool[B, m]} the features (significant by the full
  rule and by BH alone, their emotions in these labels, their breadth tier)
  whose holding is counted, real and shuffled.
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
  return jax.vmap(finish)(params, reference, prep, real, null)


@functools.partial(jax.jit, static_argnums=0)
def _nonzero_counts(sae: saes.SAESpec, params, x):
  """Int[B]: non-zero activations of each member on x."""
  return jax.vmap(lambda p: jnp.sum(saes.encode(sae, p, x) != 0))(params)


def run_members(spec: DeviceSpec, member_batch: int, params: dict, x,
                labels, perms, probe_w, probe_b, random_dirs, steer_rows,
                progress: bool = False, reference: dict | None = None
                ) -> dict[str, np.ndarray]:
  """All members [M, ...], `member_batch` at a time (the last batch padded
  with copies, so every call reuses one compiled program). reference: see
  `analyze_members` ([M, m] arrays; None: no reference)."""
  n_members, m = int(params["W_dec"].shape[0]), int(params["W_dec"].shape[1])
  if reference is None:
    reference = {"significant": np.zeros((n_members, m), bool),
                 "bh_significant": np.zeros((n_members, m), bool),
                 "emotion": np.full((n_members, m), -1, np.int32),
                 "broad": np.zeros((n_members, m), bool)}
  args = [jnp.asarray(a) for a in (x, labels, perms, probe_w, probe_b,
                                   random_dirs, steer_rows)]
  batches = []
  for start in range(0, n_members, member_batch):
    index = np.minimum(np.arange(start, start + member_batch), n_members - 1)
    batches.append((start, {k: jnp.asarray(v[index])
                            for k, v in params.items()},
                    {k: jnp.asarray(v[index]) for k, v in reference.items()}))
  if spec.capacity == 0:  # room for the most non-zeros of any member
    most = max(int(jnp.max(_nonzero_counts(spec.sae, b, args[0])))
               for _, b, _ in batches)
    spec = dataclasses.replace(spec, capacity=entry_capacity(most))
  chunks = []
  # disable=None: tqdm stays silent when stderr is not a terminal (logs).
  bar = tqdm(total=n_members, unit="member", desc="analysis",
             disable=None if progress else True)
  for start, batch, ref in batches:
    out = jax.device_get(analyze_members(spec, batch, *args, ref))
    keep = min(member_batch, n_members - start)
    chunks.append({k: np.asarray(v)[:keep] for k, v in out.items()})
    bar.update(keep)
  bar.close()
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def entry_capacity(most: int) -> int:
  """A power of two >= most, so similar runs share one compiled program."""
  return 1 << max(int(most) - 1, 1).bit_length()


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
      min_support_fraction=float(settings.min_support_fraction),
      thresholds=tuple(float(t) for t in settings.selectivity_thresholds),
      n_top=settings.n_top,
      strengths=tuple(float(s) for s in settings.strengths),
      n_causal=settings.n_causal, hist_bins=settings.hist_bins,
      capacity=capacity)


def compute(sae: saes.SAESpec, params: dict, x_norm: np.ndarray,
            labels: np.ndarray, n_labels: int, groups: np.ndarray | None,
            settings: Settings, progress: bool = False,
            reference: dict | None = None,
            fall_back_to_all_rows: bool = False) -> tuple[dict, dict]:
  """Runs the device analysis on labelled rows; returns (arrays, extras).

  params: numpy dict with a leading member axis; x_norm: Float[N, d]
  normalised; labels: Int[N] in [0, K). arrays: numpy, leading [M] axis;
  extras: the probe, the permutation scheme. reference: see
  `analyze_members`. fall_back_to_all_rows: when shuffling within groups
  would move no label (each group one emotion, e.g. one caption per group),
  shuffle all rows instead of failing (for validation sets).
  """
  n = x_norm.shape[0]
  n_members = int(params["W_dec"].shape[0])
  use_groups = (groups if settings.within_groups and groups is not None
                and len(np.unique(groups)) > 1 else None)
  perms = label_permutations(settings.seed, settings.permutations, use_groups,
                             n)
  moved = float(np.mean(labels[perms] != labels[None]))
  if moved == 0.0 and use_groups is not None and fall_back_to_all_rows:
    use_groups = None
    perms = label_permutations(settings.seed, settings.permutations, None, n)
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
                       probe["b"], dirs, steer_rows, progress=progress,
                       reference=reference)
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


