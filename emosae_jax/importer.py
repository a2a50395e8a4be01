"""Import existing numpy results (embeddings.npy + labels.npy) as a set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emosae_jax import data


def import_numpy_folder(src: str | Path) -> data.EmbeddingSet:
  """Reads src/embeddings.npy [N, d], src/labels.npy [N] (ints or strings)
  and the optional src/metadata.json ({"emotions": [...], "texts": [...],
  "groups": [...], "encoder": ...}; label i = emotions[i])."""
  src = Path(src)
  if not src.is_dir():
    raise data.DataError(f"{src}: not a folder (expected embeddings.npy and "
                         "labels.npy inside)")
  for name in ("embeddings.npy", "labels.npy"):
    if not (src / name).exists():
      raise data.DataError(f"{src}: missing {name}")
  x = np.load(src / "embeddings.npy", allow_pickle=False)
  raw_labels = np.load(src / "labels.npy", allow_pickle=False)
  meta = {}
  if (src / "metadata.json").exists():
    try:
      meta = json.loads((src / "metadata.json").read_text())
    except json.JSONDecodeError as e:
      raise data.DataError(f"{src}/metadata.json: invalid JSON ({e})") from None
  labels, names = _labels_and_names(raw_labels, meta.get("emotions"))
  encoder = meta.get("encoder", {"name": "unknown", "revision": ""})
  if isinstance(encoder, str):
    encoder = {"name": encoder, "revision": ""}
  return data.make_embedding_set(
      x, labels, names, texts=meta.get("texts"), groups=meta.get("groups"),
      encoder=encoder, pooling=meta.get("pooling", "unknown"),
      provenance={"imported_from": str(src.absolute())})


def _labels_and_names(raw, emotions):
  if raw.dtype.kind in "US":  # string labels name themselves
    names = list(emotions) if emotions else sorted(set(raw.tolist()))
    unknown = sorted(set(raw.tolist()) - set(names))
    if unknown:
      raise data.DataError(f"labels {unknown} are not in metadata emotions "
                           f"{names}")
    return np.array([names.index(v) for v in raw.tolist()], np.int32), names
  if raw.dtype.kind not in "iu":
    raise data.DataError(f"labels.npy must hold integers or strings, got "
                         f"{raw.dtype}")
  k = int(raw.max()) + 1 if raw.size else 0
  names = list(emotions) if emotions else [f"label{i}" for i in range(k)]
  return raw.astype(np.int32), names
