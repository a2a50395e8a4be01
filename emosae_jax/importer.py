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
  encoder = encoder_of(meta)
  return data.make_embedding_set(
      x, labels, names, texts=meta.get("texts"), groups=meta.get("groups"),
      encoder=encoder, pooling=meta.get("pooling", "unknown"),
      provenance={"imported_from": str(src.absolute())})


# Keys under which exporters name their encoder, most specific first (the
# reference system's metadata.json says "model_name", not "encoder").
ENCODER_KEYS = ("encoder", "encoder_name", "text_encoder", "model_name",
                "model", "t5_model", "embedding_model", "model_id")
REVISION_KEYS = ("revision", "model_revision", "encoder_revision")


def encoder_of(meta: dict) -> dict:
  """{"name", "revision"} of the encoder a metadata.json names, else
  {"name": "unknown", ...}."""
  name = next((meta[k] for k in ENCODER_KEYS if meta.get(k)), "unknown")
  if isinstance(name, dict):  # {"name": ..., "revision": ...}
    return {"name": str(name.get("name") or "unknown"),
            "revision": str(name.get("revision") or "")}
  revision = next((meta[k] for k in REVISION_KEYS if meta.get(k)), "")
  return {"name": str(name), "revision": str(revision)}


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
