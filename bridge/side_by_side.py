"""Steering methods side by side, on the same prompts and strengths.

    table = compare(["runs/steering", "runs/residual_steering"])

Reads each steering run's evaluation.json (bridge.evaluate's CLAP scores)
and puts in one table, for every non-zero strength:

  steer at <site>    the run's exported directions, at the site they name
                     (the T5 conditioning, or decoder layer L)
  random at <site>   random directions of the same norm, same strengths
  prompt edit        the emotion word written into the prompt (it has no
                     strength: the same clips stand in every strength's row)

Each row: the mean over its clips of the change from the unsteered baseline
of the same prompt in the same run, in P(clip's emotion) and in valence
(P(happy) - P(sad)), with the number of clips and the emotions steered
toward. The runs must share prompts and strengths (else the comparison
would not be fair and is refused). Numpy only: the CLAP scoring happens in
bridge.evaluate (score_missing runs it for runs not scored yet).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from emosae_jax.directions_format import DirectionsError
from emosae_jax.data import atomic_write_json

SIDE_BY_SIDE_FILE = "side_by_side.json"
EVALUATION_FILE = "evaluation.json"  # bridge.evaluate.EVALUATION_FILE


def site_label(site: dict | None) -> str:
  site = site or {"kind": "t5_output"}
  if site["kind"] == "decoder_layer":
    return f"decoder layer {site['layer']}"
  return "T5 conditioning"


def load_evaluation(steering_dir: str | os.PathLike) -> dict:
  path = Path(steering_dir) / EVALUATION_FILE
  if not path.is_file():
    raise DirectionsError(f"no {EVALUATION_FILE} in {steering_dir}; score "
                          "the run with scripts/evaluate.py first")
  return json.loads(path.read_text())


def score_missing(steering_dirs: Sequence[str | os.PathLike], clap: str,
                  device: str = "cpu") -> list[str]:
  """Scores (bridge.evaluate) every run without evaluation.json, loading
  CLAP once; returns the runs it scored."""
  todo = [d for d in steering_dirs
          if not (Path(d) / EVALUATION_FILE).is_file()]
  if todo:
    from bridge import evaluate  # torch only when something is to score
    loaded = evaluate.load_clap(clap, device)
    for d in todo:
      evaluate.evaluate_run(d, clap=clap, device=device, loaded_clap=loaded)
  return [str(d) for d in todo]


def _changes(clips: list[dict]) -> list[dict]:
  """Per non-baseline clip: the change from its prompt's baseline."""
  base = {c["base_prompt"]: c for c in clips if c["kind"] == "baseline"}
  out = []
  for c in clips:
    b = base.get(c["base_prompt"])
    if c["kind"] == "baseline" or b is None or not c.get("emotion"):
      continue
    out.append(dict(kind=c["kind"], strength=float(c["strength"]),
                    emotion=c["emotion"], prompt=c["base_prompt"],
                    target=c["probs"][c["emotion"]],
                    target_change=c["probs"][c["emotion"]]
                    - b["probs"][c["emotion"]],
                    valence=c["valence"],
                    valence_change=c["valence"] - b["valence"]))
  return out


def _row(method: str, kind: str, strength: float, changes: list[dict],
         site: dict | None = None) -> dict:
  mean = lambda k: (float(np.mean([c[k] for c in changes]))
                    if changes else None)
  sem = lambda k: (float(np.std([c[k] for c in changes], ddof=1)
                         / np.sqrt(len(changes))) if len(changes) > 1
                   else None)
  return dict(method=method, kind=kind, site=site, strength=strength,
              n=len(changes),
              emotions=sorted({c["emotion"] for c in changes}),
              target=mean("target"), target_change=mean("target_change"),
              target_change_sem=sem("target_change"),
              valence=mean("valence"), valence_change=mean("valence_change"),
              valence_change_sem=sem("valence_change"))


def _settings(steering_dir: Path) -> dict:
  run = json.loads((steering_dir / "steering.json").read_text())
  return run["settings"] | {"site": run["directions"].get("site")}


def compare(steering_dirs: Sequence[str | os.PathLike],
            out: str | os.PathLike | None = None) -> dict:
  """The side-by-side table of scored steering runs (see the module
  docstring); written to OUT/side_by_side.json when `out` is given."""
  if not steering_dirs:
    raise DirectionsError("no steering runs to compare")
  runs = []
  for d in map(Path, steering_dirs):
    evaluation = load_evaluation(d)
    runs.append((d, _settings(d), _changes(evaluation["clips"])))
  first = runs[0][1]
  for d, s, _ in runs[1:]:
    for field in ("prompts", "strengths"):
      if s[field] != first[field]:
        raise DirectionsError(
            f"{d} was steered with other {field} ({s[field]}) than "
            f"{runs[0][0]} ({first[field]}); steer both alike to compare")
  strengths = [s for s in first["strengths"] if s != 0]
  rows = []
  edits = [c for _, _, changes in runs for c in changes
           if c["kind"] == "prompt_edit"]
  for s in strengths:
    for d, settings, changes in runs:
      label = site_label(settings["site"])
      for kind, name in (("steer", "steer"), ("random", "random direction")):
        rows.append(_row(f"{name} at {label}", kind, s,
                         [c for c in changes if c["kind"] == kind
                          and c["strength"] == s], settings["site"]))
    rows.append(_row("prompt edit", "prompt_edit", s, edits))
  table = dict(format_version=1, strengths=strengths,
               prompts=first["prompts"],
               runs=[dict(path=str(d.resolve()), site=s["site"],
                          model=s.get("model"), backend=s.get("backend"))
                     for d, s, _ in runs],
               measure="mean change from the same prompt's unsteered "
                       "baseline in the same run (CLAP zero-shot)",
               rows=rows)
  if out is not None:
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / SIDE_BY_SIDE_FILE, table)
  return table
