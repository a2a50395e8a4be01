r"""Adam on CPU: optax's loops against the one-pass kernel (train.adam_kernel,
emosae_jax/fused_adam.py), with and without the weight gradients taken as
factors (StaticSpec.factored_grads), in one process, alternating.

  python benchmarks/bench_adam.py [--preset=reference] [--batch=16]
      [--d_in=768] [--d_sae=6144] [--epochs=10] [--rounds=4]

Prints, per round and as medians: milliseconds per training step of the
preset's compiled epochs (its steps, validation and bookkeeping) with each
Adam (optax; fused; fused with factored gradients, where the preset allows
them), and each one's speed-up over optax; then each one's largest
parameter difference from optax after the timed steps (they follow the same
formula, to float32 rounding, so they drift apart slowly in a long run as
any two summation orders do).
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.sae import get_config  # noqa: E402
from emosae_jax import fused_adam  # noqa: E402
from emosae_jax import train_core as core  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--preset", default="reference",
                      help="configs/sae.py preset, e.g. reference, "
                      "arch=relu_l1")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--n_train", type=int, default=70)
  parser.add_argument("--d_in", type=int, default=768)
  parser.add_argument("--d_sae", type=int, default=6144)
  parser.add_argument("--epochs", type=int, default=10,
                      help="epochs per timed call")
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  if not fused_adam.available():
    sys.exit("the fused Adam kernel cannot be built here (see the warning)")
  config = get_config(args.preset)
  config.model.d_in, config.model.d_sae = args.d_in, args.d_sae
  config.train.batch_size = args.batch
  x = np.random.default_rng(0).normal(
      scale=0.1, size=(args.n_train + 16, args.d_in)).astype(np.float32)
  x_train, x_val = x[:args.n_train], x[args.n_train:]
  spec = core.static_spec_from_config(config, args.n_train)
  hp = core.hparams_from_config(config)
  steps = args.epochs * spec.steps_per_epoch
  kinds = {"optax": dataclasses.replace(spec, fused_adam=False,
                                       factored_grads=False),
           "fused": dataclasses.replace(spec, fused_adam=True,
                                        factored_grads=False)}
  if spec.factored_grads:
    kinds["factored"] = spec
  runs, states = {}, {}
  for name, kind_spec in kinds.items():
    runs[name] = core.compiled_train_epochs(kind_spec, args.epochs)
    state = core.init_state(kind_spec, jax.random.PRNGKey(0))
    start = time.perf_counter()
    states[name], _ = runs[name](state, hp, x_train, x_val, 0)
    jax.block_until_ready(states[name])
    print(f"{name}: compile + first call {time.perf_counter() - start:.1f} s")
  ms = {name: [] for name in kinds}
  for r in range(args.rounds):
    for name in kinds:
      start = time.perf_counter()
      states[name], _ = runs[name](states[name], hp, x_train, x_val,
                                   (r + 1) * args.epochs)
      jax.block_until_ready(states[name])
      ms[name].append(1e3 * (time.perf_counter() - start) / steps)
    print(f"round {r}: " + ", ".join(
        f"{name} {ms[name][-1]:.2f} ms/step" for name in kinds) + "; vs optax "
        + ", ".join(f"{name} {ms['optax'][-1] / ms[name][-1]:.2f}x"
                    for name in kinds if name != "optax"))
  medians = {name: np.median(ms[name]) for name in kinds}
  print(f"{args.preset}, {args.d_in} -> {args.d_sae}, batch {args.batch}: "
        "median " + ", ".join(f"{name} {medians[name]:.2f} ms/step"
                              for name in kinds) + "; faster than optax: "
        + ", ".join(f"{name} {medians['optax'] / medians[name]:.2f}x"
                    for name in kinds if name != "optax"))
  for name in kinds:
    if name != "optax":
      diff = max(float(np.max(np.abs(states["optax"].params[k]
                                     - states[name].params[k])))
                 for k in states[name].params)
      print(f"{name}: largest parameter difference from optax after "
            f"{(args.rounds + 1) * steps} steps: {diff:.2e}")

if __name__ == "__main__":
  main()
