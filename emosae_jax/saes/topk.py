"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per example.

Sparsity is fixed by k, so there is no sparsity penalty; AuxK revives dead
latents by asking them to explain the residual.
"""

import jax
import jax.numpy as jnp

from emosae_jax.saes import base


def extra_params(spec):
  del spec
  return ()


def activation(spec, params, pre, train: bool):
  del params, train
  return base.topk_relu_rows(pre, spec.k, base.uses_counting(spec))


def loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, hp):
  del acts, hp
  return {"mse": base.reconstruction_mse(x, x_hat),
          "sparsity": jax.numpy.zeros(()),
          "aux": base.aux_k_loss(spec, params, x, x_hat, pre, dead_mask)}


def train_terms(spec, params, x, dead_mask, hp):
  """loss_terms' values for a training step, plus per-latent firing counts.

  While no latent is dead (no AuxK), the step touches only the k active
  latents of each row after the encoder matmul: base.topk_pre_activation
  and base.sparse_decode replace three of its five dense matmuls. With
  dead latents it is the plain formula. A real branch, so the sparse path
  pays nothing for AuxK; under vmap (sweeps) both run.

  When counting (base.uses_counting: on accelerators, where the dense
  matmuls are cheap and the top-k is not), each row keeps its entries at or
  above its k-th largest, densely, with AuxK behind base.with_aux_k."""
  del hp
  if base.uses_counting(spec):
    return _counted_train_terms(spec, params, x, dead_mask)

  def sparse(operands):
    params, x = operands
    top, indices = base.topk_pre_activation(params, x, spec.k)
    values = base.relu(top)
    x_hat = (base.sparse_decode(params["W_dec"], values, indices)
             + params["b_dec"])
    counts = jnp.zeros((spec.d_sae,), x.dtype).at[indices.reshape(-1)].add(
        jnp.sign(values).reshape(-1))
    return ({"mse": base.reconstruction_mse(x, x_hat),
             "sparsity": jnp.zeros(()), "aux": jnp.zeros(())},
            jax.lax.stop_gradient(counts))

  def dense(operands):
    params, x = operands
    pre = base.pre_activation(params, x)
    acts = activation(spec, params, pre, True)
    x_hat = base.decode(params, acts)
    return (loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, None),
            base.firing_counts(acts))

  terms, counts = jax.lax.cond(jnp.any(dead_mask), dense, sparse, (params, x))
  return terms, counts, None


def _counted_train_terms(spec, params, x, dead_mask):
  pre = base.pre_activation(params, x)
  threshold = jax.lax.stop_gradient(base.row_kth_largest(pre, spec.k))
  threshold = threshold[:, None]
  mse, aux, acts = base.with_aux_k(spec, base.threshold_reconstruct, pre,
                                   params["W_dec"], params["b_dec"], x,
                                   threshold, dead_mask)
  return ({"mse": mse, "sparsity": jnp.zeros(()), "aux": aux},
          base.firing_counts(acts), None)


def post_update(spec, params, batch_stats):
  """Nothing: with decoder_norm="unit" the step renormalises decoder rows
  (saes.decoder_unit_axis), so the top-k compares activations on one
  scale."""
  del spec, batch_stats
  return params
