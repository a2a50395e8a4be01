"""Trains EleutherAI sparsify (eai-sparsify 1.3.3) TopK SAEs for
bench_quality.py; runs in sparsify's own venv.

  /work/venvs/sparsify/bin/python benchmarks/sparsify_runner.py JOBS.json

Not part of the project (emosae never imports torch or sparsify), like
saelens_runner.py: reads .npy inputs, writes .npy reconstructions and a JSON
result, so that every library is scored by the same numpy function.

sparsify's trainer (`sparsify.Trainer`) only trains on a HF model's hidden
states read by forward hooks from a token dataset. It is driven here
unchanged: the "model" is a frozen lookup table whose rows are the training
inputs (token id i -> row i, through one identity layer, the hookpoint), and
the dataset is shuffled row ids, one row per "sequence", so a sparsify batch
of B sequences is B of our rows. Everything else is sparsify's own: its
SparseCoder (encoder = transpose of the unit-norm decoder, zero encoder bias,
b_dec set to the first batch's mean), its FVU loss, its decoder-norm
projection and renormalisation, its optimizer defaults (signum under
schedule-free, momentum 0.95, no warm-up or decay) and its AuxK settings
(alpha 0: off by default). After training the schedule-free optimizer is
switched to eval, as sparsify does before saving, so the averaged weights
are scored.

JOBS.json: {"x_train": PATH.npy, "x_test": PATH.npy, "out": PATH.json,
            "jobs": [{"name", "d_sae", "k", "lr" (null: sparsify's own
                      5e-3 / sqrt(d_sae / 2^14)), "batch", "steps",
                      "seed"}]}
Writes <out dir>/<name>.xhat.npy and per job {"l0", "dead", "lr",
"seconds"}.
"""

import contextlib
import io
import json
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from sparsify import SaeConfig, TrainConfig, Trainer


class TableConfig(PretrainedConfig):
  model_type = "emosae_row_table"

  def __init__(self, n_rows=8, d_in=1, **kwargs):
    super().__init__(**kwargs)
    self.n_rows, self.d_in, self.num_hidden_layers = n_rows, d_in, 1


class RowTable(PreTrainedModel):
  """input_ids [B, 1] of row indices -> the rows [B, 1, d_in], through
  `layers.0`, an identity where sparsify hooks."""
  config_class = TableConfig
  base_model_prefix = ""

  def __init__(self, config, rows=None):
    super().__init__(config)
    table = rows if rows is not None else torch.zeros(config.n_rows,
                                                      config.d_in)
    self.table = nn.Embedding.from_pretrained(table, freeze=True)
    self.layers = nn.ModuleList([nn.Identity()])

  @property
  def dummy_inputs(self):
    return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

  def forward(self, input_ids, **_):
    return self.layers[0](self.table(input_ids))


def row_ids(n, batch, steps, seed):
  """steps * batch row ids: shuffled epochs, each dropping its last partial
  batch (as the other runners do)."""
  rng = np.random.default_rng(seed)
  per_epoch = (n // batch) * batch
  epochs = -(-steps * batch // per_epoch)
  ids = np.concatenate([rng.permutation(n)[:per_epoch] for _ in range(epochs)])
  return ids[:steps * batch]


def train(job, x_train, save_dir):
  model = RowTable(TableConfig(n_rows=x_train.shape[0],
                               d_in=x_train.shape[1]), x_train)
  ids = row_ids(x_train.shape[0], job["batch"], job["steps"], job["seed"])
  dataset = Dataset.from_dict({"input_ids": ids[:, None]}).with_format("torch")
  cfg = TrainConfig(
      SaeConfig(k=job["k"], num_latents=job["d_sae"]),
      batch_size=job["batch"], lr=job["lr"], layers=[0], init_seeds=[
          job["seed"]], log_to_wandb=False, save_every=10**9,
      save_dir=str(save_dir), run_name=job["name"])
  with contextlib.redirect_stdout(io.StringIO()):  # its progress prints
    trainer = Trainer(cfg, dataset, model)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
  for opt in trainer.optimizers:  # schedule-free: score the averaged weights
    if hasattr(opt, "eval"):
      opt.eval()
  (sae,) = trainer.saes.values()
  return sae, lr, seconds


@torch.no_grad()
def encode_dense(sae, x, chunk=4096):
  """Dense [N, d_sae] activations from sparsify's top-k encoder."""
  out = []
  for i in range(0, x.shape[0], chunk):
    acts, idx, _ = sae.encode(x[i:i + chunk])
    out.append(torch.zeros(acts.shape[0], sae.num_latents).scatter_(
        1, idx, acts))
  return torch.cat(out)


def quality(job, x_train, x_test, out_dir):
  with tempfile.TemporaryDirectory() as tmp:
    sae, lr, seconds = train(job, x_train, tmp)
  sae.eval()
  with torch.no_grad():
    acts, idx, _ = sae.encode(x_test)
    x_hat = sae.decode(acts, idx)
    test_dense = encode_dense(sae, x_test)
    train_dense = encode_dense(sae, x_train)
  np.save(out_dir / f"{job['name']}.xhat.npy", x_hat.numpy())
  return {"l0": float((test_dense != 0).sum(-1).float().mean()),
          "dead": float((train_dense != 0).sum(0).eq(0).float().mean()),
          "lr": lr, "seconds": seconds}


def main():
  spec = json.loads(Path(sys.argv[1]).read_text())
  out = Path(spec["out"])
  # One thread, as saelens_runner.py's quality mode (shared 2-core machine).
  torch.set_num_threads(1)
  x_train = torch.from_numpy(np.load(spec["x_train"]).astype(np.float32))
  x_test = torch.from_numpy(np.load(spec["x_test"]).astype(np.float32))
  results = {job["name"]: quality(job, x_train, x_test, out.parent)
             for job in spec["jobs"]}
  results["version"] = metadata.version("eai-sparsify")
  out.write_text(json.dumps(results))


if __name__ == "__main__":
  main()
