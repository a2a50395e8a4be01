r"""The `reference` preset beside a torch re-implementation of the reference
system (reference_torch.py, the known answer) and the reference's own figures.

  python benchmarks/bench_reference.py [--data=PATH] [--standin=reference_like]
      [--seeds=0,1,2] [--epochs=500] [--variant=code]
      [--adam_kernel=auto|fused|optax] [--overrides=train.lr=3e-4,...]

The reference system (768 -> 6144 ReLU + L1, batch 16, 500 epochs, random
70/15/15 split, raw units) ended on its 100 t5-base embeddings with 45% dead
latents, test MSE 0.0064 (raw units), L0 144, in 107 s. Those embeddings are
not here: without --data the run uses a stand-in (`--standin`):
reference_like (synthetic.make_reference_like: planted dictionary in a
low-rank subspace plus noise) or t5_like (synthetic.make_t5_like: no
dictionary, a power-law spectrum with the reference's published cosines).
Both trainers get the same rows, the same split (one per seed) and the same
seeds' worth of runs; the table gives mean [min, max] over seeds of:
dead (the reference's definition: latents unfired for more than 100 steps at
the end of training), never-firing latents on the training rows, test MSE
(raw units), test L0, held-out FVU (training mean), wall time, and the
largest validation-FVU jump over its best so far (after the first tenth),
both validated once per epoch (5 steps; the reference itself validates
every 50 steps, which can miss a spike that comes and goes between two).
"""

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from configs.sae import get_config  # noqa: E402
import jax  # noqa: E402
from emosae_jax import data, metrics, runs, synthetic, train_run  # noqa: E402
from emosae_jax import train_core as core  # noqa: E402

BATCH = 16  # the reference's batch size (and the preset's)
REFERENCE = {"dead": 0.45, "test_mse": 0.0064, "l0": 144, "seconds": 107.0}
ROWS = (("dead", "dead (>100 steps unfired)", "{:.0%}"),
        ("never_fires", "never fires on train", "{:.0%}"),
        ("test_mse", "test MSE (raw units)", "{:.4f}"),
        ("l0", "test L0", "{:.0f}"),
        ("heldout_fvu", "held-out FVU", "{:.3f}"),
        ("seconds", "wall time (s)", "{:.1f}"),
        ("fvu_jump", "worst val-FVU jump", "{:.2f}x"))


def split_70_15_15(n, seed):
  """The reference's split sizes (int(0.7 n), int(0.15 n), the rest),
  drawn at random: (train, val, test) row indices."""
  perm = np.random.default_rng(seed).permutation(n)
  n_train, n_val = int(n * 0.7), int(n * 0.15)
  return (np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_val]),
          np.sort(perm[n_train + n_val:]))


def worst_jump(fvu):
  """Largest ratio of a validation FVU to the best before it, after the
  first tenth of training (1.0: never above its best)."""
  fvu = np.asarray(fvu, float)
  start = max(1, len(fvu) // 10)
  best = np.minimum.accumulate(fvu)
  return float(np.max(fvu[start:] / best[start - 1:-1], initial=1.0))


def relu_sae(params, x):
  """x [n, d] centred -> (x_hat, acts) of the preset's params (a ReLU SAE,
  with the reference's output bias b_out unless overridden off)."""
  acts = np.maximum((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"],
                    0)
  return (acts @ params["W_dec"] + params["b_dec"] + params.get("b_out", 0.0),
          acts)


def preset_config(dim, seed, epochs, adam_kernel="auto", overrides=None):
  config = get_config("reference")
  for key, value in (overrides or {}).items():  # parse_overrides'
    section, field = key.split(".")
    config[section][field] = value
  config.model.d_in = dim
  config.train.epochs = epochs
  config.train.adam_kernel = adam_kernel
  config.seed = seed
  return config


def preset_streams(config, n_train):
  """The preset's random streams for torch: its starting weights in torch's
  layouts and its row order of each epoch (train_core._epoch's), so that
  the two trainers differ only in arithmetic. Once the preset's guard
  restores, its path parts from these (turn it off to compare:
  --overrides=train.divergence_factor=0)."""
  spec = core.static_spec_from_config(config, n_train)
  key = jax.random.PRNGKey(config.seed)
  params = jax.device_get(core.init_state(spec, key).params)
  init = {"w_enc": params["W_enc"].T, "w_dec": params["W_dec"].T}
  return init, lambda epoch: np.asarray(jax.random.permutation(
      jax.random.fold_in(key, epoch), n_train))


def run_preset(es, split, config, workdir):
  train, val, test = split
  data.save_embedding_set(es, f"{workdir}/set")
  config.data.path = f"{workdir}/set"
  start = time.perf_counter()
  summary = train_run.train_and_evaluate(config, f"{workdir}/work",
                                         progress=False, split=(train, val))
  seconds = time.perf_counter() - start
  mean = es.embeddings[train].mean(0)
  params = load_file(f"{workdir}/work/{runs.PARAMS_FILE}")
  x_test = es.embeddings[test]
  x_hat, acts = relu_sae(params, x_test - mean)
  x_hat = x_hat + mean
  rows = train_run.read_metrics(Path(f"{workdir}/work/metrics.jsonl"))
  return {"dead": summary["dead_window_fraction"],
          "never_fires": summary["never_fires_fraction"],
          "test_mse": float(np.mean((x_test - x_hat) ** 2)),
          "l0": float(np.mean(np.sum(acts > 0, 1))),
          "heldout_fvu": metrics.heldout_fvu(x_test, x_hat, mean),
          "seconds": seconds,
          "fvu_jump": worst_jump([r["heldout_fvu"] for r in rows]),
          "steps": summary["steps"],
          "restores": summary["divergence_restores"]}


def run_torch(es, split, seed, epochs, variant, streams=None):
  import reference_torch
  import torch
  # On the shared 2-core machines, 2 threads cost 5x the CPU time per step.
  torch.set_num_threads(1)
  train, val, test = split
  init, orders = streams or (None, None)
  x = es.embeddings
  issue = variant == "issue"
  # validation MSE recorded every epoch's worth of steps, as the preset
  # validates, so that both jumps are measured at the same resolution
  r = reference_torch.train_reference(
      x[train], x[val], x[test], seed=seed, epochs=epochs, batch=BATCH,
      resample="fresh" if issue else "code",
      decoder_norm="latents" if issue else "inputs",
      monitor_every=-(-len(train) // BATCH), init=init, orders=orders)
  val_var = np.sum((x[val] - x[train].mean(0)) ** 2) / x[val].size
  return {"dead": r["dead_counter"], "never_fires": r["dead_never_fires"],
          "test_mse": r["test_mse"], "l0": r["test_l0"],
          "heldout_fvu": r["heldout_fvu"], "seconds": r["seconds"],
          "fvu_jump": worst_jump(r["val_mse_monitor"] / val_var),
          "steps": r["steps"], "restores": 0}


def parse_overrides(text):
  """"train.lr=3e-4,model.output_bias=False" -> {"train.lr": 3e-4, ...},
  each checked against the preset's setting of that name and type (a
  ValueError saying which is wrong)."""
  config, out = get_config("reference"), {}
  for item in filter(None, text.split(",")):
    key, eq, raw = item.partition("=")
    section, _, field = key.partition(".")
    if not eq or field not in config.get(section, {}):
      raise ValueError(f"{item!r} does not set a setting of the reference "
                       "preset (configs/sae.py), e.g. "
                       "train.divergence_factor=1.5")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    try:
      config[section][field] = value  # ml_collections checks the type
    except TypeError as e:
      raise ValueError(f"{item!r}: {e}") from None
    out[key] = value
  return out


def embedding_set(path, standin):
  """The set at `path` (an embedding-set folder), else the named stand-in;
  exits with one line when the folder cannot be read."""
  if not path:
    return getattr(synthetic, f"make_{standin}")().embedding_set
  try:
    return data.load_embedding_set(path)
  except (data.DataError, OSError) as e:
    sys.exit(f"--data={path}: {e}")


def spread(values, fmt):
  values = np.asarray(values, float)
  if len(values) == 1:
    return fmt.format(values[0])
  return (f"{fmt.format(values.mean())} [{fmt.format(values.min())}, "
          f"{fmt.format(values.max())}]")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default="", help="an embedding-set folder")
  parser.add_argument("--standin", default="reference_like",
                      choices=("reference_like", "t5_like"))
  parser.add_argument("--seeds", default="0,1,2",
                      help="one split and SAE seed per run")
  parser.add_argument("--epochs", type=int, default=500)
  parser.add_argument("--variant", default="code", choices=("code", "issue"),
                      help="the torch re-implementation: as the reference's "
                      "code runs, or as issue 12 summarises it")
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--torch_streams", default="own",
                      choices=("own", "preset"),
                      help="torch's starting weights and batch order: its "
                      "own draws, or the preset's (then the two differ only "
                      "in arithmetic)")
  parser.add_argument("--adam_kernel", default="auto",
                      choices=("auto", "fused", "optax"),
                      help="the preset's train.adam_kernel")
  parser.add_argument("--overrides", default="",
                      help="the preset's settings changed, e.g. "
                      "train.divergence_factor=1.5,train.lr=3e-4")
  args = parser.parse_args()
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    sys.exit(f"--seeds={args.seeds!r}: give integers, e.g. 0,1,2")
  try:
    overrides = parse_overrides(args.overrides)
  except ValueError as e:
    sys.exit(f"--overrides: {e}")
  es = embedding_set(args.data, args.standin)
  results = {"preset": [], "torch": []}
  for seed in seeds:
    split = split_70_15_15(len(es), seed)
    config = preset_config(es.dim, seed, args.epochs, args.adam_kernel,
                           overrides)
    with tempfile.TemporaryDirectory() as tmp:
      results["preset"].append(run_preset(es, split, config, tmp))
    if not args.skip_torch:
      streams = (preset_streams(config, len(split[0]))
                 if args.torch_streams == "preset" else None)
      results["torch"].append(run_torch(es, split, seed, args.epochs,
                                        args.variant, streams))
    print(f"seed {seed}: " + "; ".join(
        f"{name} " + ", ".join(f"{k}={v:.4g}" for k, v in r[-1].items())
        for name, r in results.items() if r), flush=True)
  print(f"data: {args.data or args.standin} {len(es)} x {es.dim}; seeds "
        f"{seeds} (mean [min, max]); torch variant: {args.variant}, "
        f"{args.torch_streams} random streams")
  print(f"{'':28}{'reference':>12}{'torch re-impl':>28}{'preset':>28}")
  for key, label, fmt in ROWS:
    ref = fmt.format(REFERENCE[key]) if key in REFERENCE else "-"
    cells = [spread([r[key] for r in results[name]], fmt)
             if results[name] else "-" for name in ("torch", "preset")]
    print(f"{label:28}{ref:>12}{cells[0]:>28}{cells[1]:>28}")
  for name, runs_ in results.items():
    jumps = np.array([r["fvu_jump"] for r in runs_])
    if len(jumps):
      print(f"{name}: runs whose validation FVU rose above 1.5x / 3x its "
            f"best: {np.sum(jumps > 1.5)} / {np.sum(jumps > 3)} of "
            f"{len(jumps)}")
  preset = results["preset"]
  print(f"preset: {preset[0]['steps']} steps per run, divergence restores "
        f"{[r['restores'] for r in preset]}; reference's 107 s / preset "
        f"mean {107.0 / np.mean([r['seconds'] for r in preset]):.1f}x")


if __name__ == "__main__":
  main()
