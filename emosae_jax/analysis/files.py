"""The analysis's files: analysis.json, the arrays, figures, report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from emosae_jax import data
from emosae_jax.analysis.summary import Result

ANALYSIS_FILE = "analysis.json"
ARRAYS_FILE = "analysis_arrays.safetensors"


def write(result: Result, out: str | Path, report: bool = True) -> Path:
  """Writes analysis.json, the arrays, the figures and report.html."""
  from safetensors.numpy import save_file

  from emosae_jax import report as report_lib
  from emosae_jax.analysis import figures as analysis_figures
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  tensors = {k: np.ascontiguousarray(v) for k, v in result.arrays.items()
             if v.dtype != bool}
  tensors.update({k: v.astype(np.uint8) for k, v in result.arrays.items()
                  if v.dtype == bool})
  data.atomic_write(out / ARRAYS_FILE, lambda tmp: save_file(tensors, tmp))
  figures = analysis_figures.write_all(result, out)
  result.summary["figures"] = {k: p.name for k, p in figures.items()}
  data.atomic_write_json(out / ANALYSIS_FILE, result.summary)
  if report:
    report_lib.write_analysis_report(result.summary, figures,
                                     out / "report.html")
  return out / ANALYSIS_FILE


def load_arrays(directory: str | Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  path = Path(directory) / ARRAYS_FILE
  if not path.exists():
    raise data.DataError(f"{directory}: no {ARRAYS_FILE}; run "
                         "scripts/analyze.py first")
  return load_file(str(path))


def load_summary(directory: str | Path) -> dict[str, Any]:
  path = Path(directory) / ANALYSIS_FILE
  if not path.exists():
    raise data.DataError(f"{directory}: no {ANALYSIS_FILE}; run "
                         f"scripts/analyze.py --workdir={directory} first")
  return json.loads(path.read_text())
