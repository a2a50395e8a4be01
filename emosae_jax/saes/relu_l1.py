"""ReLU + L1 (the reference system's SAE; Bricken et al. 2023).

`decoder_norm="unit"` renormalises decoder rows after every step (see
`saes.decoder_unit_axis`); `"weighted"` leaves them free and weights each
latent's L1 by its decoder norm, which removes the incentive to shrink
activations while growing decoder rows. The L1 sums over latents (mean over
the batch); `sparsity_over_latents="mean"` averages over them, as the
reference does.
`"inputs"` is the reference's renormalisation: each input dimension's
weights over the latents (a column of W_dec) at unit norm after each step.
"""

import jax
import jax.numpy as jnp

from emosae_jax.saes import base


def extra_params(spec):
  if not spec.output_bias:
    return ()
  return (("b_out", lambda key: jnp.zeros((spec.d_in,))),)


def activation(spec, params, pre, train: bool):
  del spec, params, train
  return jax.nn.relu(pre)


def loss_terms(spec, params, x, x_hat, pre, acts, dead_mask, hp):
  del pre, dead_mask, hp
  mse = base.reconstruction_mse(x, x_hat)
  weights = (base.decoder_norms(params) if spec.decoder_norm == "weighted"
             else jnp.ones((spec.d_sae,)))
  per_example = jnp.abs(acts) * weights
  # "mean" is the reference system's definition: d_sae times weaker.
  sparsity = jnp.mean(jnp.sum(per_example, axis=-1)
                      if spec.sparsity_over_latents == "sum"
                      else jnp.mean(per_example, axis=-1))
  return {"mse": mse, "sparsity": sparsity, "aux": jnp.zeros(())}


def train_terms(spec, params, x, dead_mask, hp):
  """loss_terms' values for a training step, plus per-latent firing counts;
  the L1 from per-latent column sums (a fast reduction) times the weights."""
  del dead_mask, hp
  acts = base.relu(base.pre_activation(params, x))
  mse = base.reconstruction_mse(x, base.decode(params, acts))
  totals = jnp.sum(acts, axis=0)  # acts >= 0: |acts| = acts
  weights = (base.decoder_norms(params) if spec.decoder_norm == "weighted"
             else 1.0)
  sparsity = jnp.sum(totals * weights) / x.shape[0]
  if spec.sparsity_over_latents == "mean":
    sparsity /= spec.d_sae
  return ({"mse": mse, "sparsity": sparsity, "aux": jnp.zeros(())},
          base.firing_counts(acts), None)


def post_update(spec, params, batch_stats):
  del spec, batch_stats  # the step renormalises (saes.decoder_unit_axis)
  return params
