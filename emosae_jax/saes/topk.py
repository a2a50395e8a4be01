"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per example.

Sparsity is fixed by k, so there is no sparsity penalty; AuxK revives dead
latents by asking them to explain the residual.
"""

import jax

from emosae_jax.saes import base


def extra_params(spec):
  del spec
  return ()


def activation(spec, params, pre, train: bool):
  del params, train
  return jax.nn.relu(base.topk_mask_rows(pre, spec.k))


def loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, hp):
  del acts, hp
  return {"mse": base.reconstruction_mse(x, x_hat),
          "sparsity": jax.numpy.zeros(()),
          "aux": base.aux_k_loss(spec, params, x, x_hat, pre, dead_mask)}


def post_update(spec, params, batch_stats):
  """With decoder_norm="unit", decoder rows are renormalised after each
  step, so the top-k compares activations on one scale (SAELens gets the
  same by ranking activations times decoder norms)."""
  del batch_stats
  return base.unit_decoder_rows(params) if spec.decoder_norm == "unit" else (
      params)
