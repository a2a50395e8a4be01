"""`analyze`: the whole analysis of a training run or sweep workdir."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emosae_jax import checkpoint
from emosae_jax.analysis.device import compute, group_ids
from emosae_jax.analysis.loading import check_inputs, load_data, load_members
from emosae_jax.analysis.settings import Settings
from emosae_jax.analysis.summary import Result, summarize


def analyze(workdir: str | Path, data_path: str | None = None,
            settings: Settings = Settings(), progress: bool = False
            ) -> Result:
  """The whole analysis of a training run or sweep workdir."""
  members = load_members(workdir)
  es = load_data(members, data_path)
  check_inputs(members, es, settings.min_support)
  if settings.permutations < 1:
    raise ValueError(f"--permutations must be >= 1, got "
                     f"{settings.permutations}")
  if not 0 < settings.fdr < 1:
    raise ValueError(f"--fdr must lie in (0, 1), got {settings.fdr}")
  labelled = np.flatnonzero(es.labels >= 0)
  normalizer = checkpoint.normalizer_of(members.info)
  x = normalizer.apply(es.embeddings[labelled]).astype(np.float32)
  groups = group_ids([es.groups[r] for r in labelled])
  arrays, extras = compute(members.sae, members.params, x,
                           es.labels[labelled], len(es.label_names), groups,
                           settings, progress)
  summary = summarize(members, es, arrays, extras, settings, labelled)
  return Result(summary, arrays, members.params["W_dec"])


