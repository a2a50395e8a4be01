"""Steering directions exported by the JAX side, as torch tensors.

The format (directions.safetensors + directions.json, raw T5 units, with a
`site`) is defined once, in emosae_jax/directions_format.py (numpy only);
this module turns it into torch tensors. Strength is in units of a
feature's typical activation: steering adds
strength * typical_activation * direction. Besides SAE features an export
may hold consensus directions across seeds and class-mean baselines (see
`kinds`; their feature ids are negative), robust ones first.

This module never imports jax: the bridge runs in environments without it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from emosae_jax import directions_format as fmt
from emosae_jax.directions_format import DirectionsError

_PER_FEATURE = fmt.PER_FEATURE
RANDOM_EMOTION_PREFIX = "random:"


@dataclasses.dataclass(frozen=True)
class Directions:
  """n steering directions with their per-direction metadata.

  vectors: float [n, d_model], raw T5 units.
  typical_activation: float [n], same dtype and device as `vectors`.
  selectivity, p_values: NaN for directions that are not features.
  kinds: "feature" | "consensus" | "class_mean" per direction (default:
    all features); robust: per direction (default: none); details: each
    direction's kind-specific record (consensus: spread, n_seeds, ...).
  meta: the rest of directions.json (encoder, source, site, ...).
  """
  vectors: torch.Tensor
  feature_ids: tuple[int, ...]
  emotions: tuple[str, ...]
  selectivity: tuple[float, ...]
  p_values: tuple[float, ...]
  typical_activation: torch.Tensor
  meta: dict = dataclasses.field(default_factory=dict)
  kinds: tuple[str, ...] = ()
  robust: tuple[bool, ...] = ()
  details: tuple[dict, ...] = ()

  def __post_init__(self):
    n = self.vectors.shape[0]
    for name, default in (("kinds", "feature"), ("robust", False),
                          ("details", None)):
      if not getattr(self, name):
        object.__setattr__(self, name, (default,) * n)

  def __len__(self) -> int:
    return self.vectors.shape[0]

  @property
  def d_model(self) -> int:
    return self.vectors.shape[1]

  def steering_vectors(self) -> torch.Tensor:
    """[n, d_model]: the vector added at strength 1 (direction x typical act)."""
    return self.vectors * self.typical_activation[:, None]

  def to(self, dtype: torch.dtype | None = None,
         device: torch.device | str | None = None) -> Directions:
    return dataclasses.replace(
        self, vectors=self.vectors.to(device=device, dtype=dtype),
        typical_activation=self.typical_activation.to(device=device,
                                                      dtype=dtype))

  def take(self, rows: Sequence[int]) -> Directions:
    """The directions at `rows`, in that order."""
    rows = list(rows)
    index = torch.tensor(rows, dtype=torch.long, device=self.vectors.device)
    pick = lambda xs: tuple(xs[i] for i in rows)
    return dataclasses.replace(
        self, vectors=self.vectors[index], feature_ids=pick(self.feature_ids),
        emotions=pick(self.emotions), selectivity=pick(self.selectivity),
        p_values=pick(self.p_values),
        typical_activation=self.typical_activation[index],
        kinds=pick(self.kinds), robust=pick(self.robust),
        details=pick(self.details))

  def select(self, features: Iterable[int] | None = None,
             emotions: Iterable[str] | None = None) -> Directions:
    """Directions whose feature id is in `features` or emotion in `emotions`.

    Both None selects everything. Export order is kept. Unknown ids or
    emotions raise DirectionsError listing what the export holds.
    """
    features = None if features is None else [int(f) for f in features]
    emotions = None if emotions is None else [str(e) for e in emotions]
    if features is None and emotions is None:
      return self
    unknown = [f for f in features or () if f not in self.feature_ids]
    if unknown:
      raise DirectionsError(
          f"unknown feature id(s) {unknown}; this export has feature ids "
          f"{list(self.feature_ids)}")
    unknown = [e for e in emotions or () if e not in self.emotions]
    if unknown:
      raise DirectionsError(
          f"unknown emotion(s) {unknown}; this export has emotions "
          f"{sorted(set(self.emotions))}")
    rows = [i for i, (f, e) in enumerate(zip(self.feature_ids, self.emotions))
            if f in (features or ()) or e in (emotions or ())]
    return self.take(rows)

  def check_d_model(self, d_model: int, target: str = "the model") -> None:
    """Raises DirectionsError unless these directions fit a d_model encoder."""
    if self.d_model != d_model:
      raise DirectionsError(
          f"directions have d_model={self.d_model} but {target}'s T5 encoder "
          f"has d_model={d_model}; export directions from an SAE trained on "
          f"this encoder's embeddings")

  def random_like(self, seed: int = 0) -> Directions:
    """Random Gaussian directions, each with the norm of its counterpart.

    Same feature ids and typical activations, so a strength adds a vector of
    the same norm as the real feature: the dose-response control. Emotions
    become "random:<emotion>".
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(self.vectors.shape, generator=gen, dtype=torch.float64)
    norms = self.vectors.double().norm(dim=1, keepdim=True)
    vectors = noise / noise.norm(dim=1, keepdim=True) * norms
    return dataclasses.replace(
        self, vectors=vectors.to(self.vectors),
        emotions=tuple(RANDOM_EMOTION_PREFIX + e for e in self.emotions))


def load_directions(path: str | os.PathLike,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Directions:
  """Reads an export folder; DirectionsError on a missing or malformed one."""
  vectors, meta = fmt.read(Path(path))
  per = {k: meta.pop(k) for k in _PER_FEATURE + tuple(
      fmt.OPTIONAL_PER_DIRECTION)}
  number = lambda x: float("nan") if x is None else float(x)
  return Directions(
      vectors=torch.from_numpy(vectors).to(device=device, dtype=dtype),
      feature_ids=tuple(int(f) for f in per["feature_ids"]),
      emotions=tuple(str(e) for e in per["emotions"]),
      selectivity=tuple(number(s) for s in per["selectivity"]),
      p_values=tuple(number(p) for p in per["p_values"]),
      typical_activation=torch.tensor(per["typical_activation"], dtype=dtype,
                                      device=device),
      meta=meta, kinds=tuple(str(k) for k in per["kinds"]),
      robust=tuple(bool(r) for r in per["robust"]),
      details=tuple(per["details"]))


def save_directions(path: str | os.PathLike, directions: np.ndarray,
                    meta: dict) -> Path:
  """Writes an export folder from numpy (for tests and baselines).

  directions: float [n, d_model], raw T5 units. meta: the per-feature lists
  (feature_ids, emotions, selectivity, p_values, typical_activation) plus
  optional site, encoder and source dicts; format_version and d_model are
  filled in. Each file is written atomically.
  """
  return fmt.write(path, directions, meta)
