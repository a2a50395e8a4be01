"""Embedding sets on disk, input normalisation, and train/validation splits.

An embedding set is a folder holding

  embeddings.safetensors   tensor "embeddings": float32 [N, d]
                           (optional extra tensors, e.g. per-token states)
  embeddings.json          sidecar: format version, label names, integer
                           labels, prompt texts, group (template) ids, encoder
                           name and revision, pooling, content hash, and any
                           extra provenance.

It is the only data format that crosses from the torch side (`bridge`, which
writes it) to the JAX side (which reads it). This module imports only numpy
and safetensors, never jax, so the bridge uses it in environments without
jax. Label -1 means "unlabelled"
(e.g. neutral prompts); every other label indexes `label_names`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from emosae_jax.errors import UserError

FORMAT_VERSION = 1
TENSOR_FILE = "embeddings.safetensors"
SIDECAR_FILE = "embeddings.json"


class DataError(UserError, ValueError):
  """Bad input data; the message says what is wrong and how to fix it."""


@dataclasses.dataclass
class EmbeddingSet:
  """In-memory embedding set. Arrays are numpy; `meta` is the JSON sidecar."""

  embeddings: np.ndarray  # float32 [N, d]
  labels: np.ndarray  # int32 [N], -1 = unlabelled
  label_names: list[str]
  texts: list[str]
  groups: list[str]  # template / group id per example ("" when unknown)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def dim(self) -> int:
    return int(self.embeddings.shape[1])

  def __len__(self) -> int:
    return int(self.embeddings.shape[0])

  def subset(self, index: np.ndarray) -> "EmbeddingSet":
    index = np.asarray(index)
    return dataclasses.replace(
        self,
        embeddings=self.embeddings[index],
        labels=self.labels[index],
        texts=[self.texts[i] for i in index],
        groups=[self.groups[i] for i in index],
        extra={k: v[index] for k, v in self.extra.items()},
    )


def content_hash(embeddings: np.ndarray, labels: np.ndarray,
                 texts: list[str]) -> str:
  """sha256 over the embedding bytes, labels and texts (hex, 16 chars)."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(embeddings, np.float32).tobytes())
  h.update(np.ascontiguousarray(labels, np.int32).tobytes())
  h.update("\x00".join(texts).encode())
  return h.hexdigest()[:16]


def make_embedding_set(embeddings, labels, label_names, texts=None,
                       groups=None, **meta) -> EmbeddingSet:
  """Builds and validates an EmbeddingSet; fills texts/groups when absent."""
  embeddings = np.asarray(embeddings, np.float32)
  n = embeddings.shape[0] if embeddings.ndim else 0
  labels = np.asarray(labels).astype(np.int32)
  texts = list(texts) if texts is not None else [""] * n
  groups = [str(g) for g in groups] if groups is not None else [""] * n
  es = EmbeddingSet(embeddings, labels, list(label_names), texts, groups,
                    dict(meta))
  validate(es)
  es.meta["content_hash"] = content_hash(embeddings, labels, texts)
  return es


def validate(es: EmbeddingSet, expected_dim: int | None = None,
             source: str = "embedding set") -> None:
  """Raises DataError naming the first problem found."""
  x = es.embeddings
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise DataError(f"{source}: embeddings must be a non-empty 2-D array "
                    f"[N, d], got shape {tuple(x.shape)}")
  n, d = x.shape
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
    raise DataError(f"{source}: {bad} of {n} embeddings contain NaN or inf; "
                    "re-extract them or drop those rows")
  if es.labels.shape != (n,):
    raise DataError(f"{source}: {es.labels.shape[0] if es.labels.ndim else 0}"
                    f" labels for {n} embeddings; need exactly one per row")
  k = len(es.label_names)
  if n and (es.labels.min() < -1 or es.labels.max() >= k):
    raise DataError(f"{source}: labels must lie in [-1, {k - 1}] for "
                    f"{k} label names {es.label_names}, got range "
                    f"[{es.labels.min()}, {es.labels.max()}]")
  if len(es.texts) != n or len(es.groups) != n:
    raise DataError(f"{source}: {len(es.texts)} texts and {len(es.groups)} "
                    f"group ids for {n} embeddings; need one each per row")
  for name, arr in es.extra.items():
    if arr.shape[:1] != (n,):
      raise DataError(f"{source}: extra tensor {name!r} has leading "
                      f"dimension {arr.shape[:1]}, expected {n}")
  if expected_dim is not None and d != expected_dim:
    raise DataError(f"{source}: embeddings have dimension {d} but the config "
                    f"expects d_in={expected_dim}; set --config.model.d_in={d}"
                    " or use matching data")


def short_reason(error: BaseException, limit: int = 120) -> str:
  """An exception's message on one short line (for wrapping library errors
  whose messages run long)."""
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def atomic_write(path: str | os.PathLike, write) -> Path:
  """Calls write(tmp) for a temporary file beside `path`, then renames it
  into place, so a killed run never leaves a half-written `path`.

  The temporary name keeps the extension, for writers that go by it.
  """
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
  try:
    write(str(tmp))
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default)
                            + "\n").encode())


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o)}")


def save_embedding_set(es: EmbeddingSet, path: str | os.PathLike) -> Path:
  """Writes `es` into folder `path` (created); both files written atomically.

  The tensor file is written first and the sidecar last, so a folder with a
  sidecar always has a complete tensor file beside it.
  """
  validate(es)
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tensors = {"embeddings": np.ascontiguousarray(es.embeddings, np.float32)}
  for k, v in es.extra.items():
    tensors[k] = np.ascontiguousarray(v)
  atomic_write(path / TENSOR_FILE, lambda tmp: save_file(tensors, tmp))
  meta = dict(es.meta)
  meta.update(
      format_version=FORMAT_VERSION,
      n=len(es), d=es.dim,
      content_hash=content_hash(es.embeddings, es.labels, es.texts),
      label_names=es.label_names,
      labels=es.labels.tolist(),
      texts=es.texts,
      groups=es.groups,
      extra_tensors=sorted(es.extra),
  )
  atomic_write_json(path / SIDECAR_FILE, meta)
  return path


def load_embedding_set(path: str | os.PathLike,
                       expected_dim: int | None = None) -> EmbeddingSet:
  """Loads and validates an embedding set folder; raises DataError."""
  path = Path(path)
  if path.is_file() and path.name in (TENSOR_FILE, SIDECAR_FILE):
    path = path.parent
  tensor_file, sidecar = path / TENSOR_FILE, path / SIDECAR_FILE
  if not tensor_file.exists() or not sidecar.exists():
    raise DataError(f"no embedding set at {path}: expected {TENSOR_FILE} and "
                    f"{SIDECAR_FILE} there (write one with scripts/extract.py "
                    "or scripts/import_embeddings.py)")
  try:
    meta = json.loads(sidecar.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{sidecar}: not valid JSON ({e})") from None
  if meta.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{sidecar}: format_version {meta.get('format_version')}"
                    f" is not the supported version {FORMAT_VERSION}")
  try:
    tensors = load_file(str(tensor_file))
  except Exception as e:  # pylint: disable=broad-except  # SafetensorError
    raise DataError(f"{tensor_file}: damaged or truncated safetensors file "
                    f"({short_reason(e)}); write the set again") from None
  if "embeddings" not in tensors:
    raise DataError(f"{tensor_file}: no tensor named 'embeddings'")
  x = tensors.pop("embeddings").astype(np.float32)
  meta = dict(meta)
  es = EmbeddingSet(
      embeddings=x,
      labels=np.asarray(meta.pop("labels"), np.int32),
      label_names=list(meta.pop("label_names")),
      texts=list(meta.pop("texts")),
      groups=[str(g) for g in meta.pop("groups")],
      meta=meta,
      extra=tensors,
  )
  validate(es, expected_dim, source=str(path))
  if meta.get("content_hash") != content_hash(es.embeddings, es.labels,
                                              es.texts):
    raise DataError(f"{path}: content hash does not match the data; the "
                    "files were changed or mixed from two sets")
  return es


# --------------------------------------------------------------------------
# Normalisation


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """x_norm = (x - mean) * scale, with the mean norm of x_norm = sqrt(d).

  Remembered with each run so that decoder directions can be mapped back to
  raw embedding units: a direction v in normalised units is v / scale raw.
  """

  mean: np.ndarray  # float32 [d]
  scale: float

  def apply(self, x):
    return (x - self.mean) * self.scale

  def invert(self, x_norm):
    return x_norm / self.scale + self.mean

  def direction_to_raw(self, v):
    """A displacement in normalised units, expressed in raw units."""
    return v / self.scale

  def to_dict(self) -> dict:
    return {"mean": np.asarray(self.mean).tolist(), "scale": float(self.scale)}

  @classmethod
  def from_dict(cls, d: dict) -> "Normalizer":
    return cls(np.asarray(d["mean"], np.float32), float(d["scale"]))

  @classmethod
  def identity(cls, dim: int) -> "Normalizer":
    return cls(np.zeros(dim, np.float32), 1.0)


def fit_normalizer(x: np.ndarray, center: bool = True) -> Normalizer:
  """Fits the SAELens-style normalisation on (training) embeddings `x`."""
  x = np.asarray(x, np.float32)
  mean = x.mean(0) if center else np.zeros(x.shape[1], np.float32)
  norms = np.linalg.norm(x - mean, axis=1)
  mean_norm = float(norms.mean())
  if mean_norm <= 0:
    raise DataError("all embeddings are identical; nothing to learn")
  return Normalizer(mean.astype(np.float32), float(np.sqrt(x.shape[1])
                                                   / mean_norm))


# --------------------------------------------------------------------------
# Splits


def split_indices(n: int, groups: list[str] | None, val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic train/validation split, by group id when groups exist.

  With groups, whole groups go to validation (about `val_fraction` of the
  examples), so validation measures generalisation to unseen templates.
  Returns sorted index arrays (train, val); val may be empty if
  val_fraction == 0.
  """
  if not 0 <= val_fraction < 1:
    raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
  rng = np.random.default_rng(seed)
  if val_fraction == 0 or n < 2:
    return np.arange(n), np.arange(0)
  unique = sorted(set(groups)) if groups else []
  if len(unique) >= 2:
    order = rng.permutation(len(unique))
    group_of = {g: i for i, g in enumerate(unique)}
    counts = np.bincount([group_of[g] for g in groups], minlength=len(unique))
    val_groups, taken = set(), 0
    for gi in order:
      if taken >= val_fraction * n:
        break
      if taken + counts[gi] > 0.5 * n and val_groups:
        continue
      val_groups.add(unique[gi])
      taken += counts[gi]
    is_val = np.array([g in val_groups for g in groups])
  else:
    perm = rng.permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    is_val = np.zeros(n, bool)
    is_val[perm[:n_val]] = True
  return np.flatnonzero(~is_val), np.flatnonzero(is_val)
