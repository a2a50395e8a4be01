"""Orbax checkpoints of train states (finished runs are read through runs.py).

A workdir's `ckpt/` holds the latest states (orbax `CheckpointManager`,
`StandardSave`/`StandardRestore`, keyed by epoch). Each state carries both
the latest and the best-so-far parameters (`best_params`), so "best" and
"latest" survive together in every checkpoint.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from emosae_jax import data, runs

TEMPORARY_MARK = ".orbax-checkpoint-tmp"  # orbax's name for a save under way


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
  try:
    mngr.save(int(epoch), args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()
  except OSError as e:
    remove_temporaries(Path(str(mngr.directory)))
    if _disk_full(e):
      raise runs.RunLayoutError(
          f"{mngr.directory}: disk full while saving the checkpoint of epoch "
          f"{int(epoch)}; free space and rerun the same command (it resumes "
          "from the last complete checkpoint)") from None
    raise runs.RunLayoutError(
        f"{mngr.directory}: cannot save the checkpoint of epoch {int(epoch)} "
        f"({data.short_reason(e)})") from None


def _disk_full(error: BaseException) -> bool:
  seen = error
  while seen is not None:
    if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
      return True
    seen = seen.__cause__ or seen.__context__
  return "No space left on device" in str(error)


def remove_temporaries(directory: Path) -> None:
  """Deletes the folders of saves that did not complete."""
  for tmp in directory.glob(f"*{TEMPORARY_MARK}*"):
    shutil.rmtree(tmp, ignore_errors=True)


def restore_latest(mngr: ocp.CheckpointManager, target):
  """Restores the latest checkpoint into `target`'s structure, or None."""
  step = mngr.latest_step()
  if step is None:
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.StandardRestore(abstract))

