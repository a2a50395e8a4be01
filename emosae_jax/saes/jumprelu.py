"""JumpReLU SAE (Rajamanoharan et al. 2024): acts = pre * H(pre - theta).

theta = exp(log_threshold) per latent. The Heaviside step has no useful
gradient, so both the step and the L0 penalty use a straight-through
estimator with a rectangle kernel of width `bandwidth` for d/d theta.
"""

import functools

import jax
import jax.numpy as jnp

from emosae_jax.saes import base


def extra_params(spec):
  init = lambda key: jnp.full((spec.d_sae,), jnp.log(spec.threshold_init))
  return (("log_threshold", init),)


def _rectangle(z):
  return ((z > -0.5) & (z < 0.5)).astype(z.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre, theta, bandwidth):
  return (pre > theta).astype(pre.dtype)


def _step_fwd(pre, theta, bandwidth):
  return step(pre, theta, bandwidth), (pre, theta)


def _step_bwd(bandwidth, res, g):
  pre, theta = res
  d_theta = -(1.0 / bandwidth) * _rectangle((pre - theta) / bandwidth) * g
  return jnp.zeros_like(pre), d_theta.sum(0) if d_theta.ndim > 1 else d_theta


step.defvjp(_step_fwd, _step_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jump_relu(pre, theta, bandwidth):
  return pre * (pre > theta)


def _jr_fwd(pre, theta, bandwidth):
  return jump_relu(pre, theta, bandwidth), (pre, theta)


def _jr_bwd(bandwidth, res, g):
  pre, theta = res
  d_pre = (pre > theta) * g
  d_theta = -(theta / bandwidth) * _rectangle((pre - theta) / bandwidth) * g
  return d_pre, d_theta.sum(0) if d_theta.ndim > 1 else d_theta


jump_relu.defvjp(_jr_fwd, _jr_bwd)


def activation(spec, params, pre, train: bool):
  del train
  theta = jnp.exp(params["log_threshold"])
  return jump_relu(pre, theta, spec.bandwidth)


def loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, hp):
  del acts, dead_mask, hp
  theta = jnp.exp(params["log_threshold"])
  l0 = jnp.mean(jnp.sum(step(pre, theta, spec.bandwidth), axis=-1))
  return {"mse": base.reconstruction_mse(x, x_hat), "sparsity": l0,
          "aux": jnp.zeros(())}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jump_relu_and_counts(pre, theta, bandwidth):
  """(jump_relu(pre), per-latent count of pre > theta): the count is
  step()'s sum over the batch with step's straight-through gradient, so the
  L0 penalty needs no [batch, d_sae] step array, and the backward computes
  the threshold's two gradients in one pass."""
  acts = jnp.where(pre > theta, pre, 0.0)
  return acts, base.firing_counts(acts)  # theta > 0: acts > 0 where fired


def _jrc_fwd(pre, theta, bandwidth):
  return jump_relu_and_counts(pre, theta, bandwidth), (pre, theta)


def _jrc_bwd(bandwidth, res, cotangents):
  pre, theta = res
  g_acts, g_counts = cotangents
  # jump_relu's d_theta (-theta/bw * rect * g) plus step's (-1/bw * rect * g)
  # _rectangle((pre - theta) / bandwidth) in float arithmetic only: a
  # comparison inside the reduction keeps it out of XLA:CPU's fast kernel.
  near = jnp.sign(jax.nn.relu(0.5 - jnp.abs(pre - theta) / bandwidth))
  # One elementwise pass, then the fast column sum; fused into the
  # reduction, its [d_sae] broadcasts were each written out at full size.
  per_entry = jax.lax.optimization_barrier(near * (theta * g_acts + g_counts))
  d_theta = -jnp.sum(per_entry, axis=0) / bandwidth
  return jnp.where(pre > theta, g_acts, 0.0), d_theta


jump_relu_and_counts.defvjp(_jrc_fwd, _jrc_bwd)


def train_terms(spec, params, x, dead_mask, hp):
  """loss_terms' values for a training step, plus per-latent firing counts
  (theta > 0, so a latent fires exactly when pre > theta)."""
  del dead_mask, hp
  theta = jnp.exp(params["log_threshold"])
  acts, counts = jump_relu_and_counts(base.pre_activation(params, x), theta,
                                      spec.bandwidth)
  x_hat = base.decode(params, acts)
  return ({"mse": base.reconstruction_mse(x, x_hat),
           "sparsity": jnp.sum(counts) / x.shape[0], "aux": jnp.zeros(())},
          jax.lax.stop_gradient(counts), None)


def post_update(spec, params, batch_stats):
  del spec, batch_stats
  return params
