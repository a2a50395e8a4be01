"""SAE training: a pure, jitted, vmappable core plus a small driver.

The core works on one SAE; sweeps vmap it over members. The whole training
set lives on the device, and `train_epochs` runs several epochs inside one
compiled program (scan over epochs, scan over steps), so there is no Python
per step. Early stopping, NaN detection and dead-latent bookkeeping are part
of the state, which is what makes the same code vmappable: a member that
stopped or failed simply stops changing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from emosae_jax import fused_adam, saes
from emosae_jax.errors import TrainingError  # noqa: F401  (callers catch core.TrainingError)

Params = saes.Params
HParams = dict[str, jax.Array]  # float32 scalars; may differ between members

HPARAM_FIELDS = ("lr", "sparsity_coeff", "aux_coeff", "warmup_steps",
                 "sparsity_warmup_steps", "lr_decay_fraction")


@dataclasses.dataclass(frozen=True)
class StaticSpec:
  """Everything that fixes shapes or control flow: one compile per StaticSpec."""

  sae: saes.SAESpec
  batch_size: int
  steps_per_epoch: int
  dead_window: int
  resample_every: int
  patience: int
  max_grad_norm: float  # on the gradient of this project's loss (a mean)
  eval_chunk: int
  divergence_factor: float = 0.0  # restore when val loss > this x best; 0: off
  # "data" (Bricken, capped), "reference" (what the reference system's code
  # does: dead encoder columns x 0.1) or "fresh" (new random weights)
  resample: str = "data"
  partial_batch: str = "drop"  # drop | wrap | keep (a short last step)
  # The planned steps (epochs x steps_per_epoch): where lr_decay_fraction's
  # linear decay to 0 ends. 0: unknown, no decay.
  total_steps: int = 0
  # Matmul precision the step and evaluation are traced with: "default"
  # (the backend's: TF32 on NVIDIA GPUs since Ampere, bf16 passes on TPUs,
  # full float32 on CPU) or a jax.default_matmul_precision name, e.g.
  # "highest" (float32 everywhere: on an H200 about 4x slower per step).
  matmul_precision: str = "default"
  # Adam's epsilon on the gradient of this project's (mean) loss. Gradients
  # of SAELens's loss, summed over input dimensions, are d_in times larger,
  # so its eps (also 1e-8) weighs d_in times less; 1e-8 / d_in makes the
  # two updates the same arithmetic.
  adam_eps: float = 1e-8
  # Adam by the one-pass CPU kernel (fused_adam.py) instead of optax's loops:
  # the same formula and state, fewer passes over memory.
  fused_adam: bool = False
  # With fused_adam at small batch: W_enc's and W_dec's gradients reach the
  # kernel as factors, g = a^T b (base.FACTOR_TAPS), computed inside its pass.
  factored_grads: bool = False

  def __post_init__(self):
    if self.factored_grads and not self.fused_adam:
      raise ValueError("factored_grads needs fused_adam: optax's Adam takes "
                       "whole gradients")


ADAM_KERNELS = ("auto", "fused", "optax")


def use_fused_adam(choice: str) -> bool:
  """train.adam_kernel -> whether the step uses fused_adam.

  "auto": on a process with one CPU device, when the kernel builds. With
  several devices a sweep shards its member axis through XLA's partitioner,
  which cannot split a custom call and would run it whole on every device;
  other backends fuse optax's loops themselves.
  """
  if choice == "optax":
    return False
  if choice == "fused":
    return fused_adam.available()
  return (jax.default_backend() == "cpu" and jax.local_device_count() == 1
          and fused_adam.available())


MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16",
                     "tensorfloat32", "float32")


def matmul_precision(spec: StaticSpec):
  """A context tracing matmuls at spec.matmul_precision (the setting is
  read when a jitted function is traced, so it is applied inside it)."""
  if spec.matmul_precision == "default":
    return contextlib.nullcontext()
  return jax.default_matmul_precision(spec.matmul_precision)


def with_spec_precision(fn):
  """fn(spec, ...) traced under matmul_precision(spec)."""

  @functools.wraps(fn)
  def traced(spec, *args, **kwargs):
    with matmul_precision(spec):
      return fn(spec, *args, **kwargs)

  return traced


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []
  epoch: jax.Array  # int32 []
  params: Params
  opt_state: Any
  rng: jax.Array  # uint32 [2]: the run's base key; folded with epoch/step
  steps_since_fired: jax.Array  # int32 [d_sae]
  best_val: jax.Array  # float32 []
  best_epoch: jax.Array  # int32 []
  best_params: Params
  bad_epochs: jax.Array  # int32 []
  stopped: jax.Array  # bool []: early stopping triggered
  failed: jax.Array  # bool []: a non-finite loss was seen; state frozen


def hparams_from_config(config) -> HParams:
  t = config.train
  return {k: jnp.asarray(float(t[k]), jnp.float32) for k in HPARAM_FIELDS}


def static_spec_from_config(config, n_train: int) -> StaticSpec:
  m, t = config.model, config.train
  sae = saes.SAESpec(arch=m.arch, d_in=m.d_in, d_sae=m.d_sae, k=m.k,
                     k_aux=m.k_aux, decoder_norm=m.decoder_norm,
                     bandwidth=m.bandwidth, threshold_init=m.threshold_init,
                     init=m.init, init_scale=m.init_scale,
                     learn_pre_bias=m.learn_pre_bias,
                     output_bias=m.get("output_bias", False),
                     sparsity_over_latents=m.sparsity_over_latents,
                     top_k_method=m.get("top_k_method", "auto"))
  batch = min(t.batch_size, n_train)
  # "drop": the rows past the last full batch wait for another epoch;
  # "wrap": one more step, filled up with the epoch's first rows; "keep":
  # one more, shorter step (the reference's: 70 rows, steps of 16 x 4 + 6).
  partial = t.get("partial_batch", "drop")
  steps = -(-n_train // batch) if partial != "drop" else n_train // batch
  fused = use_fused_adam(t.get("adam_kernel", "auto"))
  return StaticSpec(sae=sae, batch_size=batch,
                    steps_per_epoch=max(1, steps),
                    dead_window=t.dead_window,
                    resample_every=t.resample_every, patience=t.patience,
                    max_grad_norm=t.max_grad_norm / m.d_in, eval_chunk=2048,
                    divergence_factor=t.divergence_factor,
                    resample=t.resample, partial_batch=partial,
                    total_steps=t.epochs * max(1, steps),
                    matmul_precision=t.get("matmul_precision", "default"),
                    adam_eps=t.get("adam_eps", 1e-8),
                    fused_adam=fused,
                    factored_grads=(fused and batch <= saes.base.SMALL_BATCH
                                    and saes.factored_weight_grads(sae)))


def _optimizer(spec: StaticSpec) -> optax.GradientTransformation:
  # The learning rate (with warm-up) is applied by hand after this chain, so
  # it can be a traced per-member value in sweeps.
  # b1, b2 from fused_adam, so both Adam paths share one set of constants.
  parts = [optax.scale_by_adam(b1=fused_adam.B1, b2=fused_adam.B2,
                               eps=spec.adam_eps)]
  if spec.max_grad_norm > 0:
    parts.insert(0, optax.clip_by_global_norm(spec.max_grad_norm))
  return optax.chain(*parts)


def _initial_opt_state(spec: StaticSpec, params: Params):
  """_optimizer(spec).init(params), jitted: eager, optax's init makes each
  zero array with its own op, one compile per shape (0.3-2.6 s of a run's
  start at 768 -> 6144 on the shared 2-core machines); one jitted program
  makes the same state whatever the optimizer keeps."""
  return jax.jit(_optimizer(spec).init)(params)


def init_state(spec: StaticSpec, rng: jax.Array) -> TrainState:
  """A fresh state; `rng` is a raw uint32[2] key (jax.random.PRNGKey)."""
  params = saes.init_params(spec.sae, jax.random.fold_in(rng, 0))
  return TrainState(
      step=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32),
      params=params, opt_state=_initial_opt_state(spec, params), rng=rng,
      steps_since_fired=jnp.zeros((spec.sae.d_sae,), jnp.int32),
      best_val=jnp.asarray(jnp.inf, jnp.float32),
      best_epoch=jnp.zeros((), jnp.int32),
      best_params=jax.tree.map(jnp.copy, params),  # distinct buffers: donated
      bad_epochs=jnp.zeros((), jnp.int32),
      stopped=jnp.zeros((), bool), failed=jnp.zeros((), bool))


def _loss_fn(spec: StaticSpec, hp: HParams, sparsity_scale, dead_mask,
             params, xb):
  terms, counts, stats = saes.train_terms(spec.sae, params, xb, dead_mask,
                                          hp)
  loss = (terms["mse"] + hp["sparsity_coeff"] * sparsity_scale
          * terms["sparsity"] + hp["aux_coeff"] * terms["aux"])
  return loss, (terms, counts, stats)


def _warmup(step, steps):
  return jnp.minimum(1.0, (step + 1) / jnp.maximum(steps, 1.0))


def lr_at(spec: StaticSpec, hp: HParams, step):
  """The learning rate at optimizer step `step` (0-based, float): linear
  warm-up over `warmup_steps`, then constant, then (lr_decay_fraction > 0)
  linear decay to 0 over the last lr_decay_fraction of spec.total_steps, as
  dictionary_learning's default schedule (decay over the last 20%). Off by
  default (configs/sae.py says what it was measured to do)."""
  lr = hp["lr"] * _warmup(step, hp["warmup_steps"])
  if spec.total_steps <= 0:
    return lr
  decay_steps = hp["lr_decay_fraction"] * spec.total_steps
  left = (spec.total_steps - step) / jnp.maximum(decay_steps, 1.0)
  return jnp.where(decay_steps > 0, lr * jnp.clip(left, 0.0, 1.0), lr)


@with_spec_precision
def train_step(spec: StaticSpec, hp: HParams, state: TrainState, xb):
  """One optimizer step on batch xb [batch, d_in]; returns (state, metrics).

  A step whose loss is not finite does not move the parameters and sets
  `failed`, so the driver can stop with the last good parameters.
  """
  arch = saes.get_arch(spec.sae.arch)
  step_f = state.step.astype(jnp.float32)
  dead_mask = state.steps_since_fired >= spec.dead_window
  sparsity_scale = _warmup(step_f, hp["sparsity_warmup_steps"])
  grad_fn = jax.value_and_grad(
      functools.partial(_loss_fn, spec, hp, sparsity_scale, dead_mask),
      has_aux=True)
  loss_params = state.params
  if spec.factored_grads:
    taps = saes.base.factor_taps(spec.sae, xb.shape[0])
    loss_params = dict(loss_params, **{saes.base.FACTOR_TAPS: taps})
  (loss, (terms, counts, stats)), grads = grad_fn(loss_params, xb)
  factors = grads.pop(saes.base.FACTOR_TAPS, None)
  finite = jnp.isfinite(loss)
  failed = state.failed | ~finite
  # A failed or early-stopped member must not move. Zeroing its gradient and
  # learning rate fuses into the update loops; a lax.cond (a select under
  # vmap) between old and new state would cost extra passes over params and
  # Adam moments, which bound the step time at small batch sizes.
  frozen = failed | state.stopped
  lr = jnp.where(frozen, 0.0, lr_at(spec, hp, step_f))
  unit_axis = saes.decoder_unit_axis(spec.sae)
  if spec.fused_adam:  # the renormalisation too, in the same pass
    params, opt_state = fused_adam.update(
        grads, state.opt_state, state.params, lr, frozen, spec.max_grad_norm,
        spec.adam_eps, unit_axes={"W_dec": unit_axis}, factors=factors)
  else:
    grads = jax.tree.map(lambda g: jnp.where(frozen, 0.0, g), grads)
    updates, opt_state = _optimizer(spec).update(grads, state.opt_state,
                                                 state.params)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    params = saes.base.unit_decoder(params, unit_axis)
  params = arch.post_update(spec.sae, params, stats)
  since = jnp.where(counts > 0, 0, state.steps_since_fired + 1)
  state = state.replace(params=params, opt_state=opt_state,
                        steps_since_fired=since, failed=failed,
                        step=state.step + jnp.where(frozen, 0, 1))
  metrics = dict(terms, loss=loss, l0=jnp.sum(counts) / xb.shape[0])
  return state, metrics


def _resample_reference(spec: StaticSpec, state: TrainState) -> TrainState:
  """What the reference system's code does to dead latents (its intent was
  fresh Kaiming x 0.1 encoder rows and orthogonal decoder columns, but its
  init calls fill copies made by torch's advanced indexing): the encoder
  column shrinks 10x, the decoder row is set to unit norm, the dead counter
  restarts; the bias and Adam's moments are left as they are."""
  dead = state.steps_since_fired >= spec.dead_window
  params = dict(state.params)
  params["W_enc"] = jnp.where(dead[None, :], 0.1 * params["W_enc"],
                              params["W_enc"])
  params["W_dec"] = jnp.where(dead[:, None],
                              saes.base.unit_decoder_rows(params)["W_dec"],
                              params["W_dec"])
  return state.replace(params=params, steps_since_fired=jnp.where(
      dead, 0, state.steps_since_fired))


def _resample_fresh(spec: StaticSpec, state: TrainState) -> TrainState:
  """Dead latents get a fresh random (reference-init) encoder column and a
  unit decoder row, as issue 12 reads the reference; bias and Adam's moments
  are left as they are."""
  dead = state.steps_since_fired >= spec.dead_window
  key = jax.random.fold_in(jax.random.fold_in(state.rng, 1 << 21), state.step)
  fresh = saes.init_params(dataclasses.replace(spec.sae, init="reference"),
                           key)
  fresh = saes.base.unit_decoder_rows(fresh)
  params = dict(state.params)
  params["W_dec"] = jnp.where(dead[:, None], fresh["W_dec"], params["W_dec"])
  params["W_enc"] = jnp.where(dead[None, :], fresh["W_enc"], params["W_enc"])
  return state.replace(params=params, steps_since_fired=jnp.where(
      dead, 0, state.steps_since_fired))


def _resample(spec: StaticSpec, x_train, state: TrainState) -> TrainState:
  """Re-initialises dead latents on badly reconstructed inputs (Bricken et
  al. 2023): the decoder row points at a high-loss input and the encoder
  column along it, at 0.2x the mean live encoder norm or less (below).

  On a small training set Bricken's recipe diverged (the reference workload:
  ~2,000 dead latents re-seeded from 70 inputs; training FVU went from 0.02
  to 20-90 after each resampling). Dozens of new latents shared each input,
  so (1) their summed output overshot the residual, and (2) Adam, which
  moves every parameter by about lr whatever its gradient, moved the
  identical copies together, so even tiny copies overshot within a few
  steps. Hence each input seeds at most one latent per resampling (inputs
  drawn without replacement, weighted by loss; latents left over stay dead
  until the next one), and the encoder scale is capped so that the new
  latents' output (linear in that scale: zero bias, ReLU) is at most 0.2x
  the rms residual on the sampled inputs.
  """
  if spec.resample == "reference":
    return _resample_reference(spec, state)
  if spec.resample == "fresh":
    return _resample_fresh(spec, state)
  dead = state.steps_since_fired >= spec.dead_window
  params = state.params
  key = jax.random.fold_in(jax.random.fold_in(state.rng, 1 << 20), state.step)
  sample_key, key = jax.random.split(key)
  n_sample = min(x_train.shape[0], 1024)
  xb = x_train[jax.random.choice(sample_key, x_train.shape[0], (n_sample,),
                                 replace=False)]
  x_hat = saes.forward(spec.sae, params, xb, train=False)[0]
  err = jnp.sum(jnp.square(xb - x_hat), axis=-1)
  picks = jax.random.choice(key, n_sample, (n_sample,), replace=False,
                            p=err / jnp.maximum(jnp.sum(err), 1e-30))
  rank = jnp.cumsum(dead) - 1  # the i-th dead latent takes the i-th pick
  reseed = dead & (rank < n_sample)
  directions = xb[picks[jnp.clip(rank, 0, n_sample - 1)]] - params["b_dec"]
  directions /= jnp.linalg.norm(directions, axis=1, keepdims=True) + 1e-8
  enc_norms = jnp.linalg.norm(params["W_enc"], axis=0)
  live_norm = jnp.sum(jnp.where(dead, 0, enc_norms)) / jnp.maximum(
      jnp.sum(~dead), 1)
  new_acts = jax.nn.relu((xb - params["b_dec"]) @ directions.T) * reseed
  new_out = jnp.mean(jnp.sum(jnp.square(new_acts @ directions), -1))
  cap = 0.2 * jnp.sqrt(jnp.mean(err) / jnp.maximum(new_out, 1e-30))
  scale = jnp.minimum(0.2 * jnp.where(jnp.any(~dead), live_norm, 1.0), cap)
  new = dict(params)
  new["W_dec"] = jnp.where(reseed[:, None], directions, params["W_dec"])
  new["W_enc"] = jnp.where(reseed[None, :], scale * directions.T,
                           params["W_enc"])
  new["b_enc"] = jnp.where(reseed, 0.0, params["b_enc"])
  opt_state = _reset_moments(state.opt_state, reseed)
  return state.replace(params=new, opt_state=opt_state,
                       steps_since_fired=jnp.where(reseed, 0,
                                                   state.steps_since_fired))


def _reset_moments(opt_state, dead):
  """Adam moments of re-seeded latents: first moment 0, second moment the
  mean of the live latents' (per tensor). Zeroing the second moment too, with
  Adam's step count (and so its bias correction) left at its late value,
  made the new latents' steps 3-6x larger than everyone's for hundreds of
  steps."""
  axes = {"W_dec": (dead[:, None], 0), "W_enc": (dead[None, :], 1),
          "b_enc": (dead, 0)}

  def reset(tree, second):
    out = dict(tree)
    for name, (mask, _) in axes.items():
      t = tree[name]
      fill = 0.0
      if second:
        live = jnp.broadcast_to(~mask, t.shape)
        fill = jnp.sum(jnp.where(live, t, 0)) / jnp.maximum(jnp.sum(live), 1)
      out[name] = jnp.where(mask, fill, t)
    return out

  return tuple(
      s._replace(mu=reset(s.mu, False), nu=reset(s.nu, True))
      if isinstance(s, optax.ScaleByAdamState) else s for s in opt_state)


@with_spec_precision
def evaluate(spec: StaticSpec, hp: HParams, params: Params, x):
  """Loss, MSE, FVU and L0 on x [n, d_in], in chunks to bound memory.

  FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 with x's own mean (x
  being validation or training rows); the denominator is floored at 1e-12
  (all rows equal) so it stays finite. Cross-library comparisons use
  metrics.heldout_fvu, which centres on the training mean instead."""
  n = x.shape[0]
  chunk = min(spec.eval_chunk, n)
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(n_chunks, chunk, -1)
  valid = (jnp.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk)
  arch = saes.get_arch(spec.sae.arch)

  def body(carry, inputs):
    xc, vc = inputs
    x_hat, acts, pre = saes.forward(spec.sae, params, xc, train=False)
    terms = arch.loss_terms(spec.sae, params, xc, x_hat, pre, acts,
                            jnp.zeros((spec.sae.d_sae,), bool), hp)
    sq = jnp.sum(jnp.square(xc - x_hat), -1) * vc
    nz = jnp.sum(acts != 0, -1) * vc
    # loss_terms gives a chunk mean; padded rows of the last chunk (only when
    # n > eval_chunk) slightly bias this early-stopping signal, not FVU/L0.
    sparsity = terms["sparsity"] * jnp.sum(vc)
    return carry, (jnp.sum(sq), jnp.sum(nz), sparsity)

  _, (sq, nz, sparsity) = jax.lax.scan(body, None, (xs, valid))
  d = x.shape[1]
  total = jnp.sum(jnp.square(x - x.mean(0)))
  mse = jnp.sum(sq) / (n * d)
  loss = mse + hp["sparsity_coeff"] * jnp.sum(sparsity) / n
  return {"loss": loss, "mse": mse,
          "fvu": jnp.sum(sq) / jnp.maximum(total, 1e-12),
          "l0": jnp.sum(nz) / n}


def _resample_due(spec: StaticSpec, epoch) -> jax.Array:
  """Whether a multiple of resample_every steps falls inside this epoch."""
  if spec.resample_every <= 0:
    return jnp.zeros((), bool)
  start = epoch * spec.steps_per_epoch
  end = start + spec.steps_per_epoch
  return end // spec.resample_every > start // spec.resample_every


def _guard_divergence(spec: StaticSpec, hp: HParams, state: TrainState,
                      val_loss, active):
  """Catches a blow-up: once both warm-ups are over, a validation loss above
  `divergence_factor` x the best so far puts back the best parameters, with
  fresh Adam moments (their old ones drove the blow-up) and a fresh dead
  window. Returns (state, restored)."""
  if spec.divergence_factor <= 0:
    return state, jnp.zeros((), bool)
  warm = jnp.maximum(hp["warmup_steps"], hp["sparsity_warmup_steps"])
  restored = (active & (state.step.astype(jnp.float32) > warm)
              & ~(val_loss <= spec.divergence_factor * state.best_val))

  def restore(s):
    params = jax.tree.map(jnp.copy, s.best_params)
    return s.replace(params=params, opt_state=_optimizer(spec).init(params),
                     steps_since_fired=jnp.zeros_like(s.steps_since_fired))

  return jax.lax.cond(restored, restore, lambda s: s, state), restored


def _epoch(spec: StaticSpec, hp: HParams, x_train, x_val, state: TrainState,
           global_epoch):
  """One epoch; `global_epoch` is the same for every sweep member (members
  run in lockstep), so the resampling branch below stays a real branch under
  vmap instead of a select that would run for every member every epoch."""
  active = ~(state.stopped | state.failed)
  n = x_train.shape[0]
  short = n % spec.batch_size if spec.partial_batch == "keep" else 0
  n_full = spec.steps_per_epoch - (short > 0)
  key = jax.random.fold_in(state.rng, state.epoch)
  perm = jax.random.permutation(key, n)
  # resize: the first rows, or (partial_batch="wrap") all of them and then
  # the first ones again
  batches = jnp.resize(perm, n_full * spec.batch_size).reshape(
      n_full, spec.batch_size)

  def step_body(state, idx):
    return train_step(spec, hp, state, x_train[idx])

  state, step_metrics = jax.lax.scan(step_body, state, batches)
  if short:  # a shape of its own: the same step traced once more
    state, last = train_step(spec, hp, state, x_train[perm[n - short:]])
    step_metrics = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b[None]]), step_metrics, last)
  # Latents that have not fired for dead_window steps (what resampling and
  # AuxK treat as dead), counted before resampling revives them; the
  # summary's never_fires_fraction is another measure: latents that fire on
  # no training example.
  dead_fraction = jnp.mean(state.steps_since_fired >= spec.dead_window)
  state = jax.lax.cond(_resample_due(spec, global_epoch),
                       functools.partial(_resample, spec, x_train),
                       lambda s: s, state)
  val = evaluate(spec, hp, state.params, x_val)
  state, restored = _guard_divergence(spec, hp, state, val["loss"], active)
  improved = (val["loss"] < state.best_val) & active & ~state.failed
  bad = jnp.where(improved, 0, state.bad_epochs + active)
  state = state.replace(
      epoch=state.epoch + active,
      best_val=jnp.where(improved, val["loss"], state.best_val),
      best_epoch=jnp.where(improved, state.epoch + 1, state.best_epoch),
      # A real branch: the parameters are copied only in epochs that
      # improve, instead of a select reading both sets every epoch (under
      # vmap, in sweeps, it is that select again).
      best_params=jax.lax.cond(improved, lambda b, p: p, lambda b, p: b,
                               state.best_params, state.params),
      bad_epochs=bad,
      stopped=state.stopped | (bad >= spec.patience))
  # step_*: means over this epoch's training steps (each at its own
  # parameters); eval_*: the epoch's final parameters on x_val, which the
  # driver names heldout_* or, when x_val is the training set, train_*.
  metrics = {f"step_{k}": jnp.mean(v) for k, v in step_metrics.items()}
  metrics.update({f"eval_{k}": v for k, v in val.items()})
  metrics["dead_window_fraction"] = dead_fraction
  metrics["lr"] = lr_at(spec, hp, state.step.astype(jnp.float32) - 1)
  metrics["restored"] = restored
  metrics["active"] = active
  metrics["epoch"] = state.epoch
  return state, metrics


def train_epochs(spec: StaticSpec, n_epochs: int, state: TrainState,
                 hp: HParams, x_train, x_val, first_epoch):
  """Runs n_epochs epochs starting at epoch index `first_epoch` (the number
  of epochs done so far). A stopped or failed state stops changing.

  Returns (state, metrics) with metrics [n_epochs] per key, plus "active"
  marking the epochs that ran.
  """

  def epoch_body(state, i):
    return _epoch(spec, hp, x_train, x_val, state, first_epoch + i)

  return jax.lax.scan(epoch_body, state, jnp.arange(n_epochs))


@functools.lru_cache(maxsize=None)
def compiled_train_epochs(spec: StaticSpec, n_epochs: int):
  """The jitted single-SAE epoch runner; donates the state."""
  return jax.jit(functools.partial(train_epochs, spec, n_epochs),
                 donate_argnums=0)
