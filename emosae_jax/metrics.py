"""SAE quality metrics (definitions in DESIGN.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np



def mse(x, x_hat):
  """Mean squared error per element."""
  return jnp.mean(jnp.square(x - x_hat))


def fvu(x, x_hat):
  """Fraction of variance unexplained on x [N, d] itself:
  sum((x - x_hat)^2) / sum((x - mean(x))^2), the mean being x's own; a
  denominator of 0 (all rows equal) is floored at 1e-12 so the ratio stays
  finite."""
  resid = jnp.sum(jnp.square(x - x_hat))
  total = jnp.sum(jnp.square(x - jnp.mean(x, axis=0)))
  return resid / jnp.maximum(total, 1e-12)


def heldout_fvu(x_test, x_hat, train_mean) -> float:
  """Held-out FVU (numpy; the one function every library is scored by):
  sum((x_test - x_hat)^2) / sum((x_test - train_mean)^2), so predicting the
  training mean scores 1.0. Raises ValueError when the denominator is 0."""
  x_test = np.asarray(x_test, np.float64)
  total = np.sum(np.square(x_test - np.asarray(train_mean, np.float64)))
  if not total > 0:
    raise ValueError("held-out FVU undefined: every test row equals the "
                     "training mean")
  return float(np.sum(np.square(x_test - np.asarray(x_hat, np.float64)))
               / total)


def pca_reconstruction(x_train, x_test, k: int):
  """x_test through the top-k principal components of x_train (numpy,
  float64): centred on the training mean, projected onto the k leading right
  singular vectors of the centred training rows, mean added back. The dense
  baseline for a sparse code with L0 = k: k = 0 predicts the training mean
  (held-out FVU 1.0), rank-k data is reproduced exactly."""
  x_train = np.asarray(x_train, np.float64)
  mean = x_train.mean(0)
  _, _, vt = np.linalg.svd(x_train - mean, full_matrices=False)
  basis = vt[:k]
  return mean + (np.asarray(x_test, np.float64) - mean) @ basis.T @ basis


def l0(acts):
  """Mean number of non-zero latents per example; acts: [N, d_sae]."""
  return jnp.mean(jnp.sum(acts != 0, axis=-1))


def firing_rate(acts):
  """Fraction of examples on which each latent is non-zero: [d_sae]."""
  return jnp.mean(acts != 0, axis=0)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval for a share k / n (95% at z = 1.96): the range a
  report should give beside "3 of 6 hold", where the share alone hides how
  little six features can say. (0, 1) when n is 0."""
  if n <= 0:
    return 0.0, 1.0
  p, z2 = k / n, z * z
  denom = 1 + z2 / n
  centre = (p + z2 / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
  return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def dead_fraction(acts):
  """Fraction of latents that never fire on `acts` (the training set)."""
  return jnp.mean(jnp.all(acts == 0, axis=0))


def mean_max_cosine(a, b):
  """Mean over rows of `a` of the best cosine with any row of `b`."""
  a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
  b = b / jnp.linalg.norm(b, axis=1, keepdims=True)
  return jnp.mean(jnp.max(a @ b.T, axis=1))


def dictionary_recovery(true_features, decoder):
  """Both directions of mean max cosine: true -> learned, learned -> true."""
  return {"true_to_learned": float(mean_max_cosine(true_features, decoder)),
          "learned_to_true": float(mean_max_cosine(decoder, true_features))}


def density_histogram(rates, bins: int = 40):
  """Histogram of log10 firing rates of live latents, plus the dead count."""
  rates = np.asarray(rates)
  live = rates[rates > 0]
  counts, edges = np.histogram(np.log10(live), bins=bins) if live.size else (
      np.zeros(bins, int), np.linspace(-6, 0, bins + 1))
  return {"log10_rate_edges": edges.tolist(), "counts": counts.tolist(),
          "dead": int(np.sum(rates == 0))}


@jax.jit
def _reduce(x, x_hat, acts):
  return {"mse": mse(x, x_hat), "fvu": fvu(x, x_hat), "l0": l0(acts)}


def reconstruction_report(x, x_hat, acts) -> dict:
  return {k: float(v) for k, v in _reduce(x, x_hat, acts).items()}
