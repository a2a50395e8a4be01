"""Trains SAELens SAEs for bench_quality.py; runs in SAELens's own venv.

  /work/venvs/saelens/bin/python benchmarks/saelens_runner.py JOBS.json

Not part of the project (emosae never imports torch or sae_lens): a small
runner that reads .npy inputs and writes .npy reconstructions and a JSON
result, so that both libraries are scored by the same numpy function.

JOBS.json: {"mode": "quality" | "speed", "x_train": PATH.npy,
            "x_test": PATH.npy (quality), "out": PATH.json,
            "jobs": [{"name", "arch", "d_sae", "k", "l1", "lr", "batch",
                      "steps", "seed", "warm" (speed), optional
                      "lr_warm_up_steps", "lr_decay_steps" (linear decay to
                      0 over the last steps), "l1_warm_up_steps"; 0 when
                      absent, SAELens's defaults}]}
quality: writes <out dir>/<name>.xhat.npy and per job {"l0", "dead",
  "seconds"}; speed: per job {"first_steps_s", "steps_per_s"}.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import sae_lens
import torch
from sae_lens import SAETrainer
from sae_lens.config import LoggingConfig, SAETrainerConfig


# The SAE, its trainer and the data on the GPU where torch sees one (the
# same place JAX runs this project's side of the comparison).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync():
  if DEVICE == "cuda":
    torch.cuda.synchronize()


def build(job, d_in):
  common = dict(d_in=d_in, d_sae=job["d_sae"], device=DEVICE)
  arch = job["arch"]
  if arch == "relu_l1":
    return sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(
        l1_coefficient=job["l1"],
        l1_warm_up_steps=job.get("l1_warm_up_steps", 0), **common))
  if arch == "topk":
    return sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(
        k=job["k"], **common))
  if arch == "batchtopk":
    return sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(
        k=job["k"], **common))
  if arch == "jumprelu":
    return sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(
        l0_coefficient=job["l1"], **common))
  raise ValueError(f"unknown arch {arch}")


def batches(x, batch, seed):
  """Endless shuffled epochs of x (a float32 tensor) in batches."""
  gen = torch.Generator().manual_seed(seed)
  while True:
    order = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0] - batch + 1, batch):
      yield x[order[i:i + batch]]


def trainer(job, sae, x):
  cfg = SAETrainerConfig(
      total_training_samples=job["steps"] * job["batch"],
      train_batch_size_samples=job["batch"], lr=job["lr"], lr_end=job["lr"],
      lr_warm_up_steps=job.get("lr_warm_up_steps", 0),
      lr_decay_steps=job.get("lr_decay_steps", 0), device=DEVICE,
      logger=LoggingConfig(log_to_wandb=False,
                           eval_every_n_wandb_logs=2**31 - 1))
  return SAETrainer(cfg=cfg, sae=sae,
                    data_provider=batches(x, job["batch"], job["seed"]))


@torch.no_grad()
def encode_all(sae, x, chunk=4096):
  sae.eval()
  return torch.cat([sae.encode(x[i:i + chunk])
                    for i in range(0, x.shape[0], chunk)])


def quality(job, x_train, x_test, out_dir):
  torch.manual_seed(job["seed"])
  sae = build(job, x_train.shape[1])
  start = time.perf_counter()
  trainer(job, sae, x_train).fit()
  seconds = time.perf_counter() - start
  with torch.no_grad():
    acts = encode_all(sae, x_test)
    x_hat = sae.decode(acts)
    train_acts = encode_all(sae, x_train)
  np.save(out_dir / f"{job['name']}.xhat.npy", x_hat.cpu().numpy())
  return {"l0": float((acts != 0).sum(-1).float().mean()),
          "dead": float((train_acts != 0).sum(0).eq(0).float().mean()),
          "seconds": seconds}


def speed(job, x):
  torch.manual_seed(job["seed"])
  # TF32 only when asked (bench_quality --precision), so that both
  # libraries do the same arithmetic on a GPU.
  torch.backends.cuda.matmul.allow_tf32 = job.get("tf32", False)
  torch.backends.cudnn.allow_tf32 = job.get("tf32", False)
  sae = build(job, x.shape[1])
  t = trainer(job, sae, x)
  data = batches(x, job["batch"], job["seed"])
  start = time.perf_counter()
  for _ in range(job["warm"]):
    t._train_step(sae, next(data))  # pylint: disable=protected-access
  sync()
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(job["steps"]):
    t._train_step(sae, next(data))  # pylint: disable=protected-access
  sync()
  return {"first_steps_s": first,
          "steps_per_s": job["steps"] / (time.perf_counter() - start)}


def main():
  spec = json.loads(Path(sys.argv[1]).read_text())
  out = Path(spec["out"])
  x_train = torch.from_numpy(np.load(spec["x_train"]).astype(np.float32))
  x_train = x_train.to(DEVICE)
  if spec["mode"] == "quality":
    # One thread: on the shared 2-core machine two threads ran a 320-step
    # MiniLM job in ~5 min instead of ~1 (oversubscription); quality mode
    # times nothing, and speed mode keeps torch's default.
    torch.set_num_threads(1)
  results = {}
  for job in spec["jobs"]:
    if spec["mode"] == "quality":
      x_test = torch.from_numpy(np.load(spec["x_test"]).astype(np.float32))
      x_test = x_test.to(DEVICE)
      results[job["name"]] = quality(job, x_train, x_test, out.parent)
    else:
      results[job["name"]] = speed(job, x_train)
  results["torch_threads"] = torch.get_num_threads()
  results["device"] = DEVICE
  out.write_text(json.dumps(results))


if __name__ == "__main__":
  main()
