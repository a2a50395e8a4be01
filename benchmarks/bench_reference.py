r"""The `reference` preset beside the reference system's own figures.

  python benchmarks/bench_reference.py [--data=PATH] [--epochs=500]

The reference system (768 -> 6144 ReLU + L1, batch 16, 500 epochs, patience
50, random 70/15/15 split, raw units) ended on its 100 t5-base embeddings
with 45% dead latents, test MSE 0.0064 (raw units), L0 144, in 107 s. Its
embeddings are not available here: without --data the run uses
`synthetic.make_reference_like()` (100 x 768, planted dictionary in a
low-rank subspace plus noise, in t5-like raw units), so the figures compare
behaviour, not the same numbers. Prints dead fraction (two definitions),
test MSE, held-out FVU, L0, wall time, and whether training FVU spiked.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from configs.sae import get_config  # noqa: E402
from emosae_jax import data, metrics, synthetic, train_run  # noqa: E402

REFERENCE = {"dead": 0.45, "test_mse": 0.0064, "l0": 144, "seconds": 107.0}


def split_70_15_15(n, seed=0):
  """Random test rows (15%) held out before training; the rest is train+val
  (the preset's val_fraction takes 15% of the whole from it)."""
  perm = np.random.default_rng(seed).permutation(n)
  n_test = int(round(0.15 * n))
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def sae_apply(params, x):
  """x [n, d] in the run's (centred) units -> (x_hat, acts) for ReLU SAEs."""
  acts = np.maximum((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"],
                    0)
  return acts @ params["W_dec"] + params["b_dec"], acts


def run(es, workdir, epochs, seed=0):
  fit, test = split_70_15_15(len(es), seed)
  data.save_embedding_set(es.subset(fit), f"{workdir}/set")
  config = get_config("reference")
  config.data.path = f"{workdir}/set"
  config.data.val_fraction = 0.15 / 0.85
  config.train.epochs = epochs
  config.model.d_in = es.dim
  start = time.perf_counter()
  summary = train_run.train_and_evaluate(config, f"{workdir}/work",
                                         progress=False)
  seconds = time.perf_counter() - start
  info = json.loads(Path(f"{workdir}/work/data_info.json").read_text())
  mean = np.asarray(info["normalizer"]["mean"], np.float32)
  scale = info["normalizer"]["scale"]
  params = load_file(f"{workdir}/work/params.safetensors")
  x_test = es.embeddings[test]
  x_hat, acts = sae_apply(params, (x_test - mean) * scale)
  x_hat = x_hat / scale + mean
  train_x = es.embeddings[fit][info["train_index"]]
  _, train_acts = sae_apply(params, (train_x - mean) * scale)
  rows = train_run.read_metrics(Path(f"{workdir}/work/metrics.jsonl"))
  train_fvu = [r["step_mse"] / np.mean(np.var((train_x - mean) * scale, 0))
               for r in rows]
  best = np.minimum.accumulate(train_fvu)
  return {"seconds": seconds, "epochs": summary["epochs_run"],
          "steps": summary["steps"],
          "dead_never_fires": float(np.mean(~np.any(train_acts > 0, 0))),
          "test_mse": float(np.mean((x_test - x_hat) ** 2)),
          "heldout_fvu": metrics.heldout_fvu(x_test, x_hat, mean),
          "l0": float(np.mean(np.sum(acts > 0, 1))),
          "train_l0": float(np.mean(np.sum(train_acts > 0, 1))),
          "worst_train_fvu_jump": float(np.max(np.asarray(train_fvu[10:])
                                               / best[10:], initial=0.0))}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default="", help="an embedding-set folder")
  parser.add_argument("--epochs", type=int, default=500)
  args = parser.parse_args()
  es = (data.load_embedding_set(args.data) if args.data
        else synthetic.make_reference_like().embedding_set)
  with tempfile.TemporaryDirectory() as tmp:
    r = run(es, tmp, args.epochs)
  ref = REFERENCE
  print(f"data: {args.data or 'synthetic.make_reference_like() 100 x 768'}")
  print(f"{'':24}{'reference':>12}{'this preset':>14}")
  print(f"{'dead (never fires)':24}{ref['dead']:>12.0%}"
        f"{r['dead_never_fires']:>14.0%}")
  print(f"{'test MSE (raw units)':24}{ref['test_mse']:>12.4f}"
        f"{r['test_mse']:>14.4f}")
  print(f"{'test L0':24}{ref['l0']:>12.0f}{r['l0']:>14.0f}")
  print(f"{'wall time (s)':24}{ref['seconds']:>12.0f}{r['seconds']:>14.1f}")
  print(f"held-out FVU {r['heldout_fvu']:.3f}; train L0 {r['train_l0']:.0f}; "
        f"{r['epochs']} epochs, {r['steps']} steps; largest training-FVU "
        f"jump over its best so far (after epoch 10): "
        f"{r['worst_train_fvu_jump']:.2f}x")


if __name__ == "__main__":
  main()
