"""Orbax checkpoints of train states, and loading a finished run back.

A workdir's `ckpt/` holds the latest states (orbax `CheckpointManager`,
`StandardSave`/`StandardRestore`, keyed by epoch). Each state carries both
the latest and the best-so-far parameters (`best_params`), so "best" and
"latest" survive together in every checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from emosae_jax import data


def manager(workdir: str | Path, max_to_keep: int = 2,
            process_local: bool = False) -> ocp.CheckpointManager:
  """A manager for workdir/ckpt.

  process_local: this process alone writes it (each host of a multi-host
  sweep saves its own members), so orbax must not wait for the others.
  """
  extra = {}
  if process_local and jax.process_count() > 1:
    me = jax.process_index()
    extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me},
        barrier_sync_key_prefix=f"proc{me}")
  directory = Path(workdir).absolute() / "ckpt"
  directory.mkdir(parents=True, exist_ok=True)  # orbax won't with extra
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=False,
      create=not extra, **extra)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, epoch: int, state) -> None:
  if jax.process_count() > 1:
    # Host-local device arrays cannot be saved by orbax on several hosts;
    # this process's own members go to disk as numpy.
    state = jax.device_get(state)
  mngr.save(int(epoch), args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, target):
  """Restores the latest checkpoint into `target`'s structure, or None."""
  step = mngr.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def load_params(workdir: str | Path) -> dict[str, np.ndarray]:
  """The best parameters of a finished run (numpy), from params.safetensors.

  Sweeps store the same names with a leading member axis.
  """
  from safetensors.numpy import load_file
  path = Path(workdir) / "params.safetensors"
  if not path.exists():
    raise data.DataError(f"{workdir}: no params.safetensors; is this a "
                         "finished training run or sweep workdir?")
  return load_file(str(path))


def load_run_info(workdir: str | Path) -> tuple[dict, dict]:
  """(config.json, data_info.json) of a run, as dicts."""
  workdir = Path(workdir)
  sweep_file = workdir / "sweep.json"
  groups = (json.loads(sweep_file.read_text()).get("groups")
            if sweep_file.exists() else None)
  if groups:
    raise data.DataError(f"{workdir} is a sweep's top folder; pass one of "
                         f"its groups, e.g. {workdir / groups[0]} (groups: "
                         f"{', '.join(groups)})")
  try:
    config = json.loads((workdir / "config.json").read_text())
    info = json.loads((workdir / "data_info.json").read_text())
  except FileNotFoundError as e:
    raise data.DataError(f"{workdir}: not a run workdir ({e.filename} "
                         "missing)") from None
  return config, info


def normalizer_of(info: dict) -> data.Normalizer:
  return data.Normalizer.from_dict(info["normalizer"])
