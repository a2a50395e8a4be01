"""The directions export format, defined once (numpy + safetensors only).

Written by emosae_jax/export.py, read by bridge/directions.py (which turns
it into torch tensors). An export is a folder holding
  directions.safetensors  tensor "directions", float32 [n, d_model], RAW
                          embedding units: the SAE decoder row mapped back
                          through the input normalisation (W_dec[f] / scale);
                          NOT unit-normalised.
  directions.json         {"format_version": 1, "d_model", "site",
                          "feature_ids", "emotions", "selectivity",
                          "p_values", "typical_activation", "encoder":
                          {"name", "revision"}, "source": {"workdir",
                          "member", "data_hash", ...}, ...}
Kinds of direction (per-direction list "kinds"; files without it hold
features only):
  feature     an SAE decoder row; feature_ids[i] is the feature.
  consensus   the consensus across seeds of one configuration's robust
              features of an emotion (emosae_jax/analysis/consensus.py):
              a unit direction in normalised units, mapped to raw units
              (/ scale); typical_activation is the analysis' `scale`, the
              best single feature's typical displacement, so strength s
              adds s * scale * consensus / normaliser.scale.
  class_mean  the baseline: mean normalised training embedding of the
              emotion minus the others' mean, as a unit direction in
              normalised units mapped to raw units, with the same
              typical_activation as the emotion's consensus.
Directions that are not features have negative feature_ids (-1, -2, ...
in export order), unique in the export, and null selectivity / p_values.
"robust" marks robust directions (every consensus; a feature significant,
reappearing across seeds and holding on validation). "details" holds each
direction's kind-specific record (consensus: spread, n_seeds, features).
"tiers" holds each direction's breadth tier (emosae_jax/analysis/breadth.py):
"broad" (a significant feature firing on >= the analysis' broad_support of
its emotion's examples; a consensus of broad features), "narrow", or null
(class means, features that are not significant, files written before the
field: read as null). Exports list robust directions first, broad before
narrow.
`site` says where in the model the directions live and are added:
{"kind": "t5_output"} (the T5 encoder's output, what MusicGen conditions
on) or {"kind": "decoder_layer", "layer": L}. Files written before the
field existed are read as t5_output.

typical_activation is the feature's mean activation where it fires (SAE
units), so strength s adds s * typical_activation * direction. The tensor
is written first and the JSON last, each atomically, so a folder with a
directions.json always has a complete tensor beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from emosae_jax import data
from emosae_jax.errors import UserError

FORMAT_VERSION = 1
TENSORS_FILE = "directions.safetensors"
META_FILE = "directions.json"
TENSOR_NAME = "directions"
# Per-feature lists in directions.json, each of length n.
PER_FEATURE = ("feature_ids", "emotions", "selectivity", "p_values",
               "typical_activation")
# Optional per-direction lists, with the value files written before them
# imply.
OPTIONAL_PER_DIRECTION = {"kinds": "feature", "robust": False,
                          "details": None, "tiers": None}
TIERS = ("broad", "narrow", None)
KINDS = ("feature", "consensus", "class_mean")
T5_OUTPUT = {"kind": "t5_output"}
SITE_KINDS = ("t5_output", "decoder_layer")


class DirectionsError(UserError, ValueError):
  """Bad export or bad selection; the message is one line for the user."""


def decoder_layer(layer: int) -> dict:
  return {"kind": "decoder_layer", "layer": int(layer)}


def check_site(site: dict, where: str) -> dict:
  if not isinstance(site, dict) or site.get("kind") not in SITE_KINDS:
    raise DirectionsError(f"{where}: site {site!r} is not one of "
                          f"{list(SITE_KINDS)}")
  if site["kind"] == "decoder_layer" and not isinstance(site.get("layer"),
                                                        int):
    raise DirectionsError(f"{where}: a decoder_layer site needs an integer "
                          "'layer'")
  return site


def check(shape: Sequence[int], meta: dict, where: str) -> None:
  """Raises DirectionsError unless `meta` describes a tensor of `shape`."""
  if len(shape) != 2:
    raise DirectionsError(f"{where}: directions must be [n, d_model], got "
                          f"shape {list(shape)}")
  missing = [k for k in ("d_model",) + PER_FEATURE if k not in meta]
  if missing:
    raise DirectionsError(f"{where}: {META_FILE} lacks {missing}")
  if meta["d_model"] != shape[1]:
    raise DirectionsError(
        f"{where}: {META_FILE} says d_model={meta['d_model']} but the "
        f"tensor has {shape[1]} columns")
  for key in PER_FEATURE:
    if len(meta[key]) != shape[0]:
      raise DirectionsError(
          f"{where}: {key} has {len(meta[key])} entries for {shape[0]} "
          f"directions")
  for key in OPTIONAL_PER_DIRECTION:
    if key in meta and len(meta[key]) != shape[0]:
      raise DirectionsError(
          f"{where}: {key} has {len(meta[key])} entries for {shape[0]} "
          f"directions")
  unknown = sorted(set(meta.get("kinds", ())) - set(KINDS))
  if unknown:
    raise DirectionsError(f"{where}: unknown direction kind(s) {unknown}; "
                          f"known: {list(KINDS)}")
  odd = [t for t in meta.get("tiers", ()) if t not in TIERS]
  if odd:
    raise DirectionsError(f"{where}: unknown tier(s) {sorted(set(map(str, odd)))}"
                          f"; known: broad, narrow, null")
  check_site(meta.get("site", T5_OUTPUT), where)


def write(out: str | Path, directions: np.ndarray, meta: dict) -> Path:
  """Writes an export folder; fills in format_version, d_model and (if
  absent) site, encoder and source. Tensor first, JSON last, atomically."""
  from safetensors.numpy import save_file
  directions = np.ascontiguousarray(directions, dtype=np.float32)
  meta = {"format_version": FORMAT_VERSION,
          "d_model": int(directions.shape[-1]), "site": dict(T5_OUTPUT),
          "encoder": {"name": "", "revision": ""},
          "source": {"workdir": "", "member": 0, "data_hash": ""}, **meta}
  check(directions.shape, meta, str(out))
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  data.atomic_write(out / TENSORS_FILE,
                    lambda tmp: save_file({TENSOR_NAME: directions}, tmp))
  data.atomic_write_json(out / META_FILE, meta)
  return out


def read_meta(path: str | Path) -> dict:
  """directions.json, checked for version, with `site` filled in."""
  import json
  path = Path(path)
  meta_path = path / META_FILE
  if not (path / TENSORS_FILE).is_file() or not meta_path.is_file():
    raise DirectionsError(
        f"no directions export at {path} (expected {TENSORS_FILE} and "
        f"{META_FILE}; write one with scripts/export.py)")
  try:
    meta = json.loads(meta_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DirectionsError(f"{meta_path}: not valid JSON ({e})") from None
  version = meta.get("format_version")
  if version != FORMAT_VERSION:
    raise DirectionsError(
        f"{meta_path} has format_version {version}; this code reads "
        f"version {FORMAT_VERSION}")
  meta.setdefault("site", dict(T5_OUTPUT))  # written before sites existed
  for key, value in OPTIONAL_PER_DIRECTION.items():  # features only then
    meta.setdefault(key, [value] * len(meta.get("feature_ids", ())))
  return meta


def read(path: str | Path) -> tuple[np.ndarray, dict]:
  """(directions float32 [n, d_model], directions.json) of an export."""
  from safetensors.numpy import load_file
  path = Path(path)
  meta = read_meta(path)
  tensors_path = path / TENSORS_FILE
  try:
    tensors = load_file(str(tensors_path))
  except Exception as e:  # pylint: disable=broad-except  # SafetensorError
    raise DirectionsError(f"{tensors_path}: damaged or truncated safetensors "
                          f"file ({data.short_reason(e)})") from None
  if TENSOR_NAME not in tensors:
    raise DirectionsError(f"{tensors_path} has no tensor {TENSOR_NAME!r}")
  vectors = tensors[TENSOR_NAME]
  check(vectors.shape, meta, str(path))
  return vectors, meta
