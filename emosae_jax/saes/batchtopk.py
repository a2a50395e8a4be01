"""BatchTopK SAE (Bussmann et al. 2024): keep the k * batch largest
activations across the whole batch, so examples can use more or fewer than k.

At inference a single threshold replaces the batch-level top-k: it is an
exponential moving average of the smallest kept activation per training
batch, stored as the (non-trained) parameter `threshold`.
"""

import jax
import jax.numpy as jnp

from emosae_jax.saes import base


def extra_params(spec):
  del spec
  return (("threshold", lambda key: jnp.zeros(())),)

_EMA = 0.99


def _batch_topk(pre, k):
  relu = jax.nn.relu(pre)
  flat = relu.reshape(-1)
  n_keep = min(k * pre.shape[0], flat.shape[0])
  top, idx = jax.lax.top_k(flat, n_keep)
  kept = jnp.zeros_like(flat).at[idx].set(top)
  return kept.reshape(pre.shape), top[-1]


def activation(spec, params, pre, train: bool):
  if train:
    return _batch_topk(pre, spec.k)[0]
  relu = jax.nn.relu(pre)
  return jnp.where(relu > params["threshold"], relu, 0.0)


def loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, hp):
  del acts, hp
  return {"mse": base.reconstruction_mse(x, x_hat),
          "sparsity": jnp.zeros(()),
          "aux": base.aux_k_loss(spec, params, x, x_hat, pre, dead_mask)}


def batch_stats(spec, params, pre, acts):
  """The smallest kept activation of this batch (for the threshold EMA),
  read off the training activations rather than a second top-k."""
  del spec, params, pre
  kept = jnp.where(acts > 0, acts, jnp.inf)
  return jax.lax.stop_gradient(jnp.min(kept))


def post_update(spec, params, min_kept):
  del spec
  old = params["threshold"]
  new = jnp.where(old > 0, _EMA * old + (1 - _EMA) * min_kept, min_kept)
  return dict(params, threshold=new)
