r"""Is a blow-up of the `reference` preset the reference's own? Runs the
preset with its guard off, and at each branch epoch hands its exact state
(weights, Adam's moments and step count, the dead counters) to the torch
re-implementation (reference_torch.py), which then trains on the same
batches. Validation FVU (training mean) of both, epoch by epoch from each
branch.

  python benchmarks/bench_reference_branch.py [--seed=5] [--branches=200,216]
      [--end=245] [--standin=t5_like] [--data=PATH]

If torch, given the preset's state some epochs before a blow-up, blows up
too, the blow-up is in the state the recipe reaches, not in the preset's
code. A paired run from the start cannot tell: bench_reference.py
--torch_streams=preset shows the two trainers' paths parting within about
50 epochs, as torch's own path parts from a 1e-7 nudge of its starting
weights (rounding, amplified by Adam on gradients near its eps).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import bench_reference  # noqa: E402
import reference_torch  # noqa: E402
from emosae_jax import metrics  # noqa: E402
from emosae_jax import train_core as core  # noqa: E402

# preset parameter -> (torch attribute, whether torch's layout is transposed)
TORCH_NAMES = {"W_enc": ("w_enc", True), "b_enc": ("b_enc", False),
               "W_dec": ("w_dec", True), "b_out": ("b_out", False)}


def torch_from_state(state, x_train_raw, **options):
  """A ReferenceSAE holding a preset TrainState: its parameters, Adam's
  moments and step count (optax's ScaleByAdamState) and dead counters.
  x_train_raw: the training rows in raw units (torch's pre-bias is their
  mean; the preset's inputs are centred on it)."""
  state = jax.device_get(state)
  adam = state.opt_state[-1]
  layout = {name: (lambda a, t=t: torch.tensor(np.array(a.T if t else a)))
            for name, (_, t) in TORCH_NAMES.items()}
  init = {"w_enc": np.asarray(state.params["W_enc"]).T,
          "w_dec": np.asarray(state.params["W_dec"]).T}
  sae = reference_torch.ReferenceSAE(torch.as_tensor(x_train_raw),
                                     len(state.steps_since_fired),
                                     init=init, **options)
  with torch.no_grad():
    sae.b_enc.copy_(layout["b_enc"](state.params["b_enc"]))
    sae.b_out.copy_(layout["b_out"](state.params["b_out"]))
  for name, (attr, _) in TORCH_NAMES.items():
    sae.opt.state[getattr(sae, attr)] = {
        "step": torch.tensor(float(adam.count)),
        "exp_avg": layout[name](adam.mu[name]).contiguous(),
        "exp_avg_sq": layout[name](adam.nu[name]).contiguous()}
  sae.since = torch.as_tensor(np.asarray(state.steps_since_fired, np.int64))
  return sae


def torch_epochs(sae, x_train_raw, orders, first_epoch, end, step, batch=16,
                 resample_every=100):
  """Continues `sae` from epoch first_epoch (global step `step`) to `end`
  on the preset's row orders; yields (epoch, sae) after each epoch."""
  x = torch.as_tensor(x_train_raw)
  for epoch in range(first_epoch, end):
    order = torch.as_tensor(np.asarray(orders(epoch), np.int64))
    for i in range(0, len(order), batch):
      sae.step(x[order[i:i + batch]])
      step += 1
      if step % resample_every == 0:
        sae.resample()
    yield epoch + 1, sae


def preset_x_hat(params, x_raw, train_mean):
  """The preset's reconstruction of raw rows (its inputs are centred on the
  training mean)."""
  x_hat, _ = bench_reference.relu_sae(jax.device_get(params),
                                      x_raw - train_mean)
  return x_hat + train_mean


def torch_x_hat(sae, x_raw):
  with torch.no_grad():
    return sae.forward(torch.as_tensor(x_raw))[0].numpy()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default="", help="an embedding-set folder")
  parser.add_argument("--standin", default="t5_like",
                      choices=("reference_like", "t5_like"))
  parser.add_argument("--seed", type=int, default=5,
                      help="split and SAE seed, as bench_reference.py's")
  parser.add_argument("--branches", default="200,216",
                      help="epochs at which torch takes the preset's state")
  parser.add_argument("--end", type=int, default=245)
  args = parser.parse_args()
  try:
    branches = sorted({int(b) for b in args.branches.split(",")})
  except ValueError:
    sys.exit(f"--branches={args.branches!r}: give epochs, e.g. 200,216")
  if not branches or branches[0] < 0 or branches[-1] >= args.end:
    sys.exit(f"--branches must lie in [0, --end={args.end})")
  es = bench_reference.embedding_set(args.data, args.standin)
  torch.set_num_threads(1)  # 2 threads cost 5x the CPU time per step here
  train, val, _ = bench_reference.split_70_15_15(len(es), args.seed)
  x_train, x_val = es.embeddings[train], es.embeddings[val]
  mean = x_train.mean(0)
  config = bench_reference.preset_config(
      es.dim, args.seed, args.end,
      overrides={"train.divergence_factor": 0.0})
  spec = core.static_spec_from_config(config, len(train))
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(args.seed))
  _, orders = bench_reference.preset_streams(config, len(train))
  run_epoch = core.compiled_train_epochs(spec, 1)
  preset_fvu, snapshots = {}, {}
  for epoch in tqdm(range(args.end), desc="preset", unit="epoch"):
    if epoch in branches:
      snapshots[epoch] = jax.device_get(state)
    state, _ = run_epoch(state, hp, x_train - mean, x_val - mean, epoch)
    preset_fvu[epoch + 1] = metrics.heldout_fvu(
        x_val, preset_x_hat(state.params, x_val, mean), mean)
  for branch in branches:
    snap = snapshots[branch]
    sae = torch_from_state(snap, x_train)
    print(f"from epoch {branch} (step {int(snap.step)}): epoch, validation "
          "FVU preset / torch")
    worst = [0.0, 0.0]
    for epoch, sae in torch_epochs(sae, x_train, orders, branch, args.end,
                                   int(snap.step)):
      fvu = (preset_fvu[epoch],
             metrics.heldout_fvu(x_val, torch_x_hat(sae, x_val), mean))
      worst = [max(w, f) for w, f in zip(worst, fvu)]
      print(f"  {epoch:4d}  {fvu[0]:8.3f} {fvu[1]:8.3f}")
    print(f"  worst: preset {worst[0]:.3f}, torch {worst[1]:.3f}",
          flush=True)


if __name__ == "__main__":
  main()
