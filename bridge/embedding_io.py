"""Writes embedding sets for the bridge, through emosae_jax.data.

emosae_jax.data imports only numpy and safetensors, so the bridge can use it
in environments without jax (audiocraft's pins clash with jax); a test runs
the bridge's imports in a subprocess and fails if jax gets loaded. This
module adds what extraction needs on top: writing from plain arrays, and
reading or refreshing a set's sidecar for the extraction cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from emosae_jax import data

TENSOR_FILE = data.TENSOR_FILE
SIDECAR_FILE = data.SIDECAR_FILE
content_hash = data.content_hash
# Sidecar keys that describe the data itself; provenance is everything else.
_DATA_KEYS = {"format_version", "n", "d", "content_hash", "label_names",
              "labels", "texts", "groups", "extra_tensors"}


def write_embedding_set(path: str | os.PathLike, embeddings: np.ndarray,
                        labels, label_names: list[str], texts: list[str],
                        groups: list[str] | None = None,
                        extra: dict[str, np.ndarray] | None = None,
                        **meta: Any) -> Path:
  """Writes folder `path`: tensors first, sidecar last, each atomically.

  embeddings: float32 [N, d]; labels: int [N] (-1 = unlabelled);
  extra: tensors with leading dimension N (e.g. token_states [N, L, d]).
  `meta` keys are stored in the sidecar as provenance.
  """
  es = data.make_embedding_set(embeddings, labels, label_names, texts,
                               groups, **meta)
  es.extra = dict(extra or {})
  return data.save_embedding_set(es, path)


def update_sidecar(path: str | os.PathLike, **meta: Any) -> dict:
  """Rewrites the sidecar's provenance keys (not the data-bearing ones)."""
  if _DATA_KEYS & set(meta):
    raise ValueError(f"cannot update {sorted(_DATA_KEYS & set(meta))}; "
                     "rewrite the set instead")
  sidecar = read_sidecar(path)
  if sidecar is None:
    raise ValueError(f"no embedding set at {path}")
  sidecar.update(meta)
  data.atomic_write_json(Path(path) / SIDECAR_FILE, sidecar)
  return sidecar


def read_sidecar(path: str | os.PathLike) -> dict | None:
  """The sidecar of the set at `path`, or None if there is no complete set."""
  path = Path(path)
  sidecar = path / SIDECAR_FILE
  if not sidecar.is_file() or not (path / TENSOR_FILE).is_file():
    return None
  try:
    return json.loads(sidecar.read_text())
  except json.JSONDecodeError:
    return None
