"""Exports SAE decoder directions for steering (read by bridge/directions.py).

The export format (directions.safetensors + directions.json) is defined in
emosae_jax/directions_format.py. Directions are in RAW embedding units: the
decoder row W_dec[f] (normalised units) mapped back through the input
normalisation, Normalizer.direction_to_raw(W_dec[f]) = W_dec[f] / scale.
typical_activation is the feature's mean activation on its emotion's prompts
where it fires, in the SAE's activation units, so typical_activation *
direction is the raw-unit displacement the feature usually makes (decoding
is linear: a_f W_dec[f] in normalised units is a_f W_dec[f] / scale raw).
The SAEs are read only through emosae_jax.runs, which pairs a sweep's
global member indices with their parameter rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from emosae_jax import analysis, checkpoint, data, runs
from emosae_jax import directions_format as fmt
from emosae_jax.directions_format import (  # noqa: F401  (re-exported)
    FORMAT_VERSION, META_FILE, TENSORS_FILE)


def member_position(summary: dict, member: int | None) -> int:
  """Position in the analysis arrays of sweep member `member` (None: first)."""
  indices = [m["index"] for m in summary["members"]]
  if member is None:
    return 0
  if member not in indices:
    raise data.DataError(f"member {member} is not in the analysis; it has "
                         f"members {indices}")
  return indices.index(member)


def select_features(summary: dict, arrays: dict, position: int,
                    emotions: Sequence[str] | None = None,
                    top_per_emotion: int = 1) -> list[int]:
  """The best significant features per emotion (lowest p, then AUROC)."""
  names = summary["data"]["label_names"]
  wanted = list(emotions) if emotions else names
  unknown = [e for e in wanted if e not in names]
  if unknown:
    raise data.DataError(f"unknown emotion(s) {unknown}; the analysis has "
                         f"{names}")
  if top_per_emotion < 1:
    raise ValueError(f"--top_per_emotion must be >= 1, got {top_per_emotion}")
  sig = arrays["significant"][position].astype(bool)
  emo = arrays["emotion"][position]
  p = arrays["p_value"][position]
  stat = arrays["statistic"][position]
  chosen, missing = [], []
  for name in wanted:
    feats = np.flatnonzero(sig & (emo == names.index(name)))
    order = np.lexsort((-stat[feats], p[feats]))
    chosen += [int(f) for f in feats[order][:top_per_emotion]]
    if not len(feats):
      missing.append(name)
  if emotions and missing:
    raise data.DataError(
        f"no significant features for emotion(s) {missing} in member "
        f"{summary['members'][position]['index']}; pass --features=ID,... "
        "to export chosen features anyway")
  if not chosen:
    raise data.DataError(
        f"no significant features for {wanted} in member "
        f"{summary['members'][position]['index']}; pass --features=ID,... "
        "to export chosen features anyway")
  return chosen


def raw_directions(w_dec: np.ndarray, normalizer: data.Normalizer,
                   features: Sequence[int]) -> np.ndarray:
  """Float[n, d]: decoder rows of `features` in raw embedding units."""
  return np.stack([normalizer.direction_to_raw(w_dec[f]) for f in features]
                  ).astype(np.float32)


def _encoder(info: dict, summary: dict) -> dict:
  enc = info.get("encoder") or summary["source"].get("encoder") or {}
  if isinstance(enc, str):
    enc = {"name": enc}
  return {"name": enc.get("name", ""), "revision": enc.get("revision", "")}


def export_directions(workdir: str | Path, out: str | Path,
                      features: Sequence[int] | None = None,
                      member: int | None = None,
                      emotions: Sequence[str] | None = None,
                      top_per_emotion: int = 1,
                      analysis_dir: str | Path | None = None) -> Path:
  """Writes directions.safetensors + directions.json into `out`.

  Features come from the analysis in `analysis_dir` (default: the workdir):
  the `top_per_emotion` best significant ones per emotion (all emotions, or
  `emotions`), or exactly `features`. `member` is a sweep's global member
  index; `workdir` may be its group or the sweep's top folder (the member's
  group is found), and the analysis defaults to that group's folder.
  """
  if features is not None and emotions:
    raise ValueError("pass either --features or --emotions, not both")
  members = runs.load_members(workdir, member)
  if analysis_dir is None:  # the group's folder, else the folder passed
    analysis_dir = next((d for d in (members.workdir, Path(workdir))
                         if (d / analysis.ANALYSIS_FILE).exists()),
                        members.workdir)
  summary = analysis.load_summary(analysis_dir)
  arrays = analysis.load_arrays(analysis_dir)
  position = member_position(summary, member)
  index = summary["members"][position]["index"]
  if index not in members.indices:
    raise data.DataError(f"{analysis_dir}: the analysis is of member "
                         f"{index}, which is not among {members.workdir}'s "
                         f"finished members {members.indices}; analyse this "
                         "workdir first")
  row = members.indices.index(index)
  w_dec = members.params["W_dec"][row]
  m = w_dec.shape[0]
  if arrays["statistic"].shape[-1] != m:
    raise data.DataError(f"the analysis has {arrays['statistic'].shape[-1]} "
                         f"features but {workdir} has d_sae={m}; rerun "
                         "scripts/analyze.py on this workdir")
  if features is None:
    features = select_features(summary, arrays, position, emotions,
                               top_per_emotion)
  features = [int(f) for f in features]
  bad = [f for f in features if not 0 <= f < m]
  if bad:
    raise data.DataError(f"feature id(s) {bad} out of range [0, {m})")
  dead = [f for f in features if arrays["fires"][position, f] == 0]
  if dead:
    raise data.DataError(f"feature(s) {dead} never fire on the analysed "
                         "prompts; their typical activation is undefined")
  names = summary["data"]["label_names"]
  pick = lambda key: [float(arrays[key][position, f]) for f in features]
  emo = [int(arrays["emotion"][position, f]) for f in features]
  directions = raw_directions(w_dec, checkpoint.normalizer_of(members.info),
                              features)
  meta = {
      "site": dict(fmt.T5_OUTPUT),
      "feature_ids": features,
      "emotions": [names[e] for e in emo],
      "selectivity": pick("selectivity"),
      "p_values": pick("p_value"),
      "q_values": pick("q_value"),
      "auroc": [float(arrays["auroc"][position, e, f])
                for e, f in zip(emo, features)],
      "significant": [bool(arrays["significant"][position, f])
                      for f in features],
      "typical_activation": pick("typical_activation"),
      "encoder": _encoder(members.info, summary),
      "source": {"workdir": str(Path(members.workdir).resolve()),
                 "member": index,
                 "data_hash": members.info.get("content_hash"),
                 "analysis_data_hash": summary["source"].get("data_hash"),
                 "arch": members.configs[row]["model"]["arch"], "d_sae": m},
  }
  return write_export(out, directions, meta)


def write_export(out: str | Path, directions: np.ndarray, meta: dict) -> Path:
  """Tensor first, JSON last, each written atomically."""
  return fmt.write(out, directions, meta)


def load_meta(out: str | Path) -> dict:
  return fmt.read_meta(out)


def load_export(out: str | Path) -> tuple[np.ndarray, dict]:
  """(directions [n, d_model] float32, directions.json) of an export."""
  return fmt.read(out)
