"""Exports steering directions (read by bridge/directions.py).

The export format (directions.safetensors + directions.json) is defined in
emosae_jax/directions_format.py. Directions are in RAW embedding units. Three
kinds (directions.json "kinds"):
  consensus   per emotion, the consensus across seeds of the member's
              configuration's robust features (analysis/consensus.py), a
              unit direction in normalised units / scale; typical_activation
              is the analysis' `scale` (the best single feature's typical
              displacement), so the vector added at strength 1 is
              consensus * scale / normaliser.scale. Always robust.
  feature     the decoder row W_dec[f] (normalised units) mapped back through
              the input normalisation, Normalizer.direction_to_raw(W_dec[f])
              = W_dec[f] / scale. typical_activation is the feature's mean
              activation on its emotion's prompts where it fires, in the
              SAE's activation units, so typical_activation * direction is
              the raw-unit displacement the feature usually makes (decoding
              is linear). Robust when analysis' directions/robust says so.
  class_mean  the baseline per emotion: the unit class-mean direction
              (normalised units) / scale, with the emotion's consensus scale
              (else the class-mean difference's own norm).
Order: robust consensus directions first, then robust features, then the
rest (other features, then class means); among features, broad before
narrow (analysis/breadth.py; directions.json "tiers"), so that steering the
first directions per emotion steers the robust, broad ones. With --features only those
features are exported. The SAEs are read only through emosae_jax.runs, which
pairs a sweep's global member indices with their parameter rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from emosae_jax import analysis, data, runs
from emosae_jax import directions_format as fmt


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
                    top_per_emotion: int = 1,
                    robust: np.ndarray | None = None,
                    broad: np.ndarray | None = None) -> list[int]:
  """The best significant features per emotion: robust ones first (when
  `robust`, Bool[m], is given), then broad ones (when `broad` is), then
  lowest p, then highest AUROC."""
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
  not_robust = (np.ones_like(sig) if robust is None else ~robust)
  narrow = (np.ones_like(sig) if broad is None else ~broad)
  chosen, missing = [], []
  for name in wanted:
    feats = np.flatnonzero(sig & (emo == names.index(name)))
    order = np.lexsort((-stat[feats], p[feats], narrow[feats],
                        not_robust[feats]))
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

  From the analysis in `analysis_dir` (default: the workdir): per emotion
  (all emotions, or `emotions`) the consensus direction where the analysis
  found one, the `top_per_emotion` best significant features (robust ones
  first) and the class-mean baseline; or exactly `features`. `member` is a
  sweep's global member index; `workdir` may be its group or the sweep's
  top folder (the member's group is found), and the analysis defaults to
  that group's folder.
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
  robust = arrays.get(ROBUST, np.zeros((position + 1, m), bool))[position]
  broad = arrays.get(BROAD)  # None: analysed before tiers existed
  broad = None if broad is None else broad[position].astype(bool)
  derived = []
  if features is None:
    features = select_features(summary, arrays, position, emotions,
                               top_per_emotion, robust, broad)
    derived = derived_entries(summary, arrays, index, emotions)
  features = [int(f) for f in features]
  bad = [f for f in features if not 0 <= f < m]
  if bad:
    raise data.DataError(f"feature id(s) {bad} out of range [0, {m})")
  dead = [f for f in features if arrays["fires"][position, f] == 0]
  if dead:
    raise data.DataError(f"feature(s) {dead} never fire on the analysed "
                         "prompts; their typical activation is undefined")
  normalizer = runs.normalizer_of(members.info)
  entries = order_entries(
      [feature_entry(summary, arrays, position, f, w_dec, normalizer,
                     bool(robust[f]), broad) for f in features]
      + [dict(e, vector=normalizer.direction_to_raw(e["vector"]))
         for e in derived])
  meta = entries_meta(entries)
  meta.update(
      site=fmt.check_site(members.info.get("site") or dict(fmt.T5_OUTPUT),
                          str(members.workdir)),
      encoder=_encoder(members.info, summary),
      source={"workdir": str(Path(members.workdir).resolve()),
              "member": index,
              "data_hash": members.info.get("content_hash"),
              "analysis_data_hash": summary["source"].get("data_hash"),
              "arch": members.configs[row]["model"]["arch"], "d_sae": m})
  vectors = np.stack([e["vector"] for e in entries]).astype(np.float32)
  return write_export(out, vectors, meta)


# --------------------------------------------------------------------------
# Entries: one per exported direction


ROBUST = "directions/robust"
BROAD = "broad"
_PER_ENTRY = {"feature_ids": "id", "emotions": "emotion",
              "selectivity": "selectivity", "p_values": "p_value",
              "q_values": "q_value", "auroc": "auroc",
              "significant": "significant",
              "typical_activation": "typical_activation", "kinds": "kind",
              "robust": "robust", "details": "details", "tiers": "tier"}


def feature_entry(summary: dict, arrays: dict, position: int, f: int,
                  w_dec: np.ndarray, normalizer: data.Normalizer,
                  robust: bool, broad: np.ndarray | None = None) -> dict:
  """broad: Bool[m] of the member (None: no tiers in the analysis)."""
  e = int(arrays["emotion"][position, f])
  significant = bool(arrays["significant"][position, f])
  pick = lambda key: float(arrays[key][position, f])
  return {"kind": "feature", "id": f,
          "emotion": summary["data"]["label_names"][e],
          "vector": normalizer.direction_to_raw(w_dec[f]),
          "selectivity": pick("selectivity"), "p_value": pick("p_value"),
          "q_value": pick("q_value"),
          "auroc": float(arrays["auroc"][position, e, f]),
          "significant": significant,
          "typical_activation": pick("typical_activation"),
          "robust": robust, "details": None,
          "tier": (analysis.tier(bool(broad[f]))
                   if broad is not None and significant else None)}


def derived_entries(summary: dict, arrays: dict, index: int,
                    emotions: Sequence[str] | None = None) -> list[dict]:
  """The consensus (where found) and class-mean entries per emotion of
  member `index`'s configuration, vectors in NORMALISED units. Empty for
  an analysis written before directions existed."""
  dirs = summary.get("directions")
  if not dirs or "directions/class_mean" not in arrays:
    return []
  g = next(g for g, group in enumerate(dirs["groups"])
           if index in group["members"])
  names = summary["data"]["label_names"]
  out = []
  for name in emotions or names:
    e = names.index(name)
    record = dirs["groups"][g]["emotions"].get(name) or {}
    comparison = record.get("comparison") or {}
    scale = float(arrays["directions/scale"][g, e])
    consensus = arrays["directions/consensus"][g, e]
    if np.all(np.isfinite(consensus)):
      out.append(_derived("consensus", name, consensus, scale, True, dict(
          record["consensus"], **comparison.get("consensus", {}),
          configuration=dirs["groups"][g]["overrides"]),
                          record["consensus"].get("tier")))
    mean = arrays["directions/class_mean"][e].astype(np.float64)
    norm = float(np.linalg.norm(mean))
    if norm > 0:
      out.append(_derived(
          "class_mean", name, mean / norm, scale if np.isfinite(scale)
          else norm, False, dict(comparison.get("class_mean", {}), norm=norm,
                                 scale=("best feature's typical displacement"
                                        if np.isfinite(scale)
                                        else "class-mean difference norm"))))
  return out


def _derived(kind: str, emotion: str, unit: np.ndarray, scale: float,
             robust: bool, details: dict, tier: str | None = None) -> dict:
  return {"kind": kind, "id": None, "emotion": emotion,
          "vector": np.asarray(unit, np.float64), "selectivity": None,
          "p_value": None, "q_value": None,
          "auroc": details.get("auroc_corpus"), "significant": None,
          "typical_activation": scale, "robust": robust, "details": details,
          "tier": tier}


def order_entries(entries: list[dict]) -> list[dict]:
  """Robust consensus, robust features, then the rest (features before
  class means), broad features before narrow ones (or untiered) within
  each, each in emotion order as given; non-feature directions get ids -1,
  -2, ... in that order."""
  narrow = lambda e: int(e.get("tier") != "broad")
  rank = lambda e: ((0, 0) if e["robust"] and e["kind"] == "consensus" else
                    (1, narrow(e)) if e["robust"] else
                    (2, narrow(e)) if e["kind"] == "feature" else (3, 0))
  entries = sorted(entries, key=rank)
  ids = iter(range(-1, -len(entries) - 1, -1))
  return [e if e["kind"] == "feature" else dict(e, id=next(ids))
          for e in entries]


def entries_meta(entries: list[dict]) -> dict:
  """The per-direction lists of directions.json."""
  return {key: [e[field] for e in entries]
          for key, field in _PER_ENTRY.items()}


def steering_choice(meta: dict, per_emotion: int) -> list[int]:
  """Feature ids (negative for consensus directions) to steer with: per
  emotion the first `per_emotion` directions in export order, class-mean
  baselines left out, so robust directions are steered first."""
  kinds = meta.get("kinds") or ["feature"] * len(meta["feature_ids"])
  taken: dict[str, int] = {}
  chosen = []
  for f, e, kind in zip(meta["feature_ids"], meta["emotions"], kinds):
    if kind != "class_mean" and taken.get(e, 0) < per_emotion:
      taken[e] = taken.get(e, 0) + 1
      chosen.append(int(f))
  return chosen


def write_export(out: str | Path, directions: np.ndarray, meta: dict) -> Path:
  """Tensor first, JSON last, each written atomically."""
  return fmt.write(out, directions, meta)


def load_meta(out: str | Path) -> dict:
  return fmt.read_meta(out)


def load_export(out: str | Path) -> tuple[np.ndarray, dict]:
  """(directions [n, d_model] float32, directions.json) of an export."""
  return fmt.read(out)
