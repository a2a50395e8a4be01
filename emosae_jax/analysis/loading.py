"""Loading what the analysis reads: the SAEs of a run or sweep (`Members`),
the embedding set, and checks that the two fit together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
import numpy as np

from emosae_jax import data, saes


@dataclasses.dataclass
class Members:
  """The SAEs of a workdir: one run (M = 1) or the ok members of a sweep."""

  workdir: Path
  sae: saes.SAESpec
  params: dict[str, np.ndarray]  # leading member axis [M, ...]
  indices: list[int]  # member index in the sweep (0 for a run)
  seeds: list[int]
  overrides: list[dict]
  config: dict  # the (base) resolved config
  info: dict  # data_info.json
  is_sweep: bool


def _sae_spec(config: dict) -> saes.SAESpec:
  from emosae_jax.train_core import static_spec_from_config
  return static_spec_from_config(ml_collections.ConfigDict(config), 1).sae


def load_members(workdir: str | Path) -> Members:
  """Loads a training run or a sweep group (skipping failed members); the
  run layout and the member <-> row pairing belong to emosae_jax.runs."""
  from emosae_jax import runs
  run = runs.load_members(workdir)
  shapes = {(s.arch, s.d_sae) for s in map(_sae_spec, run.configs)}
  if len(shapes) > 1:
    raise data.DataError(f"{run.workdir}: members differ in architecture or "
                         f"width {sorted(shapes)}; analyse one group at a "
                         "time")
  return Members(run.workdir, _sae_spec(run.configs[0]), run.params,
                 run.indices, run.seeds, run.overrides, run.config, run.info,
                 run.is_sweep)


def load_data(members: Members, data_path: str | None = None
              ) -> data.EmbeddingSet:
  """The embedding set to analyse: --data, else what the run trained on."""
  config = members.config
  if data_path:
    es = data.load_embedding_set(data_path)
    es.meta["path"] = str(data_path)
  elif config.get("data", {}).get("synthetic"):
    from emosae_jax.prepare import load_config_data
    es = load_config_data(ml_collections.ConfigDict(config))[0]
  else:
    path = config.get("data", {}).get("path") or members.info.get("path")
    if not path:
      raise data.DataError(f"{members.workdir}: the run records no data "
                           "path; pass --data=PATH")
    es = data.load_embedding_set(path)
    es.meta["path"] = str(path)
  return es


def check_inputs(members: Members, es: data.EmbeddingSet,
                 min_support: int) -> None:
  """Raises DataError for data the analysis cannot use, naming the fix."""
  d_in, d_sae = members.params["W_enc"].shape[-2:]
  src = es.meta.get("path") or "the embedding set"
  if d_in != es.dim:
    raise data.DataError(
        f"checkpoint {members.workdir} has input dimension {d_in} but "
        f"{src} has dimension {es.dim}; pass the embeddings it was trained on")
  if d_sae != members.sae.d_sae or d_in != members.sae.d_in:
    raise data.DataError(
        f"checkpoint {members.workdir} has shape d_in={d_in}, d_sae={d_sae} "
        f"but its config says d_in={members.sae.d_in}, "
        f"d_sae={members.sae.d_sae}; the workdir is inconsistent")
  norm_dim = len(members.info["normalizer"]["mean"])
  if norm_dim != es.dim:
    raise data.DataError(f"{members.workdir}: normaliser has dimension "
                         f"{norm_dim}, embeddings {es.dim}")
  check_labels(es, min_support, src)


def check_labels(es: data.EmbeddingSet, min_support: int,
                 src: str = "embedding set") -> None:
  if min_support < 1:
    raise data.DataError(f"--min_support must be >= 1, got {min_support}")
  labelled = es.labels[es.labels >= 0]
  if labelled.size == 0:
    raise data.DataError(f"{src}: no labelled examples (every label is -1); "
                         "the analysis needs emotion labels")
  present = np.unique(labelled)
  if len(present) < 2:
    raise data.DataError(
        f"{src}: only one emotion ({es.label_names[present[0]]!r}) among the "
        "labelled examples; selectivity needs at least two emotions")
  counts = np.bincount(labelled, minlength=len(es.label_names))
  for name, c in zip(es.label_names, counts):
    if c < max(min_support, 1):
      raise data.DataError(
          f"{src}: emotion {name!r} has {c} labelled examples, fewer than "
          f"--min_support={min_support}; add prompts, lower --min_support, "
          "or drop that emotion from the label names")
