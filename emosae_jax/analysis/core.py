"""`analyze`: the whole analysis of a training run or sweep workdir."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from emosae_jax import runs
from emosae_jax.analysis.breadth import broad_features, check_broad_support
from emosae_jax.analysis.consensus import robust_directions
from emosae_jax.analysis.device import compute, group_ids
from emosae_jax.analysis.loading import check_inputs, load_data, load_members
from emosae_jax.analysis.selection import choose, sweep_fvu
from emosae_jax.analysis.settings import Settings
from emosae_jax.analysis.stability import stability
from emosae_jax.analysis.summary import Result, summarize
from emosae_jax.analysis.validation import (load_validation_set, prefixed,
                                            validate)


def analyze(workdir: str | Path, data_path: str | None = None,
            settings: Settings = Settings(), progress: bool = False,
            validation: Sequence[str | Path] = (),
            select_on: str | Path | None = None) -> Result:
  """The whole analysis of a training run or sweep workdir.

  validation: other labelled embedding sets; every feature is tested on
  each as on the corpus, and the summary says which corpus-significant
  features hold there (see analysis.validation).
  select_on: one of `validation` (not the test split): robust features
  are those holding there (not on every set), and the summary's
  "selection" chooses the configuration and member by agreement there
  (analysis.selection); without it robust features hold on every set and
  there is no selection.
  """
  select_at = None
  if select_on is not None:
    paths = [str(p) for p in validation]
    if str(select_on) not in paths:
      raise ValueError(f"--select_on={select_on} is not among the "
                       f"validation sets {paths}")
    select_at = paths.index(str(select_on))
  members = load_members(workdir)
  es = load_data(members, data_path)
  check_inputs(members, es, settings.min_support)
  encoder = es.meta.get("encoder") or members.info.get("encoder")
  vsets = [load_validation_set(p, es.label_names, es.dim,
                               settings.min_support, encoder)
           for p in validation]
  if settings.permutations < 1:
    raise ValueError(f"--permutations must be >= 1, got "
                     f"{settings.permutations}")
  if not 0 < settings.fdr < 1:
    raise ValueError(f"--fdr must lie in (0, 1), got {settings.fdr}")
  check_broad_support(settings.broad_support)
  check_broad_support(settings.min_support_fraction, "min_support_fraction")
  labelled = np.flatnonzero(es.labels >= 0)
  normalizer = runs.normalizer_of(members.info)
  x = normalizer.apply(es.embeddings[labelled]).astype(np.float32)
  groups = group_ids([es.groups[r] for r in labelled])
  arrays, extras = compute(members.sae, members.params, x,
                           es.labels[labelled], len(es.label_names), groups,
                           settings, progress)
  arrays["broad"] = broad_features(arrays, settings.broad_support)
  validations = []
  for vset in vsets:
    v_arrays, info = validate(members, arrays, extras["probe_weights"], vset,
                              settings, progress)
    validations.append((v_arrays, info, vset))
  decoders = members.params["W_dec"]
  stab = stability(decoders, arrays["significant"], arrays["emotion"],
                   settings.stability_threshold, members.overrides)
  summary = summarize(members, es, arrays, extras, settings, labelled,
                      validations, stab)
  if select_at is not None:
    summary["selection"] = choose(summary, select_at,
                                  sweep_fvu(members.workdir))
  val_sets = []
  for vset in vsets:
    to_val = np.full(len(es.label_names), -1, np.int32)
    to_val[vset.train_index] = np.arange(len(vset.names))
    val_sets.append((normalizer.apply(vset.es.embeddings).astype(np.float32),
                     vset.es.labels, to_val))
  directions, dir_arrays = robust_directions(
      decoders, arrays, stab, members.overrides, members.indices,
      es.label_names, (x, es.labels[labelled]), extras["probe_weights"],
      extras["random_dirs"], settings,
      validations if select_at is None else [validations[select_at]],
      val_sets)
  summary["directions"] = directions
  for i, member in enumerate(summary["members"]):
    for r in member["features"]:
      r["robust"] = bool(dir_arrays["directions/robust"][i, r["feature"]])
  for j, (v_arrays, _, _) in enumerate(validations):
    arrays.update(prefixed(v_arrays, j))
  arrays.update(dir_arrays)
  return Result(summary, arrays, decoders)


