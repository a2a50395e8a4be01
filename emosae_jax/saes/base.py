"""Shared SAE machinery: the Flax module, parameter layout, encode/decode.

Parameters (a plain dict pytree, so sweeps can stack and vmap them):
  W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
  plus what an architecture adds (jumprelu: log_threshold [d_sae];
  batchtopk: threshold [] for inference).

Every architecture shares the affine maps
  pre = (x - b_dec) @ W_enc + b_enc          (b_dec is the pre-encoder bias)
  x_hat = acts @ W_dec + b_dec
and differs only in `activation` (pre -> acts) and its loss terms.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class SAESpec:
  """Static (shape-determining) description of one SAE; hashable for jit."""

  arch: str
  d_in: int
  d_sae: int
  k: int = 32  # topk / batchtopk: active latents per example
  k_aux: int = 256  # topk / batchtopk: latents used by the AuxK loss
  decoder_norm: str = "unit"  # relu_l1: "unit" rows, "weighted" L1, "inputs"
  bandwidth: float = 1e-3  # jumprelu: STE kernel width
  threshold_init: float = 1e-3  # jumprelu: initial threshold
  init: str = "tied"  # "tied" or "reference" (see SparseAutoencoder)
  init_scale: float = 1.0  # tied: initial decoder row norm
  learn_pre_bias: bool = True  # False: b_dec stays at its initial 0
  # relu_l1: a learned decoder bias b_out [d_in] added to x_hat besides b_dec
  # (the reference system's decoder Linear has one beside its fixed
  # pre-bias; without it its training blew up, see configs/sae.py)
  output_bias: bool = False
  sparsity_over_latents: str = "sum"  # relu_l1 L1: "sum" or "mean"
  # topk / batchtopk: how the k largest are found (see uses_counting)
  top_k_method: str = "auto"


TOP_K_METHODS = ("auto", "top_k", "count")


def uses_counting(spec: SAESpec) -> bool:
  """Whether TopK / BatchTopK (and AuxK) find their k largest entries by
  kth_largest's counting passes instead of XLA's top-k ("auto": on
  accelerators, except TopK under full-float32 matmuls).

  XLA's GPU top-k sorts whole rows for k > 16: 2.1 ms for k=32 at
  4096 x 6144 on an H200, where counting took 0.5 ms. But TopK's top-k path
  also decodes from its k latents (sparse_decode), which pays for the sort
  when matmuls run in float32 (H200 steps/s, top-k / counting: TopK 224 /
  184 in float32, 264 / 466 in TF32; BatchTopK 140 / 182 and 265 / 449).
  On CPU the top-k paths were 1.1-2x faster at that size."""
  if spec.top_k_method != "auto":
    return spec.top_k_method == "count"
  if jax.default_backend() == "cpu":
    return False
  float32 = str(jax.config.jax_default_matmul_precision).lower() in (
      "highest", "float32")
  return not (spec.arch == "topk" and float32)


class SparseAutoencoder(nn.Module):
  """Flax module holding the shared parameters; init gives the param dict.

  init="tied": decoder rows of norm `init_scale` and the encoder as their
  transpose, which puts every latent on a data direction from step 0; a
  small scale (SAELens and Anthropic use 0.1) keeps the first
  reconstructions small: at 1.0 a 768 -> 6144 SAE starts with half its
  latents firing at full size and an FVU near 10.
  init="reference": the reference system's, encoder Kaiming-uniform x 0.1
  and the decoder orthogonal with each input dimension's weights over the
  latents (a column here) at unit norm: its F.normalize(dim=1) of torch's
  [d_in, d_sae] weight. Latent directions then have norm ~sqrt(d_in/d_sae).
  Biases start at 0.
  """

  spec: SAESpec
  extra_params: tuple[tuple[str, Callable[..., Any]], ...] = ()

  @nn.compact
  def __call__(self, x):
    d, m = self.spec.d_in, self.spec.d_sae

    def unit_rows(w):
      return w / jnp.linalg.norm(w, axis=1, keepdims=True)

    def unit_columns(w):
      return w / jnp.linalg.norm(w, axis=0, keepdims=True)

    if self.spec.init == "reference":
      w_dec = self.param("W_dec", lambda key, shape: unit_columns(
          nn.initializers.orthogonal()(key, shape)), (m, d))
      w_enc = self.param("W_enc", lambda key, shape: 0.1 * (
          nn.initializers.he_uniform()(key, shape)), (d, m))
    else:
      w_dec = self.param("W_dec", lambda key, shape: self.spec.init_scale
                         * unit_rows(jax.random.normal(key, shape)), (m, d))
      w_enc = self.param("W_enc", lambda key, shape: w_dec.T, (d, m))
    b_enc = self.param("b_enc", nn.initializers.zeros, (m,))
    b_dec = self.param("b_dec", nn.initializers.zeros, (d,))
    for name, init in self.extra_params:
      self.param(name, init)
    return (x - b_dec) @ w_enc + b_enc


def init_params(spec: SAESpec, extra_params, rng: jax.Array) -> Params:
  module = SparseAutoencoder(spec, tuple(extra_params))
  variables = module.init(rng, jnp.zeros((1, spec.d_in)))
  return dict(variables["params"])


# At and below this many rows (where the step is bound by passes over the
# weights, not by matmul FLOPs) the decoder and encoder backward passes are
# arranged to save passes over the weights (below).
SMALL_BATCH = 64


# Factored weight gradients (train_core.train_step with fused_adam's outer
# kernel). At small batch a weight's gradient is a sum of `batch` outer
# products, g = a^T b; the kernel computes it block by block inside Adam's
# pass, which saves the gradient matmul's write of g and Adam's read of it
# (2 of 9 passes over memory per weight). A params dict that carries
# FACTOR_TAPS (zero arrays, factor_taps) gets the factors as the taps'
# gradients, from the encoder and decoder backward rules below, and no
# gradient for W_enc and W_dec themselves. Only for SAEs whose W_enc and
# W_dec enter the loss through these two affine maps alone
# (saes.factored_weight_grads says which).
FACTOR_TAPS = "factor_taps"


def factor_taps(spec: SAESpec, batch: int) -> dict:
  """Zero taps whose gradients are {weight: (a, b)}, its gradient a^T b:
  W_enc's (x - b_dec [batch, d_in], d pre [batch, d_sae]) and W_dec's
  (acts [batch, d_sae], d x_hat [batch, d_in])."""
  zeros = lambda d: jnp.zeros((batch, d), jnp.float32)  # noqa: E731
  return {"W_enc": (zeros(spec.d_in), zeros(spec.d_sae)),
          "W_dec": (zeros(spec.d_sae), zeros(spec.d_in))}


def pre_activation(params: Params, x: jax.Array) -> jax.Array:
  """Float[batch d_in] -> Float[batch d_sae]."""
  args = (x, params["b_dec"], params["W_enc"], params["b_enc"])
  if FACTOR_TAPS in params:
    return _encoder_affine_tapped(*args, params[FACTOR_TAPS]["W_enc"])
  return _encoder_affine(*args)


@jax.custom_vjp
def _encoder_affine(x, b_dec, w_enc, b_enc):
  return (x - b_dec) @ w_enc + b_enc


def _encoder_affine_fwd(x, b_dec, w_enc, b_enc):
  centred = x - b_dec
  return centred @ w_enc + b_enc, (centred, w_enc)


def _encoder_affine_bwd(residuals, d_pre):
  d_x, d_b_dec, d_b_enc = _encoder_input_grads(residuals, d_pre)
  return (d_x, d_b_dec, _encoder_weight_grad(residuals, d_pre), d_b_enc)


def _encoder_input_grads(residuals, d_pre):
  # Autodiff would get b_dec's gradient as -sum_rows(d_pre @ W_enc.T): a
  # [batch, d_sae] x [d_sae, d_in] matmul, a sixth full-size matmul per step
  # (a sixth of the FLOPs at batch 4096, a full extra read of W_enc at
  # batch 16). Summing over the batch first makes it a matrix-vector
  # product. The input's gradient is still there for callers that want it;
  # XLA drops it when, as in training, nothing uses it.
  _, w_enc = residuals
  d_b_enc = jnp.sum(d_pre.reshape(-1, d_pre.shape[-1]), axis=0)
  return d_pre @ w_enc.T, -(w_enc @ d_b_enc), d_b_enc


def _encoder_weight_grad(residuals, d_pre):
  centred, _ = residuals
  rows = d_pre.reshape(-1, d_pre.shape[-1])  # any leading batch shape
  centred_t = centred.reshape(-1, centred.shape[-1]).T
  if rows.shape[0] <= SMALL_BATCH:
    # [d_in, batch], a few KB: materialised (the barrier keeps XLA from
    # folding the transpose into the matmul) it goes to YNNPACK's matmul,
    # which ran this [d_in x batch x d_sae] product 1.3x faster at batch 16
    # x 768 -> 6144 than XLA's transposed-operand dot (2-core CPU), with
    # identical results.
    centred_t = jax.lax.optimization_barrier(centred_t)
  return centred_t @ rows


_encoder_affine.defvjp(_encoder_affine_fwd, _encoder_affine_bwd)


@jax.custom_vjp
def _encoder_affine_tapped(x, b_dec, w_enc, b_enc, tap):
  del tap
  return (x - b_dec) @ w_enc + b_enc


def _encoder_affine_tapped_fwd(x, b_dec, w_enc, b_enc, tap):
  del tap
  return _encoder_affine_fwd(x, b_dec, w_enc, b_enc)


def _encoder_affine_tapped_bwd(residuals, d_pre):
  # W_enc's gradient as its factors, on the tap (FACTOR_TAPS)
  d_x, d_b_dec, d_b_enc = _encoder_input_grads(residuals, d_pre)
  return d_x, d_b_dec, None, d_b_enc, (residuals[0], d_pre)


_encoder_affine_tapped.defvjp(_encoder_affine_tapped_fwd,
                              _encoder_affine_tapped_bwd)


def decode(params: Params, acts: jax.Array) -> jax.Array:
  """Float[batch d_sae] -> Float[batch d_in]."""
  bias = decoder_bias(params)
  if FACTOR_TAPS in params:
    return _decode_tapped(acts, params["W_dec"], bias,
                          params[FACTOR_TAPS]["W_dec"])
  if acts.ndim == 2 and acts.shape[0] <= SMALL_BATCH:
    return _decode_small_batch(acts, params["W_dec"], bias)
  return acts @ params["W_dec"] + bias


def decoder_bias(params: Params) -> jax.Array:
  """What decode adds to acts @ W_dec: b_dec, plus b_out where the SAE has
  one (SAESpec.output_bias)."""
  if "b_out" in params:
    return params["b_dec"] + params["b_out"]
  return params["b_dec"]


@jax.custom_vjp
def _decode_small_batch(acts, w_dec, b_dec):
  return acts @ w_dec + b_dec


def _decode_small_batch_fwd(acts, w_dec, b_dec):
  return acts @ w_dec + b_dec, (acts, w_dec)


def _decode_small_batch_bwd(residuals, g):
  # Autodiff's gradients, with three changes. (1) W_dec's gradient waits for
  # the gradient into the latents: otherwise nothing orders that matmul's
  # read of W_dec before the optimizer's in-place update of W_dec, and XLA
  # copies W_dec (two full passes over it) every step to be safe. The wait
  # is a data dependency that changes no value: acts >= 0 plus a zero
  # (0 x a finite number). (2) The gradient into the latents is computed
  # as (W_dec @ g.T).T, both transposes materialised (the barriers keep XLA
  # from folding them into the matmul): W_dec is then the left operand in
  # its own layout, which YNNPACK ran 1.9x faster at batch 16 x 768 -> 6144
  # than g @ W_dec.T (1.4x at 6 rows, 1.2x at 64; 2-core CPU), and the
  # `reference` step 8-9% faster with (3). The sums over d_in run in another
  # order, so its bits differ from autodiff's (no less accurate against a
  # float64 product); the encoder's gradients follow it. (3) acts.T is
  # materialised too, which moves W_dec's gradient from Eigen's
  # transposed-operand matmul to YNNPACK's (1.15x faster, same bits).
  d_acts, after = _decode_acts_grad(residuals, g)
  d_w_dec = jax.lax.optimization_barrier(after.T) @ g
  return d_acts, d_w_dec, jnp.sum(g, axis=0)


def _decode_acts_grad(residuals, g):
  """(the gradient into the latents, acts waiting for it): (1) and (2)."""
  acts, w_dec = residuals
  d_acts = jax.lax.optimization_barrier(
      w_dec @ jax.lax.optimization_barrier(g.T)).T
  return d_acts, acts + 0.0 * d_acts[0, 0]


_decode_small_batch.defvjp(_decode_small_batch_fwd, _decode_small_batch_bwd)


@jax.custom_vjp
def _decode_tapped(acts, w_dec, b_dec, tap):
  del tap
  return acts @ w_dec + b_dec


def _decode_tapped_fwd(acts, w_dec, b_dec, tap):
  del tap
  return _decode_small_batch_fwd(acts, w_dec, b_dec)


def _decode_tapped_bwd(residuals, g):
  # W_dec's gradient as its factors, on the tap (FACTOR_TAPS); the acts
  # factor waits for the read of W_dec, as in _decode_small_batch_bwd (1),
  # since the kernel updates W_dec in place.
  d_acts, after = _decode_acts_grad(residuals, g)
  return d_acts, None, jnp.sum(g, axis=0), (after, g)


_decode_tapped.defvjp(_decode_tapped_fwd, _decode_tapped_bwd)


def unit_decoder_rows(params: Params) -> Params:
  """Decoder rows rescaled to unit norm (after an optimizer step)."""
  w = params["W_dec"]
  return dict(params, W_dec=w / jnp.linalg.norm(w, axis=1, keepdims=True))


def unit_decoder(params: Params, axis: int | None) -> Params:
  """W_dec rescaled to unit norm along `axis` (1: rows, 0: columns; None:
  unchanged), as saes.decoder_unit_axis names it."""
  if axis is None:
    return params
  return unit_decoder_columns(params) if axis == 0 else unit_decoder_rows(
      params)


def unit_decoder_columns(params: Params) -> Params:
  """Each input dimension's decoder weights over the latents (a column of
  W_dec) rescaled to unit norm: the reference system's renormalisation
  (F.normalize(dim=1) on torch's [d_in, d_sae] weight)."""
  w = params["W_dec"]
  return dict(params, W_dec=w / jnp.linalg.norm(w, axis=0, keepdims=True))


def decoder_norms(params: Params) -> jax.Array:
  return jnp.linalg.norm(params["W_dec"], axis=1)


def reconstruction_mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Mean over batch and dimensions of the squared error (normalised units)."""
  return jnp.mean(jnp.square(x - x_hat))


def topk_relu_rows(values: jax.Array, k: int, counting: bool) -> jax.Array:
  """relu of each row's k largest entries, the rest zeroed. counting: by a
  per-row threshold from kth_largest (ties at the k-th value all kept)."""
  if counting:
    threshold = row_kth_largest(values, k)[..., None]
    return jax.nn.relu(jnp.where(values >= threshold, values, 0.0))
  top, idx = jax.lax.top_k(values, k)
  rows = jnp.arange(values.shape[0])[:, None]
  return jax.nn.relu(jnp.zeros_like(values).at[rows, idx].set(top))


def row_kth_largest(values: jax.Array, k: int) -> jax.Array:
  """Each row's k-th largest (kth_largest over the last axis), at 8 ways
  off CPU: on an H200 a TopK step in TF32 ran 566 steps/s at 8 ways
  against 466-476 at 2 (4096 x 6144, k=32). On CPU, where the compares
  cost more than the reads, 2."""
  return kth_largest(values, k, 2 if jax.default_backend() == "cpu" else 8)


def kth_largest(values: jax.Array, n: int, ways: int = 2) -> jax.Array:
  """The n-th largest entry along the last axis of Float[..., size] values,
  Float[...]; where fewer than n entries are >= 0, 0.0 (negative entries
  count as 0). jnp.sort(values)[..., -n] for such values, ties included.

  A search over bit patterns: non-negative float32s order as their int32
  bits do, so the largest t with n or more bits >= t is the n-th largest
  value's bits. Each pass counts the entries above ways - 1 cut points of
  the remaining interval (one read of `values`) and keeps the part that
  holds the answer: 31 passes at ways=2, 16 at 4, 11 at 8. On the 294,912
  candidates of a 4096 x 6144 BatchTopK batch (ways=2): 2.3 ms, where the
  sort took 53 ms (2-core CPU); per row of 4096 x 6144 on an H200: 0.84 ms
  at ways=2, 0.51 at 8, against 2.1 for XLA's top-k."""
  # Negative entries (and -0.0, whose bits are int32's minimum) count as 0.
  bits = jnp.maximum(jax.lax.bitcast_convert_type(values, jnp.int32), 0)
  lead = values.shape[:-1]
  inf_bits = 0x7F800000
  lo = jnp.zeros(lead, jnp.int32)
  hi = jnp.full(lead, inf_bits + 1, jnp.int32)
  cut_index = jnp.arange(1, ways, dtype=jnp.int32)

  def narrow(_, bounds):  # invariant: count(>= lo) >= n > count(>= hi)
    lo, hi = bounds
    width = hi - lo
    step = width // ways + (width % ways > 0)  # ceil, without overflow
    cuts = lo[..., None] + jnp.minimum(step[..., None] * cut_index,
                                       width[..., None])
    counts = jnp.sum((bits[..., None, :] >= cuts[..., None]).astype(
        jnp.int32), axis=-1)  # [..., ways - 1], falling with the cut
    n_enough = jnp.sum((counts >= n).astype(jnp.int32), axis=-1)
    below = jnp.take_along_axis(cuts, jnp.maximum(n_enough - 1, 0)[..., None],
                                axis=-1)[..., 0]
    above = jnp.take_along_axis(cuts, jnp.minimum(n_enough, ways - 2)[
        ..., None], axis=-1)[..., 0]
    return (jnp.where(n_enough > 0, below, lo),
            jnp.where(n_enough < ways - 1, above, hi))

  passes, width = 0, inf_bits + 1
  while width > 1:
    passes, width = passes + 1, -(-width // ways)
  # Unrolled off CPU, so that an accelerator runs the passes back to back
  # without a loop condition per pass (rolled vs unrolled not measured).
  lo, _ = jax.lax.fori_loop(0, passes, narrow, (lo, hi),
                            unroll=jax.default_backend() != "cpu")
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def aux_k_loss(spec: SAESpec, params: Params, x, x_hat, pre, dead_mask):
  """AuxK (Gao et al. 2024): reconstruct the residual from dead latents.

  The top `k_aux` pre-activations among dead latents try to explain
  x - x_hat; the loss is normalised by the residual's variance so that its
  scale does not depend on how good the main reconstruction already is.
  Zero when no latent is dead, and then not computed: a real branch (its
  top-k over all latents and its decoder matmul cost about a fifth of a
  TopK step); under vmap (sweeps) it becomes a select and runs anyway.
  """
  return _aux_k_or_zero(spec, params["W_dec"], pre,
                        jax.lax.stop_gradient(x - x_hat), dead_mask)


def _aux_k_or_zero(spec: SAESpec, w_dec, pre, residual, dead_mask):
  """_aux_k_value when some latent is dead, else 0 (a real branch)."""
  return jax.lax.cond(
      jnp.any(dead_mask),
      lambda w_dec, pre: _aux_k_value(spec, w_dec, pre, residual, dead_mask),
      lambda w_dec, pre: jnp.zeros((), pre.dtype), w_dec, pre)


def _aux_k_value(spec: SAESpec, w_dec, pre, residual, dead_mask):
  k_aux = min(spec.k_aux, spec.d_sae)
  masked = jnp.where(dead_mask[None, :], pre, -jnp.inf)
  aux_acts = topk_relu_rows(masked, k_aux, uses_counting(spec))
  aux_acts = jnp.where(jnp.isfinite(aux_acts), aux_acts, 0.0)
  residual_hat = aux_acts @ w_dec
  err = jnp.sum(jnp.square(residual - residual_hat), axis=-1)
  var = jnp.sum(jnp.square(residual - residual.mean(0)), axis=-1)
  return jnp.mean(err) / jnp.maximum(jnp.mean(var), 1e-8)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def with_aux_k(spec: SAESpec, main, pre, w_dec, b_dec, x, consts, dead_mask):
  """(mse, aux, extras): `main(pre, w_dec, b_dec, x, consts)` returns
  (mse, (x_hat, extras)); aux is aux_k_loss on its x_hat, differentiated
  through pre and w_dec as autodiff would (not through x, consts, extras).

  The same values and gradients as autodiff of main plus aux_k_loss, but
  the branch costs nothing while no latent is dead. Autodiff of a lax.cond
  has both branches return the union of their residuals, so the empty
  branch wrote zeros for the AuxK branch's ([batch, d_sae] floats and
  three masks) and its transpose zeros for the gradients into pre and
  W_dec, then added them: 8% of a BatchTopK step at 4096 x 6144. Here the
  AuxK gradients are added inside a branch that otherwise passes the main
  ones through."""
  mse, (x_hat, extras) = main(pre, w_dec, b_dec, x, consts)
  return mse, aux_k_loss(spec, {"W_dec": w_dec}, x, x_hat, pre,
                         dead_mask), extras


def _with_aux_k_fwd(spec, main, pre, w_dec, b_dec, x, consts, dead_mask):
  mse, main_vjp, (x_hat, extras) = jax.vjp(
      lambda p, w, b: main(p, w, b, x, consts), pre, w_dec, b_dec,
      has_aux=True)
  residual = x - x_hat
  aux = _aux_k_or_zero(spec, w_dec, pre, residual, dead_mask)
  return (mse, aux, extras), (main_vjp, pre, w_dec, residual, dead_mask)


def _with_aux_k_bwd(spec, main, residuals, cotangents):
  del main
  main_vjp, pre, w_dec, residual, dead_mask = residuals
  d_mse, d_aux, _ = cotangents
  d_pre, d_w_dec, d_b_dec = main_vjp(d_mse)

  def add_aux(d_pre, d_w_dec):
    aux_vjp = jax.vjp(lambda p, w: _aux_k_value(spec, w, p, residual,
                                                dead_mask), pre, w_dec)[1]
    aux_pre, aux_w_dec = aux_vjp(d_aux)
    return d_pre + aux_pre, d_w_dec + aux_w_dec

  d_pre, d_w_dec = jax.lax.cond(jnp.any(dead_mask), add_aux,
                                lambda d_pre, d_w_dec: (d_pre, d_w_dec),
                                d_pre, d_w_dec)
  return d_pre, d_w_dec, d_b_dec, None, None, None


with_aux_k.defvjp(_with_aux_k_fwd, _with_aux_k_bwd)


def threshold_reconstruct(pre, w_dec, b_dec, x, threshold):
  """with_aux_k's `main` for activations kept at or above a threshold (one
  per batch, or per row): (mse, (x_hat, acts))."""
  acts = relu(jnp.where(pre >= threshold, pre, 0.0))
  x_hat = decode({"W_dec": w_dec, "b_dec": b_dec}, acts)
  return reconstruction_mse(x, x_hat), (x_hat, acts)


# ------------------------------------------------ training-step building blocks
# The training step (train_core.train_step) calls each architecture's
# `train_terms`, which computes the same loss as forward + loss_terms but
# with fewer passes over [batch, d_sae] arrays (each a 100 MB read or write
# at 4096 x 6144, a few percent of a step on these CPUs), and TopK decodes
# from its k active latents instead of a dense [batch, d_sae] matrix.


@jax.custom_vjp
def relu(pre: jax.Array) -> jax.Array:
  """max(pre, 0) whose backward reads its output instead of `pre`, so `pre`
  is not kept alive for the backward pass."""
  return jnp.maximum(pre, 0.0)


def _relu_fwd(pre):
  out = jnp.maximum(pre, 0.0)
  return out, out


def _relu_bwd(out, g):
  return (jnp.where(out > 0, g, 0.0),)


relu.defvjp(_relu_fwd, _relu_bwd)


def firing_counts(acts: jax.Array) -> jax.Array:
  """Float[d_sae]: on how many rows of Float[batch d_sae] acts >= 0 each
  latent is non-zero. A column sum of sign(acts): 4x faster on XLA:CPU at
  4096 x 6144 than summing (acts != 0), whose conversion from bool keeps it
  out of the fast reduction kernel."""
  counts = jax.lax.stop_gradient(jnp.sum(jnp.sign(acts), axis=0))
  # The barrier stops XLA rewriting sum(counts) (the L0) as a second
  # reduction over sign(acts), which would materialise that [batch, d_sae]
  # array for the two.
  return jax.lax.optimization_barrier(counts)


@jax.custom_vjp
def sparse_decode(w_dec: jax.Array, values: jax.Array,
                  indices: jax.Array) -> jax.Array:
  """sum_j values[b, j] * W_dec[indices[b, j]]: Float[batch d_in], the
  decoder applied to k active latents per row (without b_dec).

  The same sum as a dense [batch, d_sae] @ [d_sae, d_in] matmul over acts
  that are zero outside `indices`, at k/d_sae of its cost: at k=32 of 6144
  the unrolled gathers below fuse into one loop that ran ~15x faster than
  the matmul. The backward is a gather-dot and a scatter-add over the same
  rows."""
  return _gather_rows_sum(w_dec, values, indices)


def _gather_rows_sum(w_dec, values, indices):
  out = values[:, 0:1] * w_dec[indices[:, 0]]
  for j in range(1, indices.shape[1]):  # unrolled: XLA fuses it into one loop
    out = out + values[:, j:j + 1] * w_dec[indices[:, j]]
  return out


def _sparse_decode_fwd(w_dec, values, indices):
  return _gather_rows_sum(w_dec, values, indices), (w_dec, values, indices)


def _sparse_decode_bwd(residuals, g):
  w_dec, values, indices = residuals
  rows = w_dec[indices]  # [batch, k, d_in]
  d_values = jax.lax.dot_general(rows, g, (((2,), (1,)), ((0,), (0,))))
  updates = (values[:, :, None] * g[:, None, :]).reshape(-1, g.shape[-1])
  d_w_dec = jnp.zeros_like(w_dec).at[indices.reshape(-1)].add(
      updates, mode="promise_in_bounds")
  return d_w_dec, d_values, None


sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


def topk_pre_activation(params: Params, x: jax.Array, k: int):
  """(top, indices): the k largest pre-activations of each row of
  Float[batch d_in] x and where they are, both [batch, k].

  Its backward touches only those k latents per row: the encoder's
  gradient is a scatter-add of k rows per example instead of a dense
  [batch, d_sae] gradient and a full [d_in x batch x d_sae] matmul."""
  return _topk_affine(k, x, params["b_dec"], params["W_enc"], params["b_enc"])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _topk_affine(k, x, b_dec, w_enc, b_enc):
  pre = (x - b_dec) @ w_enc + b_enc
  # The barrier keeps XLA's top-k kernel: without it, slices of the indices
  # taken later merge into the top-k's sort, which then sorts whole rows
  # (10x slower at 4096 x 6144).
  return tuple(jax.lax.optimization_barrier(tuple(jax.lax.top_k(pre, k))))


def _topk_affine_fwd(k, x, b_dec, w_enc, b_enc):
  top, indices = _topk_affine(k, x, b_dec, w_enc, b_enc)
  return (top, indices), (x - b_dec, w_enc, indices)


def _topk_affine_bwd(k, residuals, cotangents):
  del k
  centred, w_enc, indices = residuals
  d_top = cotangents[0]
  flat = indices.reshape(-1)
  d_b_enc = jnp.zeros((w_enc.shape[1],), d_top.dtype).at[flat].add(
      d_top.reshape(-1), mode="promise_in_bounds")
  updates = (d_top[:, :, None] * centred[:, None, :]).reshape(
      -1, centred.shape[-1])
  d_w_enc = jnp.zeros(w_enc.shape[::-1], d_top.dtype).at[flat].add(
      updates, mode="promise_in_bounds").T
  d_x = _gather_rows_sum(w_enc.T, d_top, indices)  # dropped unless used
  return d_x, -(w_enc @ d_b_enc), d_w_enc, d_b_enc


_topk_affine.defvjp(_topk_affine_fwd, _topk_affine_bwd)
