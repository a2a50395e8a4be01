r"""The reference system's SAE training, re-implemented in plain torch: the
known answer the `reference` preset is compared with (bench_reference.py).

  python benchmarks/reference_torch.py [--seed=0] [--variant=code|issue]

Written from the behaviour of the reference's code (QQCPM/Music,
src/models/sparse_autoencoder.py and experiments/train_sae_on_t5_embeddings.py,
October 2024), which issue 12 summarises; where the summary reads otherwise
the line says so (*):
- raw units; a fixed pre-bias (a buffer) equal to the training mean,
  subtracted before the encoder and added after the decoder. The decoder
  Linear also has its own learned bias, initially 0 (*: not in the summary).
- encoder Linear(d, m): Kaiming-uniform (ReLU gain) x 0.1, bias 0; decoder
  Linear(m, d): orthogonal, then `F.normalize(weight, dim=1)` on its [d, m]
  weight, after init and after every optimizer step. That makes each INPUT
  dimension's weights over the m latents unit norm (*: the summary says
  unit-norm latent directions; those have norm ~sqrt(d/m) = 0.35 here).
- loss: MSE (mean over batch and dims) + 3e-3 x mean |h| over batch and
  latents; Adam lr 1e-3, no weight decay, no clipping.
- batch 16, reshuffled each epoch, the last partial batch kept (70 rows: 5
  steps of 16, 16, 16, 16, 6); 500 epochs.
- validation every 50 steps (*: not every epoch); patience 50 validations =
  2,500 steps, so it cannot stop within 500 epochs of 5 steps; its test
  figures are the FINAL model's (*: best_model.pt is only saved aside).
- a latent's counter counts steps since it last fired in a training batch;
  dead = counter > 100, strictly.
- every 100 steps, for dead latents (*: not fresh weights): its code calls
  `kaiming_uniform_(weight[idx])` and `orthogonal_(weight[:, idx])`, which
  fill copies (advanced indexing) and change nothing; what acts is
  `weight.data[idx] *= 0.1` (the encoder rows shrink 10x) and the decoder
  columns of those latents set to unit norm (undone in part by the next
  step's per-input normalisation); their counters go to 0. Biases and Adam's
  state stay. A latent that stays dead is thus caught every 200 steps (its
  counter is exactly 100, not > 100, at the check after a reset).
- the dead count it prints is the counter's, computed in the step's forward
  pass (before that step updates the counters), i.e. at the last step of
  training.

variant=issue switches to the summary's reading of the two (*) that change
the dynamics most: fresh Kaiming x 0.1 encoder rows and orthogonal unit
decoder columns on resampling, and unit-norm latent directions after each
step. Other single differences are flags of `train_reference`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F


def _kaiming_x01(rows, cols, generator):
  bound = np.sqrt(6.0 / cols)  # kaiming_uniform_, fan_in, ReLU gain sqrt(2)
  return 0.1 * (2 * torch.rand(rows, cols, generator=generator) - 1) * bound


def _orthogonal(rows, cols, generator):
  """As torch.nn.init.orthogonal_: orthonormal rows (or columns)."""
  flat = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
  q, r = torch.linalg.qr(flat)
  q = q * torch.sign(torch.diagonal(r))
  return q.T if rows < cols else q


class ReferenceSAE:
  """The reference's model, optimizer and dead-latent bookkeeping; weights
  in torch's Linear layouts (w_enc [m, d], w_dec [d, m]). Options as in
  train_reference."""

  def __init__(self, x_train, d_sae, seed=0, lr=1e-3, l1=3e-3,
               dead_after=100, resample="code", decoder_norm="inputs",
               output_bias=True, init=None):
    self.g = torch.Generator().manual_seed(seed)
    d = x_train.shape[1]
    self.pre_bias = x_train.mean(0)
    if init is None:
      w_enc = _kaiming_x01(d_sae, d, self.g)
      w_dec = F.normalize(_orthogonal(d, d_sae, self.g), dim=1)
    else:  # given weights (another trainer's), in these layouts
      w_enc, w_dec = (torch.as_tensor(np.array(init[k], np.float32))
                      for k in ("w_enc", "w_dec"))
    self.w_enc = w_enc.requires_grad_()
    self.b_enc = torch.zeros(d_sae, requires_grad=True)
    self.w_dec = w_dec.requires_grad_()
    self.b_out = torch.zeros(d, requires_grad=output_bias)
    params = [self.w_enc, self.b_enc, self.w_dec]
    self.opt = torch.optim.Adam(params + ([self.b_out] if output_bias
                                          else []), lr=lr)
    self.since = torch.zeros(d_sae, dtype=torch.long)
    self.l1, self.dead_after, self.resample_mode = l1, dead_after, resample
    self.norm_dim = 1 if decoder_norm == "inputs" else 0

  def forward(self, x):
    h = F.relu((x - self.pre_bias) @ self.w_enc.T + self.b_enc)
    return h @ self.w_dec.T + self.b_out + self.pre_bias, h

  def losses(self, x):
    x_hat, h = self.forward(x)
    mse = F.mse_loss(x_hat, x)
    return mse + self.l1 * h.abs().mean(), mse, h

  def n_dead(self):
    return int((self.since > self.dead_after).sum())

  def step(self, xb):
    """One optimizer step; returns the batch MSE."""
    loss, mse, h = self.losses(xb)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      self.w_dec.data = F.normalize(self.w_dec.data, dim=self.norm_dim)
      self.since += 1
      self.since[h.detach().max(0).values > 0] = 0
    return mse.item()

  @torch.no_grad()
  def resample(self):
    """Acts on latents unfired for more than dead_after steps; returns how
    many."""
    dead = torch.where(self.since > self.dead_after)[0]
    if not len(dead):
      return 0
    d = self.w_enc.shape[1]
    if self.resample_mode == "fresh":
      self.w_enc.data[dead] = _kaiming_x01(len(dead), d, self.g)
      self.w_dec.data[:, dead] = _orthogonal(d, len(dead), self.g)
    else:
      self.w_enc.data[dead] *= 0.1
    self.w_dec.data[:, dead] = F.normalize(self.w_dec.data[:, dead], dim=0)
    self.since[dead] = 0
    return len(dead)


def train_reference(x_train, x_val, x_test, seed=0, d_sae=6144, epochs=500,
                    batch=16, lr=1e-3, l1=3e-3, dead_after=100,
                    resample_every=100, eval_every=50, patience=50,
                    resample="code", decoder_norm="inputs",
                    output_bias=True, partial_batch="keep",
                    monitor_every=0, init=None, orders=None):
  """Trains on float32 arrays in raw units; returns a dict of figures.

  resample: "code" (encoder rows x 0.1, decoder columns unit norm) or
  "fresh" (new Kaiming x 0.1 rows, new orthogonal unit columns);
  decoder_norm: "inputs" (the reference's dim=1) or "latents"; output_bias:
  the decoder's learned bias; partial_batch: "keep" (the last batch is
  short) or "wrap" (filled up with the epoch's first rows); monitor_every:
  also record the validation MSE every that many steps ("val_mse_monitor",
  not used by training; its own validation every 50 steps can miss a
  spike that comes and goes between two of them). init: starting weights
  {"w_enc": [d_sae, d], "w_dec": [d, d_sae]} and orders: epoch -> row order,
  both instead of its own draws, to run on another trainer's random streams.
  """
  x_train, x_val, x_test = (torch.as_tensor(np.asarray(a, np.float32))
                            for a in (x_train, x_val, x_test))
  sae = ReferenceSAE(x_train, d_sae, seed, lr, l1, dead_after, resample,
                     decoder_norm, output_bias, init)
  n = len(x_train)

  @torch.no_grad()
  def evaluate(x):  # the reference's loader: per-batch means, averaged
    parts = [sae.losses(x[i:i + batch]) for i in range(0, len(x), batch)]
    return (float(np.mean([p[0].item() for p in parts])),
            float(np.mean([p[1].item() for p in parts])),
            float(np.mean([(p[2] > 0).float().sum(1).mean().item()
                           for p in parts])))

  step, best_val, bad, dead_at_step = 0, float("inf"), 0, 0
  train_mse, val_mse, resampled, monitor = [], [], [], []
  start = time.perf_counter()
  for epoch in range(epochs):
    order = (torch.randperm(n, generator=sae.g) if orders is None
             else torch.as_tensor(np.asarray(orders(epoch), np.int64)))
    if partial_batch == "wrap" and n % batch:
      order = torch.cat([order, order[:batch - n % batch]])
    for i in range(0, len(order), batch):
      dead_at_step = sae.n_dead()  # its metric: before the step's update
      train_mse.append(sae.step(x_train[order[i:i + batch]]))
      step += 1
      if step % resample_every == 0:
        resampled.append(sae.resample())
      if monitor_every and step % monitor_every == 0:
        monitor.append(evaluate(x_val)[1])
      if step % eval_every == 0:
        val_loss, v_mse, _ = evaluate(x_val)
        val_mse.append(v_mse)
        if val_loss < best_val:
          best_val, bad = val_loss, 0
        else:
          bad += 1
      if bad >= patience:
        break
    if bad >= patience:
      break
  seconds = time.perf_counter() - start
  _, test_mse, test_l0 = evaluate(x_test)
  with torch.no_grad():
    x_hat, _ = sae.forward(x_test)
    fires = (sae.forward(x_train)[1] > 0).any(0)
  centred = x_test - sae.pre_bias
  return {"seconds": seconds, "steps": step, "model": sae,
          "dead_counter": dead_at_step / d_sae,
          "dead_never_fires": float(1 - fires.float().mean()),
          "test_mse": test_mse, "test_l0": test_l0,
          "heldout_fvu": float(((x_test - x_hat) ** 2).sum()
                               / (centred ** 2).sum()),
          "train_mse": np.asarray(train_mse), "val_mse": np.asarray(val_mse),
          "val_mse_monitor": np.asarray(monitor),
          "resampled": resampled}


def main():
  """One run on a stand-in, split as bench_reference.py splits it."""
  import sys
  from pathlib import Path
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  sys.path.insert(0, str(Path(__file__).resolve().parent))
  from bench_reference import split_70_15_15
  from emosae_jax import synthetic
  parser = argparse.ArgumentParser()
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, default=500)
  parser.add_argument("--standin", default="reference_like",
                      choices=("reference_like", "t5_like"))
  parser.add_argument("--variant", choices=("code", "issue"), default="code")
  parser.add_argument("--output_bias", type=int, default=1)
  parser.add_argument("--partial_batch", default="keep",
                      choices=("keep", "wrap"))
  parser.add_argument("--threads", type=int, default=1,
                      help="torch threads; on the shared 2-core machines 2 "
                      "threads cost 5x the CPU time per step of 1")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  x = getattr(synthetic, f"make_{args.standin}")().embedding_set.embeddings
  tr, va, te = split_70_15_15(len(x), args.seed)
  issue = args.variant == "issue"
  r = train_reference(x[tr], x[va], x[te], seed=args.seed, epochs=args.epochs,
                      resample="fresh" if issue else "code",
                      decoder_norm="latents" if issue else "inputs",
                      output_bias=bool(args.output_bias),
                      partial_batch=args.partial_batch)
  print(vars(args))
  print({k: round(float(v), 5) for k, v in r.items()
         if isinstance(v, (int, float))})
  print("resampled per event:", r["resampled"])


if __name__ == "__main__":
  main()
