"""Sweeps: many SAEs trained as one compiled program per shape group.

A sweep is a base config plus a list of override dicts (built with `axis`,
`product` and `zip_axes`). Members that share every static field (those
fixing shapes or control flow: architecture, width, batch size, ...) form a
group; a group stacks its members' train states and hyperparameters along a
leading member axis and runs `jit(vmap(train_epochs))`, with the member axis
sharded over all local devices (a NamedSharding on a 1-D mesh), so more
devices train more members at once. Hyperparameters in
`train.HPARAM_FIELDS` and the seed may differ within a group.

`execution` chooses how a group's members run: "vmap" as above, "serial"
one after another through the single-run program (compiled once), or "auto"
(the default): serial on a single CPU device, vmap everywhere else. On a CPU
the step is bound by memory traffic that members cannot share and XLA:CPU's
batched small matmuls are slower than unbatched ones, so a vmapped sweep
falls behind sequential runs there (figures: benchmarks/README.md).

With several hosts (`jax.distributed.initialize`), members are dealt out
round-robin to processes; each process trains and saves its own members
under `g<group>/proc<p>/`, and process 0 writes the merged results.

Workdir layout (emosae_jax.runs owns it and reads it back; read a group's
parameters only through runs.load_members, which pairs global member
indices with group rows):
  sweep.json         every member: overrides, config, status, final metrics
  pareto.png         L0 against FVU, the Pareto front marked
  config.json        the base config
  g<j>/              one folder per group, readable like a training run with
                     a leading row axis: config.json, data_info.json,
                     params.safetensors [M, ...], sweep.json (its members,
                     each with its global "index" and its "row");
                     proc<p>/ holds each process's ckpt/, metrics.jsonl
                     (rows carry "member"), params and result.json
  .lock              while a process trains here (one per process on
                     several hosts: .lock.proc<p>)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from emosae_jax import checkpoint, plots, runs, train_run
from emosae_jax import train_core as core
from emosae_jax.prepare import PreparedData, prepare

pareto_front = plots.pareto_front  # kept here for callers

PER_MEMBER_FIELDS = tuple(f"train.{f}" for f in core.HPARAM_FIELDS) + (
    "seed",)


# --------------------------------------------------------------------------
# Defining sweeps


def axis(field: str, values) -> list[dict]:
  """One swept field: [{field: v} for v in values]."""
  return [{field: v} for v in values]


def _merged(combo) -> dict:
  return dict(itertools.chain.from_iterable(d.items() for d in combo))


def product(*axes: list[dict]) -> list[dict]:
  """Every combination of the axes (later axes vary fastest)."""
  return [_merged(combo) for combo in itertools.product(*axes)]


def zip_axes(*axes: list[dict]) -> list[dict]:
  """Axes of equal length, walked together."""
  lengths = {len(a) for a in axes}
  if len(lengths) > 1:
    raise ValueError(f"zip_axes needs equal lengths, got {sorted(lengths)}")
  return [_merged(combo) for combo in zip(*axes)]


def expand(base: ml_collections.ConfigDict,
           overrides: list[dict]) -> list[ml_collections.ConfigDict]:
  """One full config per member; an unknown field fails here, before any
  training, naming the field."""
  if not overrides:
    raise ValueError("the sweep has no members")
  members = []
  for over in overrides:
    config = copy.deepcopy(base)
    for field, value in over.items():
      _set_field(config, field, value)
    train_run.validate_config(config)
    members.append(config)
  return members


def _set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  """config[a][b] = value for field "a.b", keeping the field's number type."""
  *path, leaf = field.split(".")
  node = config
  for part in path:
    node = node.get(part)
    if not isinstance(node, ml_collections.ConfigDict):
      break
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise ValueError(f"sweep field {field!r} does not exist in the config")
  old = node[leaf]
  numeric = isinstance(old, (int, float)) and not isinstance(old, bool)
  node[leaf] = type(old)(value) if numeric else value


def static_key(config: ml_collections.ConfigDict) -> str:
  """Members with equal keys can share one compiled program."""
  flat = train_run.flatten(config.to_dict())
  return json.dumps({k: v for k, v in sorted(flat.items())
                     if k not in PER_MEMBER_FIELDS}, sort_keys=True)


def group_members(configs) -> list[list[int]]:
  groups: dict[str, list[int]] = {}
  for i, config in enumerate(configs):
    groups.setdefault(static_key(config), []).append(i)
  return list(groups.values())


# --------------------------------------------------------------------------
# Training a group


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


EXECUTIONS = ("auto", "vmap", "serial")


@functools.lru_cache(maxsize=None)
def compiled_group_epochs(spec: core.StaticSpec, n_epochs: int):
  """jit(vmap(train_epochs)) over the member axis of state and hparams."""
  run = jax.vmap(functools.partial(core.train_epochs, spec, n_epochs),
                 in_axes=(0, 0, None, None, None))
  return jax.jit(run, donate_argnums=0)


def resolve_execution(execution: str, mesh: Mesh) -> str:
  if execution not in EXECUTIONS:
    raise ValueError(f"unknown sweep execution {execution!r}; choose one of "
                     f"{list(EXECUTIONS)}")
  if execution != "auto":
    return execution
  cpu_alone = mesh.size == 1 and mesh.devices.flat[0].platform == "cpu"
  return "serial" if cpu_alone else "vmap"


class VmappedMembers:
  """A group's members as one stacked state, trained by one vmapped
  program. `members` below is whatever `load` returns."""

  def __init__(self, spec: core.StaticSpec):
    self.spec = spec

  def load(self, state, hp):
    return state, hp

  def epochs(self, n_epochs, members, hp, x_train, x_val, first_epoch):
    return compiled_group_epochs(self.spec, n_epochs)(members, hp, x_train,
                                                      x_val, first_epoch)

  def stacked(self, members):
    return members

  def finished(self, members) -> bool:
    return _finished(members)


class SerialMembers(VmappedMembers):
  """The members one after another through the single-run program: exactly
  what separate runs compute, with one compile. States stay separate
  between calls (stacking costs a copy of every buffer), and members that
  stopped or failed are skipped instead of run frozen."""

  def load(self, state, hp):
    n = len(state.step)
    return [unstack(state, i) for i in range(n)], [unstack(hp, i)
                                                   for i in range(n)]

  def epochs(self, n_epochs, members, hp, x_train, x_val, first_epoch):
    run = core.compiled_train_epochs(self.spec, n_epochs)
    done = [_finished(m) for m in members]
    outs = [None if d else run(m, h, x_train, x_val, first_epoch)
            for m, h, d in zip(members, hp, done)]
    shape = next(o[1] for o in outs if o is not None)
    idle = dict(jax.tree.map(jnp.zeros_like, shape),
                active=jnp.zeros_like(shape["active"]))
    return ([m if o is None else o[0] for m, o in zip(members, outs)],
            stack([idle if o is None else o[1] for o in outs]))

  def stacked(self, members):
    return stack(members)

  def finished(self, members) -> bool:
    return all(_finished(m) for m in members)


def _finished(state) -> bool:
  return bool(jnp.all(state.stopped | state.failed))


def member_runner(spec: core.StaticSpec, execution: str):
  return {"vmap": VmappedMembers, "serial": SerialMembers}[execution](spec)


def member_mesh() -> Mesh:
  return Mesh(np.array(jax.local_devices()), ("members",))


def shard_members(tree, mesh: Mesh):
  sharding = NamedSharding(mesh, PartitionSpec("members"))
  return jax.device_put(tree, sharding)


def replicate(x, mesh: Mesh):
  return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


@dataclasses.dataclass
class GroupResult:
  members: list[int]  # global member indices
  summaries: list[dict]
  params: dict  # numpy, leading member axis


def _padded(members: list[int], n_devices: int) -> list[int]:
  """Pads the member list to a multiple of the device count by repeating
  the last member; the copies are trained and then dropped."""
  pad = (-len(members)) % n_devices
  return members + [members[-1]] * pad


def initial_group_state(configs, slots: list[int], spec: core.StaticSpec,
                        mesh: Mesh):
  """(train state, hparams) of the given member slots, stacked and sharded
  over the member axis."""
  hp = shard_members(stack([core.hparams_from_config(configs[m])
                            for m in slots]), mesh)
  state = shard_members(stack([
      core.init_state(spec, jax.random.PRNGKey(configs[m].seed))
      for m in slots]), mesh)
  return state, hp


def train_group(configs, members: list[int], workdir: Path,
                prepared: PreparedData, progress: bool = True,
                execution: str = "auto") -> GroupResult:
  """Trains the given members (one static group, whose data is `prepared`)
  together; resumable."""
  base = configs[members[0]]
  mesh = member_mesh()
  execution = resolve_execution(execution, mesh)
  slots = _padded(members, mesh.size)
  spec = core.static_spec_from_config(base, prepared.x_train.shape[0])
  state, hp = initial_group_state(configs, slots, spec, mesh)
  x_train, x_val = (replicate(prepared.x_train, mesh),
                    replicate(prepared.x_val, mesh))
  runner = member_runner(spec, execution)
  workdir.mkdir(parents=True, exist_ok=True)
  mngr = checkpoint.manager(workdir, process_local=True)
  restored = checkpoint.restore_latest(mngr, state)
  if restored is not None:
    state = shard_members(restored, mesh)
  metrics_path = workdir / "metrics.jsonl"
  # Epochs processed so far (stopped members stop counting their own).
  done = mngr.latest_step() or 0
  rows = train_run.read_metrics(metrics_path, up_to_epoch=done)
  state, hp = runner.load(state, hp)

  total, per_call = base.train.epochs, base.train.epochs_per_call
  bar = tqdm(total=total, initial=done, unit="epoch", disable=not progress,
             desc=f"sweep {base.model.arch} x{len(members)} ({execution})")
  while done < total and not runner.finished(state):
    n = min(per_call, total - done)
    state, metrics = runner.epochs(n, state, hp, x_train, x_val, done)
    for slot, member in enumerate(members):
      rows += [dict(r, member=member)
               for r in train_run.epoch_rows(
                   metrics, member=slot,
                   eval_set=train_run.eval_set_name(prepared))]
    train_run.write_metrics(metrics_path, rows)
    done += n
    bar.update(n)
    if done % base.train.checkpoint_every_epochs == 0 or done >= total:
      checkpoint.save(mngr, done, runner.stacked(state))
  bar.close()
  state, hp = runner.stacked(state), runner.stacked(hp)
  if mngr.latest_step() != done:
    checkpoint.save(mngr, done, state)
  return _group_result(configs, members, spec, hp, state, prepared)


def _group_result(configs, members, spec, hp, state, prepared) -> GroupResult:
  state = jax.device_get(state)
  hp = jax.device_get(hp)
  failed = np.asarray(state.failed)
  summaries = []
  for slot, member in enumerate(members):
    params = unstack(state.best_params, slot)
    if failed[slot]:
      summaries.append({"status": "failed", "error": "loss became NaN/inf "
                        f"near step {int(state.step[slot])}"})
      continue
    summary, _ = train_run.final_report(spec, unstack(hp, slot), params,
                                      prepared)
    summary.update(status="ok", epochs_run=int(state.epoch[slot]),
                   best_epoch=int(state.best_epoch[slot]),
                   early_stopped=bool(state.stopped[slot]))
    summaries.append(summary)
  params = {k: np.asarray(v[:len(members)], np.float32)
            for k, v in state.best_params.items()}
  return GroupResult(list(members), summaries, params)


# --------------------------------------------------------------------------
# The whole sweep


def run_sweep(base: ml_collections.ConfigDict, overrides: list[dict],
              workdir: str | Path, progress: bool = True,
              execution: str = "auto") -> dict:
  """Trains every member; writes sweep.json and pareto.png; returns the
  sweep.json content. Rerunning on the same workdir resumes. `execution`:
  see the module docstring."""
  execution = resolve_execution(execution, member_mesh())  # fails first
  configs = expand(base, overrides)  # unknown fields fail before training
  groups = group_members(configs)
  # Data problems surface here, before anything is written.
  prepared = [prepare(configs[members[0]]) for members in groups]
  workdir = Path(workdir)
  train_run.check_workdir(workdir, {"base": base.to_dict(),
                                  "overrides": overrides},
                        allowed_changes=("base.train.epochs",))
  proc, n_proc = jax.process_index(), jax.process_count()
  lock_name = runs.LOCK_FILE + (f".proc{proc}" if n_proc > 1 else "")
  with runs.lock(workdir, lock_name):
    for g, members in enumerate(groups):  # changed data refuses up front
      runs.check_data_hash(runs.group_dir(workdir, g), prepared[g].info())
    return _train_groups(workdir, configs, base, overrides, groups,
                         prepared, progress, execution)


def _train_groups(workdir, configs, base, overrides, groups, prepared,
                  progress, execution) -> dict:
  runs.write_config(workdir, {"base": base.to_dict(), "overrides": overrides})
  proc, n_proc = jax.process_index(), jax.process_count()
  entries = []
  for g, members in enumerate(groups):
    mine = members[proc::n_proc]
    gdir = runs.group_dir(workdir, g)
    runs.prepare_workdir(gdir)
    runs.write_data_info(gdir, prepared[g].info())
    if mine:
      result = train_group(configs, mine, gdir / f"proc{proc}", prepared[g],
                           progress, execution)
      runs.write_process_result(gdir / f"proc{proc}", result.members,
                                result.summaries, result.params)
    entries.append((g, members))
  if n_proc > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("emosae sweep trained")
  if proc != 0:
    return {}
  return _write_summary(workdir, configs, overrides, entries, prepared,
                        n_proc)


def _write_summary(workdir, configs, overrides, entries, prepared,
                   n_proc) -> dict:
  all_members = []
  for g, members in entries:
    gdir = runs.group_dir(workdir, g)
    summaries, params = runs.merge_processes(gdir, members, n_proc)
    group_members_json = [
        {"index": m, "group": g, "overrides": overrides[m],
         "seed": int(configs[m].seed), "config": configs[m].to_dict(),
         **summary} for m, summary in zip(members, summaries)]
    all_members += runs.write_group(gdir, group_members_json, params,
                                    configs[members[0]].to_dict(),
                                    prepared[g].info())
  result = runs.write_sweep(workdir, all_members,
                            [runs.group_dir(workdir, g).name
                             for g, _ in entries])
  plots.pareto(result["members"], workdir / "pareto.png")
  return result
