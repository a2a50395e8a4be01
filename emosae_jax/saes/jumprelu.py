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


def post_update(spec, params, batch_stats):
  del spec, batch_stats
  return params
