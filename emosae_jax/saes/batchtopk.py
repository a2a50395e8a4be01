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


def _top_values(x, k):
  top, idx = jax.lax.top_k(x, k)
  # Keeping idx alive keeps XLA's top-k kernel; with values alone it sorts
  # whole rows, which was 30x slower.
  return jax.lax.optimization_barrier((top, idx))[0]


def batch_threshold(pre, k, counting):
  """The (k * batch)-th largest relu(pre) of the batch. counting: one
  kth_largest over all of it (on accelerators, whose top-k sorts), at 2
  ways: on an H200 (TF32, 4096 x 6144) the step ran 449-458 steps/s at 2
  ways and 323 at 8, though 8 ways was the faster alone (0.48 against
  0.95 ms)."""
  if counting:
    return base.kth_largest(jax.nn.relu(pre).reshape(-1),
                            min(k * pre.shape[0], pre.size))
  return _candidate_threshold(pre, k)


def _candidate_threshold(pre, k):
  """The (k * batch)-th largest relu(pre) of the batch, without a top-k over
  all batch x d_sae entries (at 4096 x 6144 that one took about as long as
  a matmul). Candidates: each row's 2k largest, except that the 64 rows
  whose 2k-th is largest (rows of large norm keep more than their share)
  give their 16k largest. The threshold among the candidates is exact when
  every row's smallest candidate is below it (each entry left out is then
  below it too); otherwise the full top-k decides."""
  batch, d_sae = pre.shape
  n_keep = min(k * batch, pre.size)
  c1, c2, n_rows = min(2 * k, d_sae), min(16 * k, d_sae), min(64, batch)
  first = jax.nn.relu(_top_values(pre, c1))
  wide_rows = _top_values_and_rows(first[:, -1], n_rows)
  second = jax.nn.relu(_top_values(pre[wide_rows], c2))
  first = first.at[wide_rows].set(-1.0)  # replaced by their wider lists
  threshold = base.kth_largest(jnp.concatenate([first.reshape(-1),
                                                second.reshape(-1)]), n_keep)
  # Candidates at 0 cannot hide larger entries; a row whose smallest
  # candidate is positive and >= the threshold may.
  smallest = jnp.concatenate([first[:, -1], second[:, -1]])
  exact_needed = jnp.any((smallest >= threshold) & (smallest > 0))

  def exact(_):
    return _top_values(jax.nn.relu(pre).reshape(-1), n_keep)[-1]

  return jax.lax.cond(exact_needed, exact, lambda _: threshold, None)


def _top_values_and_rows(values, n):
  return jax.lax.top_k(values, n)[1]


def train_terms(spec, params, x, dead_mask, hp):
  """loss_terms' values for a training step, plus per-latent firing counts
  and the batch's smallest kept activation (for the threshold EMA). Keeps
  relu(pre) >= the batch threshold: the same set as the top-k (ties at the
  threshold aside)."""
  del hp
  pre = base.pre_activation(params, x)
  threshold = jax.lax.stop_gradient(batch_threshold(pre, spec.k,
                                                    base.uses_counting(spec)))
  mse, aux, acts = base.with_aux_k(spec, base.threshold_reconstruct, pre,
                                   params["W_dec"], params["b_dec"], x,
                                   threshold, dead_mask)
  return ({"mse": mse, "sparsity": jnp.zeros(()), "aux": aux},
          base.firing_counts(acts), _smallest_kept(acts, threshold))


def _smallest_kept(acts, threshold):
  """The smallest non-zero activation: the threshold, unless fewer than
  k * batch entries were positive (threshold 0)."""
  return jax.lax.stop_gradient(jax.lax.cond(
      threshold > 0, lambda _: threshold,
      lambda _: jnp.min(jnp.where(acts > 0, acts, jnp.inf)), None))


def post_update(spec, params, min_kept):
  del spec
  old = params["threshold"]
  new = jnp.where(old > 0, _EMA * old + (1 - _EMA) * min_kept, min_kept)
  return dict(params, threshold=new)
