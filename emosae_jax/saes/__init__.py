"""SAE architectures behind one registry.

Each architecture is a small module with the same four functions:
  extra_params(spec)                -> ((name, init(key)), ...)
  activation(spec, params, pre, train) -> acts
  loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, hp)
                                    -> {"mse", "sparsity", "aux"}
  train_terms(spec, params, x, dead_mask, hp)
                                    -> (loss terms, firing counts, batch_stats)
  post_update(spec, params, batch_stats) -> params   (after each optimizer step
                                    and the decoder's renormalisation, which
                                    the step applies: decoder_unit_axis)
train_terms is the training step's forward pass: the same terms as forward +
loss_terms (tests/test_train_step_math.py checks values and gradients), plus
how many rows of the batch each latent fired on and what post_update needs.
"""

from __future__ import annotations

import types

import jax

from emosae_jax.saes import base, batchtopk, jumprelu, relu_l1, topk
from emosae_jax.saes.base import (TOP_K_METHODS, Params, SAESpec, decode,
                                  pre_activation)

ARCHS: dict[str, types.ModuleType] = {
    "relu_l1": relu_l1,
    "topk": topk,
    "batchtopk": batchtopk,
    "jumprelu": jumprelu,
}


def decoder_unit_axis(spec: SAESpec) -> int | None:
  """The axis of W_dec the training step rescales to unit norm after each
  optimizer step: 1, each latent's decoder row (decoder_norm="unit", for
  relu_l1 and topk; SAELens gets the same for TopK by ranking activations
  times decoder norms); 0, each input dimension's column (relu_l1's
  "inputs", the reference system's F.normalize(dim=1) of torch's [d_in,
  d_sae] weight); None, left free ("weighted", and batchtopk and jumprelu,
  whose decoder_norm is not applied)."""
  if spec.arch not in ("relu_l1", "topk"):
    return None
  return {"unit": 1, "inputs": 0}.get(spec.decoder_norm)


def factored_weight_grads(spec: SAESpec) -> bool:
  """Whether W_enc and W_dec enter the training loss only through the
  encoder and decoder affine maps, so that their gradients can be taken as
  factors (base.FACTOR_TAPS): relu_l1, unless its L1 is weighted by decoder
  norms (a second path to W_dec). TopK decodes from its k latents by a
  gather, and the others are not checked (tests/test_fused_adam.py checks
  the factors against autodiff)."""
  return spec.arch == "relu_l1" and spec.decoder_norm != "weighted"


def get_arch(name: str) -> types.ModuleType:
  if name not in ARCHS:
    raise ValueError(f"unknown SAE architecture {name!r}; choose one of "
                     f"{sorted(ARCHS)}")
  return ARCHS[name]


def init_params(spec: SAESpec, rng: jax.Array) -> Params:
  return base.init_params(spec, get_arch(spec.arch).extra_params(spec), rng)


def encode(spec: SAESpec, params: Params, x: jax.Array,
           train: bool = False) -> jax.Array:
  """Float[batch d_in] (normalised units) -> Float[batch d_sae] activations."""
  return get_arch(spec.arch).activation(spec, params,
                                        pre_activation(params, x), train)


def _fixed_pre_bias(spec: SAESpec, params: Params) -> Params:
  if spec.learn_pre_bias:
    return params
  # a fixed pre-bias (the data's centring)
  return dict(params, b_dec=jax.lax.stop_gradient(params["b_dec"]))


def forward(spec: SAESpec, params: Params, x: jax.Array, train: bool):
  """Returns (x_hat, acts, pre)."""
  params = _fixed_pre_bias(spec, params)
  pre = pre_activation(params, x)
  acts = get_arch(spec.arch).activation(spec, params, pre, train)
  return decode(params, acts), acts, pre


def train_terms(spec: SAESpec, params: Params, x: jax.Array, dead_mask,
                hp):
  """The training step's forward pass on Float[batch d_in] x: returns
  ({"mse", "sparsity", "aux"}, Float[d_sae] firing counts, batch_stats)."""
  return get_arch(spec.arch).train_terms(spec, _fixed_pre_bias(spec, params),
                                         x, dead_mask, hp)


__all__ = ["ARCHS", "SAESpec", "TOP_K_METHODS", "Params", "get_arch",
           "init_params", "encode", "decode", "forward", "pre_activation",
           "train_terms"]
