"""The run layout: the one module that writes and reads runs on disk.

numpy, safetensors and the standard library only (no jax), so the torch side
(bridge/) can read runs too. Three kinds of folder:

  training run   config.json        the resolved config
                 data_info.json     data path, content hash, split, normaliser
                 params.safetensors best parameters, normalised units
                 summary.json       final held-out metrics
                 metrics.jsonl, ckpt/, plots (train_run writes those)
  sweep (top)    config.json        {"base": config, "overrides": [...]}
                 sweep.json         {"members": [...], "groups": ["g0", ...]}
                 g<j>/              one group per compiled program
  sweep group    config.json, data_info.json as a run (the group's base
  g<j>/          config); params.safetensors with a leading row axis;
                 sweep.json {"members": [...]} whose entries carry "index"
                 (the member's global index in the sweep) and "row" (its
                 row in this group's params.safetensors).

A member's global index and its row in its group's params differ whenever a
sweep has more than one group or its grid interleaves shapes: read params
only through `load_members`, which pairs them. A workdir in use holds a
lock file naming the holder's pid (`lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from pathlib import Path

import numpy as np

from emosae_jax import data

CONFIG_FILE = "config.json"
DATA_INFO_FILE = "data_info.json"
PARAMS_FILE = "params.safetensors"
SUMMARY_FILE = "summary.json"
SWEEP_FILE = "sweep.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


class RunLayoutError(data.DataError):
  """A workdir that is missing, damaged, busy or of another kind."""


# --------------------------------------------------------------------------
# Kinds of folder


def group_dir(workdir: str | Path, group: int) -> Path:
  return Path(workdir) / f"g{group}"


def is_sweep_top(workdir: str | Path) -> bool:
  sweep = Path(workdir) / SWEEP_FILE
  return sweep.is_file() and "groups" in read_json(sweep)


def is_sweep_group(workdir: str | Path) -> bool:
  sweep = Path(workdir) / SWEEP_FILE
  return sweep.is_file() and "groups" not in read_json(sweep)


def read_json(path: str | Path) -> dict:
  """A JSON file of a run; RunLayoutError if missing or damaged."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise RunLayoutError(f"{path.parent}: not a run workdir ({path.name} "
                         "missing)") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RunLayoutError(f"{path}: damaged JSON ({e}); rerun the step that "
                         "wrote it") from None
  except OSError as e:
    raise RunLayoutError(f"{path}: cannot read ({e.strerror})") from None


# --------------------------------------------------------------------------
# Writers


def prepare_workdir(workdir: str | Path) -> Path:
  """Creates the workdir; one line if it cannot be (a file on its path, no
  permission, ...)."""
  workdir = Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    blocker = next((p for p in [workdir, *workdir.parents] if p.is_file()),
                   workdir)
    raise RunLayoutError(f"--workdir {workdir}: {blocker} is a file, not a "
                         "folder; choose another --workdir") from None
  except OSError as e:
    raise RunLayoutError(f"--workdir {workdir}: cannot create it "
                         f"({e.strerror})") from None
  if not os.access(workdir, os.W_OK):
    raise RunLayoutError(f"{workdir} is not writable")
  return workdir


def write_config(workdir: str | Path, config: dict) -> None:
  data.atomic_write_json(Path(workdir) / CONFIG_FILE, config)


def write_data_info(workdir: str | Path, info: dict) -> None:
  data.atomic_write_json(Path(workdir) / DATA_INFO_FILE, info)


def write_summary(workdir: str | Path, summary: dict) -> None:
  data.atomic_write_json(Path(workdir) / SUMMARY_FILE, summary)


def write_params(workdir: str | Path, params: dict) -> None:
  """workdir/params.safetensors from numpy arrays (float32)."""
  write_params_file(Path(workdir) / PARAMS_FILE, params)


def write_params_file(path: str | Path, params: dict) -> None:
  from safetensors.numpy import save_file
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32))
             for k, v in params.items()}
  data.atomic_write(path, lambda tmp: save_file(tensors, tmp))


def write_group(gdir: str | Path, entries: list[dict], params: dict,
                config: dict, info: dict) -> list[dict]:
  """A sweep group: entries[i] (with "index") is params row i. Returns the
  entries with their "row" added."""
  if len({int(np.shape(v)[0]) for v in params.values()} | {len(entries)}) > 1:
    raise ValueError("a group needs one params row per member entry")
  entries = [dict(e, row=i) for i, e in enumerate(entries)]
  write_params(gdir, params)
  write_config(gdir, config)
  write_data_info(gdir, info)
  data.atomic_write_json(Path(gdir) / SWEEP_FILE, {"members": entries})
  return entries


def write_sweep(workdir: str | Path, members: list[dict],
                groups: list[str]) -> dict:
  """The top sweep.json: every member (sorted by index) and the groups."""
  result = {"members": sorted(members, key=lambda e: e["index"]),
            "groups": list(groups)}
  data.atomic_write_json(Path(workdir) / SWEEP_FILE, result)
  return result


def write_process_result(pdir: str | Path, members: list[int],
                         summaries: list[dict], params: dict) -> None:
  """One process's part of a group (several hosts): its members' params
  rows (in `members` order) and summaries, under g<j>/proc<p>/."""
  write_params(pdir, params)
  data.atomic_write_json(Path(pdir) / "result.json",
                         {"members": members, "summaries": summaries})


def merge_processes(gdir: str | Path, members: list[int], n_proc: int
                    ) -> tuple[list[dict], dict]:
  """The processes' results of one group, in `members` order: (summaries,
  params stacked with one row per member)."""
  by_member, params = {}, {}
  for p in range(n_proc):
    pdir = Path(gdir) / f"proc{p}"
    if not (pdir / "result.json").exists():
      continue
    result = read_json(pdir / "result.json")
    p_params = load_params(pdir)
    for slot, (m, s) in enumerate(zip(result["members"],
                                      result["summaries"])):
      by_member[m] = s
      params[m] = {k: v[slot] for k, v in p_params.items()}
  missing = [m for m in members if m not in by_member]
  if missing:
    raise RunLayoutError(f"{gdir}: no process saved members {missing}")
  stacked = {k: np.stack([params[m][k] for m in members])
             for k in params[members[0]]}
  return [by_member[m] for m in members], stacked


# --------------------------------------------------------------------------
# Readers


def load_params(workdir: str | Path) -> dict[str, np.ndarray]:
  """params.safetensors of a run or group (numpy); one line if missing or
  damaged (e.g. truncated by a full disk)."""
  from safetensors.numpy import load_file
  path = Path(workdir) / PARAMS_FILE
  if not path.exists():
    raise RunLayoutError(f"{workdir}: no {PARAMS_FILE}; is this a finished "
                         "training run or sweep workdir?")
  try:
    return load_file(str(path))
  except Exception as e:  # pylint: disable=broad-except  # SafetensorError
    raise RunLayoutError(f"{path}: damaged or truncated safetensors file "
                         f"({data.short_reason(e)}); rerun the training that "
                         "wrote it") from None


def load_run_info(workdir: str | Path) -> tuple[dict, dict]:
  """(config.json, data_info.json) of a training run or sweep group."""
  workdir = Path(workdir)
  if is_sweep_top(workdir):
    groups = read_json(workdir / SWEEP_FILE)["groups"]
    raise RunLayoutError(
        f"{workdir} is a sweep's top folder; pass one of its groups, e.g. "
        f"{workdir / groups[0]} (groups: {', '.join(groups)}; export.py "
        "also takes the top folder with --member=N)")
  return (read_json(workdir / CONFIG_FILE),
          read_json(workdir / DATA_INFO_FILE))


def member_group(workdir: str | Path, member: int) -> Path:
  """The group folder of a sweep holding global member `member`."""
  workdir = Path(workdir)
  entries = read_json(workdir / SWEEP_FILE)["members"]
  by_index = {int(e["index"]): e for e in entries}
  if member not in by_index:
    raise RunLayoutError(f"{workdir}: no member {member}; the sweep has "
                         f"members {sorted(by_index)}")
  return group_dir(workdir, int(by_index[member]["group"]))


@dataclasses.dataclass
class RunMembers:
  """The trained SAEs of a run (M = 1) or of a sweep group's ok members."""

  workdir: Path
  params: dict[str, np.ndarray]  # leading member axis [M, ...]; row i
  #                                belongs to member indices[i]
  indices: list[int]  # global member index in the sweep (0 for a run)
  seeds: list[int]
  overrides: list[dict]
  configs: list[dict]  # each member's resolved config
  config: dict  # the run's config (a sweep group's base config)
  info: dict  # data_info.json
  is_sweep: bool


def load_members(workdir: str | Path, member: int | None = None
                 ) -> RunMembers:
  """The ok members of a training run or sweep group, each paired with its
  own parameter row. `member` selects one global member index; on a sweep's
  top folder it also finds the member's group (a top folder with a single
  group needs no `member`)."""
  workdir = Path(workdir)
  if is_sweep_top(workdir):
    groups = read_json(workdir / SWEEP_FILE)["groups"]
    if member is not None:
      workdir = member_group(workdir, member)
    elif len(groups) == 1:
      workdir = workdir / groups[0]
  config, info = load_run_info(workdir)
  params = load_params(workdir)
  if not (workdir / SWEEP_FILE).is_file():
    if member not in (None, 0):
      raise RunLayoutError(f"{workdir} is a single training run (member 0); "
                           f"it has no member {member}")
    return RunMembers(workdir, {k: v[None] for k, v in params.items()}, [0],
                      [int(config.get("seed", 0))], [{}], [config], config,
                      info, False)
  entries = read_json(workdir / SWEEP_FILE)["members"]
  rows = [int(e.get("row", pos)) for pos, e in enumerate(entries)]
  n_rows = {int(v.shape[0]) for v in params.values()}
  if n_rows != {len(entries)} or max(rows) >= len(entries):
    raise RunLayoutError(f"{workdir}: {PARAMS_FILE} holds {sorted(n_rows)} "
                         f"rows but {SWEEP_FILE} lists {len(entries)} "
                         "members; the group is inconsistent")
  chosen = [(e, r) for e, r in zip(entries, rows)
            if e.get("status", "ok") == "ok"
            and (member is None or int(e["index"]) == member)]
  if member is not None and not chosen:
    known = {int(e["index"]): e.get("status", "ok") for e in entries}
    why = (f"it {known[member]}" if member in known
           else f"the group has members {sorted(known)}")
    raise RunLayoutError(f"{workdir}: member {member} has no trained "
                         f"parameters ({why})")
  if not chosen:
    raise RunLayoutError(f"{workdir}: every member of this group failed; "
                         "nothing to read")
  take = [r for _, r in chosen]
  return RunMembers(
      workdir, {k: v[take] for k, v in params.items()},
      [int(e["index"]) for e, _ in chosen],
      [int(e.get("seed", 0)) for e, _ in chosen],
      [e.get("overrides", {}) for e, _ in chosen],
      [e.get("config", config) for e, _ in chosen], config, info, True)


# --------------------------------------------------------------------------
# Checks


def check_data_hash(workdir: str | Path, info: dict) -> None:
  """Refuses to resume a run whose data changed since it started."""
  path = Path(workdir) / DATA_INFO_FILE
  if not path.is_file():
    return
  old, new = read_json(path).get("content_hash"), info.get("content_hash")
  if old and new and old != new:
    raise RunLayoutError(
        f"{workdir} was trained on data with content hash {old}, but "
        f"{info.get('path') or 'the data'} now has content hash {new}; use "
        "a new --workdir (or restore the old data) rather than resume")


# --------------------------------------------------------------------------
# Locking


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _read_lock(path: Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (json.JSONDecodeError, UnicodeDecodeError, OSError):
    return {}  # being written right now, or damaged


@contextlib.contextmanager
def lock(workdir: str | Path, name: str = LOCK_FILE):
  """Holds workdir/<name> while the block runs. A second process refuses
  in one line naming the holder's pid; a lock whose process is gone (same
  host) is taken over."""
  path = Path(workdir) / name
  me = {"pid": os.getpid(), "host": socket.gethostname()}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_lock(path)
      if holder is None:
        continue  # released meanwhile
      pid, host = holder.get("pid"), holder.get("host")
      if isinstance(pid, int) and host == me["host"] and not _alive(pid):
        path.unlink(missing_ok=True)  # stale: its process died
        continue
      who = (f"process {pid}" if isinstance(pid, int) else "another process")
      if host not in (None, me["host"]):
        who += f" on {host}"
      raise RunLayoutError(
          f"{workdir} is in use by {who} (lock file {path}); "
          "wait for it to finish or use another --workdir") from None
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  else:
    raise RunLayoutError(f"{path}: could not take the lock; try again")
  try:
    yield path
  finally:
    if (_read_lock(path) or {}).get("pid") == me["pid"]:
      path.unlink(missing_ok=True)


def normalizer_of(info: dict) -> data.Normalizer:
  """The input normaliser a run recorded in its data_info.json."""
  return data.Normalizer.from_dict(info["normalizer"])


def summary_metric(summary: dict, name: str):
  """A run's (or sweep member's) "fvu" / "l0" / "mse" on its evaluation set:
  summaries name them heldout_* or, without held-out rows, train_*."""
  return summary.get(f"{summary.get('eval_set', 'heldout')}_{name}")
