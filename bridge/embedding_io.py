"""Writes embedding sets in emosae_jax.data's on-disk format, without jax.

The bridge runs in environments without jax (audiocraft pins clash with it),
so it cannot import emosae_jax.data through the package. This module writes
the same two files, byte-compatible:

  embeddings.safetensors   "embeddings": float32 [N, d] (+ extra tensors)
  embeddings.json          sidecar: format_version, n, d, content_hash,
                           label_names, labels, texts, groups, extra_tensors,
                           plus provenance (encoder, revision, pooling, ...)

`content_hash` must stay identical to emosae_jax.data.content_hash; a test
checks that a set written here loads with emosae_jax.data.load_embedding_set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

FORMAT_VERSION = 1
TENSOR_FILE = "embeddings.safetensors"
SIDECAR_FILE = "embeddings.json"


def content_hash(embeddings: np.ndarray, labels, texts: list[str]) -> str:
  """sha256 over the embedding bytes, labels and texts (hex, 16 chars)."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(embeddings, np.float32).tobytes())
  h.update(np.ascontiguousarray(labels, np.int32).tobytes())
  h.update("\x00".join(texts).encode())
  return h.hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


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
  x = np.ascontiguousarray(embeddings, np.float32)
  labels = np.asarray(labels, np.int32)
  texts = list(texts)
  groups = [str(g) for g in groups] if groups is not None else [""] * len(x)
  extra = dict(extra or {})
  _check(x, labels, label_names, texts, groups, extra)
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tensors = {"embeddings": x}
  tensors.update({k: np.ascontiguousarray(v) for k, v in extra.items()})
  tmp = path / f".{TENSOR_FILE}.tmp{os.getpid()}"
  save_file(tensors, str(tmp))
  os.replace(tmp, path / TENSOR_FILE)
  sidecar = dict(meta)
  sidecar.update(
      format_version=FORMAT_VERSION, n=int(x.shape[0]), d=int(x.shape[1]),
      content_hash=content_hash(x, labels, texts),
      label_names=list(label_names), labels=labels.tolist(), texts=texts,
      groups=groups, extra_tensors=sorted(extra))
  _atomic_write(path / SIDECAR_FILE,
                (json.dumps(sidecar, indent=2) + "\n").encode())
  return path


def _check(x, labels, label_names, texts, groups, extra) -> None:
  """Same rules as emosae_jax.data.validate, so the reader never refuses."""
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"embeddings must be a non-empty [N, d] array, got "
                     f"shape {x.shape}")
  n = x.shape[0]
  if not np.all(np.isfinite(x)):
    raise ValueError("embeddings contain NaN or inf")
  if labels.shape != (n,) or len(texts) != n or len(groups) != n:
    raise ValueError(f"need one label, text and group per row: {n} rows, "
                     f"{labels.shape} labels, {len(texts)} texts, "
                     f"{len(groups)} groups")
  if n and (labels.min() < -1 or labels.max() >= len(label_names)):
    raise ValueError(f"labels must lie in [-1, {len(label_names) - 1}]")
  for k, v in extra.items():
    if v.shape[:1] != (n,):
      raise ValueError(f"extra tensor {k!r} has shape {v.shape}, expected "
                       f"leading dimension {n}")


def update_sidecar(path: str | os.PathLike, **meta: Any) -> dict:
  """Rewrites the sidecar's provenance keys (not the data-bearing ones)."""
  fixed = {"format_version", "n", "d", "content_hash", "label_names",
           "labels", "texts", "groups", "extra_tensors"}
  if fixed & set(meta):
    raise ValueError(f"cannot update {sorted(fixed & set(meta))}; rewrite "
                     "the set instead")
  sidecar = read_sidecar(path)
  if sidecar is None:
    raise ValueError(f"no embedding set at {path}")
  sidecar.update(meta)
  _atomic_write(Path(path) / SIDECAR_FILE,
                (json.dumps(sidecar, indent=2) + "\n").encode())
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
