r"""One vmapped sweep against the same members trained one after another.

  python benchmarks/bench_sweep.py [--members=16] [--epochs=500] [--rounds=1]

Workload: the `reference` preset (768 -> 6144 ReLU+L1, batch 16) on 70 training
embeddings, members differing in seed and L1 coefficient. Both sides run in
this process with the same compiled-chunk structure the trainers use, so the
ratio is training time only (data preparation, file writing and member
initialisation excluded; initialisation is printed apart);
compile time is reported apart. On an accelerator the sweep should be many
times faster; on these CPUs the step is bound by optimizer-state memory
traffic, so the target there is only "never slower".

The sweep is timed as it runs by default (`--execution=auto`: serial on a
single CPU device, vmap elsewhere) and, where that is not vmap, also forced
to vmap. With --rounds > 1 the sides alternate and medians are reported,
which is what makes a 10% difference visible on a noisy shared machine.
"""

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.sae import get_config  # noqa: E402
from emosae_jax import sweep  # noqa: E402
from emosae_jax import train_core as core  # noqa: E402


def member_configs(n_members, epochs):
  base = get_config("reference")
  base.train.epochs = epochs
  base.train.patience = 10 ** 6  # every member runs every epoch
  coeffs = [1e-3, 3e-3, 1e-2, 3e-2]
  overrides = [{"train.sparsity_coeff": coeffs[i % 4], "seed": i}
               for i in range(n_members)]
  return sweep.expand(base, overrides)


def timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def run_sequential(configs, spec, x, chunk, epochs):
  fn = core.compiled_train_epochs(spec, chunk)
  state0 = core.init_state(spec, jax.random.PRNGKey(0))
  compile_s, _ = timed(lambda: fn.lower(state0, core.hparams_from_config(
      configs[0]), x, x, 0).compile())
  train_s = init_s = 0.0
  for config in configs:
    seconds, state = timed(lambda config=config: core.init_state(
        spec, jax.random.PRNGKey(config.seed)))
    init_s += seconds
    hp = core.hparams_from_config(config)
    start = time.perf_counter()
    for c in range(epochs // chunk):
      state, _ = fn(state, hp, x, x, c * chunk)
    jax.block_until_ready(state)
    train_s += time.perf_counter() - start
  return train_s, compile_s, init_s


def run_sweep(configs, spec, x, chunk, epochs, execution):
  """The sweep's own member runner (sweep.member_runner), as train_group
  drives it."""
  mesh = sweep.member_mesh()
  slots = sweep._padded(list(range(len(configs))), mesh.size)  # pylint: disable=protected-access
  runner = sweep.member_runner(spec, execution)

  def fresh():
    return runner.load(*sweep.initial_group_state(configs, slots, spec, mesh))

  xs = sweep.replicate(x, mesh)
  # Timed apart, as for sequential runs. Serial runs the single-run program,
  # but its inputs carry the sweep's shardings, which jit compiles anew.
  members, hp = fresh()
  if execution == "vmap":
    program, args = sweep.compiled_group_epochs(spec, chunk), (members, hp)
  else:
    program = core.compiled_train_epochs(spec, chunk)
    args = (members[0], hp[0])
  compile_s, _ = timed(lambda: program.lower(*args, xs, xs, 0).compile())
  init_s, (members, hp) = timed(fresh)
  start = time.perf_counter()
  for c in range(epochs // chunk):
    members, _ = runner.epochs(chunk, members, hp, xs, xs, c * chunk)
  jax.block_until_ready(members)
  return time.perf_counter() - start, compile_s, init_s


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--members", type=int, default=16)
  parser.add_argument("--epochs", type=int, default=500)
  parser.add_argument("--chunk", type=int, default=50,
                      help="epochs per compiled call (the preset's 50)")
  parser.add_argument("--rounds", type=int, default=1,
                      help="alternate the sides this many times; medians")
  parser.add_argument("--execution", default="auto",
                      choices=sweep.EXECUTIONS)
  args = parser.parse_args()
  chunk = min(args.chunk, args.epochs)
  configs = member_configs(args.members, args.epochs)
  x = jax.numpy.asarray(np.random.default_rng(0).normal(
      size=(70, 768)).astype(np.float32))
  spec = core.static_spec_from_config(configs[0], 70)
  execution = sweep.resolve_execution(args.execution, sweep.member_mesh())
  print(f"devices: {jax.devices()}; {args.members} members x "
        f"{args.epochs} epochs x {spec.steps_per_epoch} steps of batch "
        f"{spec.batch_size}, 768 -> 6144; sweep execution: {execution}")
  sides = {"sequential": run_sequential,
           f"sweep ({execution})": functools.partial(run_sweep,
                                                    execution=execution)}
  if execution != "vmap":
    sides["sweep (vmap)"] = functools.partial(run_sweep, execution="vmap")
  times = {name: [] for name in sides}
  compiles, inits = {}, {name: [] for name in sides}
  for _ in range(args.rounds):
    for name, side in sides.items():
      train_s, compile_s, init_s = side(configs, spec, x, chunk, args.epochs)
      compiles.setdefault(name, compile_s)  # later rounds hit jax's cache
      times[name].append(train_s)
      inits[name].append(init_s)
  steps = args.members * args.epochs * spec.steps_per_epoch
  seq = statistics.median(times["sequential"])
  for name, ts in times.items():
    t = statistics.median(ts)
    line = (f"{name:16s} {t:8.2f} s train + {compiles[name]:5.2f} s compile"
            f" + {statistics.median(inits[name]):5.2f} s initialising "
            f"members ({1e3 * t / steps:.3f} ms per member-step)")
    if name != "sequential":
      line += (f"; sequential / this: {seq / t:.2f}x, with compile "
               f"{(seq + compiles['sequential']) / (t + compiles[name]):.2f}x")
    if len(ts) > 1:
      line += f"; rounds: {', '.join(f'{r:.2f}' for r in ts)} s"
    print(line)


if __name__ == "__main__":
  main()
