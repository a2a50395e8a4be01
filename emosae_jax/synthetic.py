"""Planted-dictionary data: a known right answer for SAE and analysis tests.

x = sum_i c_i f_i + noise, with unit-norm ground-truth features f_i in d
dims, sparse non-negative coefficients c_i, and firing probabilities that
decay with i (a few common features, many rare ones). Optionally each
example gets a label, and each label owns a group of features that fire
far more often on its examples: the analysis must find exactly those.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from emosae_jax import data


@dataclasses.dataclass
class SyntheticData:
  embedding_set: data.EmbeddingSet
  features: np.ndarray  # float32 [n_features, d], unit rows
  coefficients: np.ndarray  # float32 [n, n_features]
  label_features: dict[int, list[int]]  # label -> its planted features


def make_synthetic(n_examples: int = 8192, d: int = 64,
                   n_features: int = 256, avg_active: float = 4.0,
                   noise: float = 0.01, n_labels: int = 0,
                   features_per_label: int = 4, label_boost: float = 0.6,
                   seed: int = 0) -> SyntheticData:
  """Draws a planted-dictionary data set (see module docstring).

  `label_boost` is the firing probability of a label's own features on that
  label's examples; they stay at their background rate elsewhere.
  """
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(n_features, d))
  features /= np.linalg.norm(features, axis=1, keepdims=True)
  decay = 1.0 / (1.0 + np.arange(n_features) / (n_features / 8))
  probs = np.clip(decay * avg_active / decay.sum(), 0, 1)
  probs = probs[rng.permutation(n_features)]
  firing = rng.random((n_examples, n_features)) < probs
  labels = np.full(n_examples, -1, np.int32)
  label_features = {}
  if n_labels:
    labels = rng.integers(0, n_labels, n_examples).astype(np.int32)
    owned = rng.permutation(n_features)[:n_labels * features_per_label]
    for lab in range(n_labels):
      feats = owned[lab * features_per_label:(lab + 1) * features_per_label]
      label_features[lab] = sorted(int(f) for f in feats)
      boost = rng.random((n_examples, len(feats))) < label_boost
      firing[:, feats] |= boost & (labels == lab)[:, None]
  coefficients = firing * rng.uniform(0.5, 1.5, size=firing.shape)
  x = coefficients @ features + noise * rng.normal(size=(n_examples, d))
  names = [f"label{i}" for i in range(n_labels)]
  es = data.make_embedding_set(
      x, labels, names, texts=[f"synthetic {i}" for i in range(n_examples)],
      encoder={"name": "synthetic", "revision": f"seed{seed}"},
      pooling="none")
  return SyntheticData(es, features.astype(np.float32),
                       coefficients.astype(np.float32), label_features)


def make_reference_like(n_examples: int = 100, d: int = 768, rank: int = 48,
                        n_features: int = 192, avg_active: float = 6.0,
                        signal_fraction: float = 0.6, spread: float = 0.1,
                        offset: float = 0.15, n_labels: int = 4,
                        seed: int = 0) -> SyntheticData:
  """A stand-in for the reference system's 100 mean-pooled t5-base
  embeddings (which are not available here), in raw units like them.

  Each example is a shared offset (per-dimension std `offset`: every T5
  embedding sits far from the origin) plus a planted-dictionary part whose
  features lie in a `rank`-dimensional subspace (sentences share structure)
  and isotropic noise, which a held-out example cannot borrow from the
  training set. The varying part has per-dimension std `spread`, of which
  `signal_fraction` of the variance is the planted part.
  """
  rng = np.random.default_rng(seed)
  basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]  # [d, rank]
  inner = make_synthetic(n_examples, rank, n_features, avg_active, 0.0,
                         n_labels=n_labels, seed=seed)
  signal = inner.embedding_set.embeddings @ basis.T
  signal -= signal.mean(0)
  signal *= np.sqrt(signal_fraction * d) * spread / np.sqrt(
      np.mean(np.sum(signal ** 2, 1)))
  noise = rng.normal(size=(n_examples, d))
  noise *= np.sqrt((1 - signal_fraction) * d) * spread / np.sqrt(
      np.mean(np.sum(noise ** 2, 1)))
  x = offset * rng.normal(size=d) + signal + noise
  es = inner.embedding_set
  es = data.make_embedding_set(
      x, es.labels, es.label_names, texts=es.texts,
      encoder={"name": "synthetic-reference-like", "revision": f"seed{seed}"},
      pooling="none")
  return SyntheticData(es, (inner.features @ basis.T).astype(np.float32),
                       inner.coefficients, inner.label_features)


def make_t5_like(n_examples: int = 100, d: int = 768, n_labels: int = 4,
                 cos_between: float = 0.494, cos_within: float = 0.560,
                 spread: float = 0.1, power: float = 1.0,
                 seed: int = 0) -> SyntheticData:
  """A second stand-in for the reference's 100 mean-pooled t5-base
  embeddings, built from what is published about them instead of a planted
  dictionary: 25 prompts per emotion whose mean pairwise cosine is 0.494
  between emotions and 0.560 within one (the reference's own figures).

  x = offset + class mean + within-class part. With o, c, w their squared
  norms and T the sum, cosines are (o - c/3) / T between and (o + c) / T
  within (4 class means summing to 0), so o/T = 0.51, c/T = 0.05, w/T =
  0.44: a large shared offset (anisotropy) and a small class signal. The
  varying parts have a power-law spectrum (variance of the i-th of d random
  orthogonal directions ~ i^-power, as text embeddings' PCA spectra fall)
  and per-dimension std `spread`. There is no sparse ground truth:
  `features` is empty.
  """
  rng = np.random.default_rng(seed)
  c_share = (cos_within - cos_between) * (n_labels - 1) / n_labels
  o_share = cos_within - c_share
  basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
  scales = (1.0 + np.arange(d)) ** (-power / 2)

  def draw(n):
    z = rng.normal(size=(n, d)) * scales @ basis.T
    return z / np.sqrt(np.mean(np.sum(z ** 2, 1)))  # unit mean square norm

  labels = np.arange(n_examples) % n_labels
  means = draw(n_labels)
  means -= means.mean(0)
  varying_sq = d * spread ** 2  # c + w
  total = varying_sq / (1 - o_share)
  class_part = means / np.sqrt(np.mean(np.sum(means ** 2, 1))) * np.sqrt(
      c_share * total)
  within = draw(n_examples) * np.sqrt((1 - o_share - c_share) * total)
  offset = rng.normal(size=d)
  offset *= np.sqrt(o_share * total) / np.linalg.norm(offset)
  x = offset + class_part[labels] + within
  names = [f"label{i}" for i in range(n_labels)]
  es = data.make_embedding_set(
      x, labels.astype(np.int32), names,
      texts=[f"synthetic {i}" for i in range(n_examples)],
      encoder={"name": "synthetic-t5-like", "revision": f"seed{seed}"},
      pooling="none")
  return SyntheticData(es, np.zeros((0, d), np.float32),
                       np.zeros((n_examples, 0), np.float32), {})
