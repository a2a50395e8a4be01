"""Causal checks with a linear emotion probe: ablating and steering with a
feature direction, against random directions of the same norm. Because the
probe is linear in x, both reduce to shifts of the probe's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emosae_jax.analysis.settings import DeviceSpec

_CAUSAL_BATCH = 64  # features per vmapped batch in the causal checks


def _softmax_at(logits, e):
  return jax.nn.softmax(logits, -1)[..., e]


def _slope(s, y):
  s = s - s.mean()
  return jnp.sum(s * (y - y.mean(-1, keepdims=True)), -1) / jnp.sum(s * s)


def _causal_one(spec: DeviceSpec, base_logits, labels, steer_logits,
                steer_labels, rand_u, a, u, e, typical, norm):
  """Ablation and steering effects of one feature on the probe.

  base_logits: Float[N, K] probe logits of the prompts, labels: Int[N];
  steer_logits, steer_labels: the same for the rows the steering check uses
  (a fixed subset when N is large); a: Float[N] activations; u: Float[K]
  probe-logit change per unit activation (W_dec[f] @ W_probe); e: the
  feature's emotion; typical: its typical activation; norm:
  |typical * W_dec[f]|; rand_u: Float[R, K] probe logits of unit random
  directions.
  """
  own = (labels == e).astype(jnp.float32)
  other = 1.0 - own
  p_base = _softmax_at(base_logits, e)
  drop = p_base - _softmax_at(base_logits - a[:, None] * u[None], e)
  own_drop = jnp.sum(drop * own) / jnp.sum(own)
  other_drop = jnp.sum(drop * other) / jnp.sum(other)
  s = jnp.asarray(spec.strengths, jnp.float32)
  other = (steer_labels != e).astype(jnp.float32)
  steered = steer_logits[None] + (s * typical)[:, None, None] * u  # [S,N,K]
  dose = jnp.sum(_softmax_at(steered, e) * other, -1) / jnp.sum(other)
  rand = (steer_logits[None, None] + (s * norm)[:, None, None, None]
          * rand_u[None, :, None, :])  # [S, R, N, K]
  dose_random = jnp.sum(_softmax_at(rand, e).mean(1) * other, -1) / jnp.sum(
      other)
  return {"ablation_own": own_drop, "ablation_other": other_drop,
          "dose": dose, "dose_random": dose_random,
          "slope": _slope(s, dose), "slope_random": _slope(s, dose_random)}


def _n_causal(requested: int, m: int) -> int:
  # A multiple of the batch when above it, so lax.map needs no remainder.
  n = min(requested, m)
  return n if n <= _CAUSAL_BATCH else n // _CAUSAL_BATCH * _CAUSAL_BATCH


def fit_probe(x: np.ndarray, labels: np.ndarray, n_labels: int,
              groups: np.ndarray | None = None) -> dict:
  """Multinomial logistic regression on x [N, d]; W [d, K], b [K] and its
  3-fold cross-validated accuracy (folds by group when there are groups)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GroupKFold, StratifiedKFold

  def fit(xs, ys):
    return LogisticRegression(C=1.0, max_iter=2000).fit(xs, ys)

  n_groups = len(np.unique(groups)) if groups is not None else 0
  if n_groups >= 3:
    folds, how = GroupKFold(3).split(x, labels, groups), "3-fold by group"
  else:
    folds = StratifiedKFold(3, shuffle=True, random_state=0).split(x, labels)
    how = "3-fold stratified"
  scores = []
  for tr, te in folds:
    if len(np.unique(labels[tr])) == n_labels:
      scores.append(float(fit(x[tr], labels[tr]).score(x[te], labels[te])))
  model = fit(x, labels)
  w, b = model.coef_, model.intercept_
  if n_labels == 2:  # sklearn keeps one logit for two classes
    w, b = np.stack([-w[0] / 2, w[0] / 2]), np.array([-b[0] / 2, b[0] / 2])
  return {"w": np.asarray(w.T, np.float32), "b": np.asarray(b, np.float32),
          "accuracy_train": float(model.score(x, labels)),
          "accuracy_cv": float(np.mean(scores)) if scores else None,
          "cv": how}


def steering_rows(seed: int, n: int, most: int) -> np.ndarray:
  """Int[min(n, most)]: the rows of the steering check, a fixed random
  subset when n is large (its cost is strengths x directions x rows)."""
  if n <= most:
    return np.arange(n, dtype=np.int32)
  rng = np.random.default_rng(seed + 2)
  return np.sort(rng.choice(n, most, replace=False)).astype(np.int32)


def random_directions(seed: int, n: int, d: int) -> np.ndarray:
  g = jax.random.normal(jax.random.PRNGKey(seed + 1), (n, d))
  return np.asarray(g / jnp.linalg.norm(g, axis=1, keepdims=True))


