"""The training driver: config + workdir in, trained SAE and reports out.

Workdir layout (every file written atomically; emosae_jax.runs owns the
names and reads them back):
  config.json         the resolved config
  data_info.json      data path and hash, split indices, input normaliser
  metrics.jsonl       one JSON line per epoch
  ckpt/               orbax checkpoints of the full train state
  params.safetensors  best parameters (normalised units) for other tools
  summary.json        final held-out FVU, MSE, L0, dead fraction, ...
  training_curves.png, density.png
  .lock               while a process trains here (its pid)
A resume refuses data whose content hash changed since the run started.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from emosae_jax import (checkpoint, data, fused_adam, metrics, plots, runs,
                        saes)
from emosae_jax import train_core as core
from emosae_jax.prepare import PreparedData, prepare

# Config fields that may change when a run is resumed.
RESUMABLE_CHANGES = ("train.epochs",)


def validate_config(config) -> None:
  """Raises ValueError for settings that cannot train, before any work."""
  m, t = config.model, config.train
  saes.get_arch(m.arch)
  checks = [
      (m.d_in > 0 and m.d_sae > 0, "model.d_in and model.d_sae must be > 0"),
      (m.arch not in ("topk", "batchtopk") or 0 < m.k <= m.d_sae,
       f"model.k={m.k} must lie in [1, d_sae={m.d_sae}]"),
      (m.decoder_norm in ("unit", "weighted", "inputs"),
       f"model.decoder_norm={m.decoder_norm!r}: use 'unit', 'weighted' or "
       "'inputs'"),
      (m.decoder_norm != "inputs" or m.arch == "relu_l1",
       "model.decoder_norm='inputs' is for relu_l1 only"),
      (not m.get("output_bias", False) or m.arch == "relu_l1",
       "model.output_bias is for relu_l1 only"),
      (m.get("top_k_method", "auto") in saes.TOP_K_METHODS,
       f"model.top_k_method={m.get('top_k_method')!r}: use one of "
       f"{', '.join(saes.TOP_K_METHODS)}"),
      (t.get("resample", "data") in ("data", "reference", "fresh"),
       f"train.resample={t.get('resample')!r}: use 'data', 'reference' or "
       "'fresh'"),
      (t.get("partial_batch", "drop") in ("drop", "wrap", "keep"),
       f"train.partial_batch={t.get('partial_batch')!r}: use 'drop', "
       "'wrap' or 'keep'"),
      (t.get("keep", "best") in ("best", "last"),
       f"train.keep={t.get('keep')!r}: use 'best' or 'last'"),
      (t.batch_size > 0 and t.epochs > 0 and t.epochs_per_call > 0,
       "train.batch_size, train.epochs and train.epochs_per_call must be > 0"),
      (t.lr > 0, f"train.lr={t.lr} must be > 0"),
      (t.get("matmul_precision", "default") in core.MATMUL_PRECISIONS,
       f"train.matmul_precision={t.get('matmul_precision')!r}: use one of "
       f"{', '.join(core.MATMUL_PRECISIONS)}"),
      (t.patience > 0, "train.patience must be > 0"),
      (t.get("adam_kernel", "auto") in core.ADAM_KERNELS,
       f"train.adam_kernel={t.get('adam_kernel')!r}: use one of "
       f"{', '.join(core.ADAM_KERNELS)}"),
      (t.get("adam_kernel", "auto") != "fused" or fused_adam.available(),
       "train.adam_kernel='fused': the CPU kernel could not be built (the "
       "warning above says why); use 'auto' or 'optax'"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def flatten(d: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_workdir(workdir: Path, config_dict: dict,
                  allowed_changes=RESUMABLE_CHANGES) -> None:
  """Fails if the workdir holds a different run or cannot be written."""
  saved = workdir / runs.CONFIG_FILE
  if saved.is_file():
    old, new = flatten(runs.read_json(saved)), flatten(config_dict)
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in allowed_changes)
    if diff:
      raise ValueError(f"{workdir} holds a different run (config differs in "
                       f"{', '.join(diff[:5])}); use a new --workdir")
  runs.prepare_workdir(workdir)


def write_metrics(path: Path, rows: list[dict]) -> None:
  data.atomic_write_bytes(
      path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_metrics(path: Path, up_to_epoch: int | None = None) -> list[dict]:
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line]
  return [r for r in rows if up_to_epoch is None or r["epoch"] <= up_to_epoch]


def eval_set_name(prepared: PreparedData) -> str:
  """What the per-epoch evaluation measured: "heldout" rows, or the
  "train" rows themselves when val_fraction is 0."""
  return "heldout" if len(prepared.val_index) else "train"




def epoch_rows(metric_arrays: dict, member: int | None = None,
               eval_set: str = "heldout") -> list[dict]:
  """Turns train_epochs' [n_epochs] (or [members, n_epochs]) metrics into
  JSON rows, keeping only the epochs that actually ran; eval_* metrics are
  named for the set they measured (eval_set_name)."""
  host = jax.device_get(metric_arrays)
  if member is not None:
    host = {k: v[member] for k, v in host.items()}
  rows = []
  for i in range(len(host["epoch"])):
    if not host["active"][i]:
      continue
    row = {(f"{eval_set}_{k[5:]}" if k.startswith("eval_") else k):
           float(v[i]) for k, v in host.items() if k != "active"}
    row["epoch"] = int(host["epoch"][i])
    rows.append(row)
  return rows


@functools.partial(jax.jit, static_argnums=0)
@core.with_spec_precision
def firing_counts(spec: core.StaticSpec, params, x):
  """How many examples of x [n, d] each latent fires on: int32 [d_sae]."""
  chunk = min(spec.eval_chunk, x.shape[0])
  n_chunks = -(-x.shape[0] // chunk)
  pad = n_chunks * chunk - x.shape[0]
  xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(n_chunks, chunk, -1)
  valid = (jnp.arange(n_chunks * chunk) < x.shape[0]).reshape(n_chunks, chunk)

  def body(counts, inputs):
    xc, vc = inputs
    acts = saes.encode(spec.sae, params, xc)
    return counts + jnp.sum((acts != 0) & vc[:, None], 0), None

  counts, _ = jax.lax.scan(body, jnp.zeros((spec.sae.d_sae,), jnp.int32),
                           (xs, valid))
  return counts


_evaluate = jax.jit(core.evaluate, static_argnums=0)


def final_report(spec: core.StaticSpec, hp, params, prepared: PreparedData,
                 ) -> tuple[dict, dict]:
  """Metrics of `params` on the evaluation set (held-out rows, or the
  training rows when there are none: the keys say which, see
  eval_set_name) and its density histogram (host values).
  never_fires_fraction: latents that fire on no training example."""
  val = jax.device_get(_evaluate(spec, hp, params, prepared.x_val))
  rates = np.asarray(firing_counts(spec, params, prepared.x_train)) / (
      prepared.x_train.shape[0])
  name = eval_set_name(prepared)
  summary = {"eval_set": name, f"{name}_fvu": float(val["fvu"]),
             f"{name}_mse": float(val["mse"]),
             f"{name}_mse_raw_units": float(val["mse"])
             / prepared.normalizer.scale ** 2,
             f"{name}_l0": float(val["l0"]),
             "never_fires_fraction": float(np.mean(rates == 0)),
             # which Adam ran (train.adam_kernel="auto" decides per machine)
             "adam": "fused" if spec.fused_adam else "optax",
             "factored_grads": spec.factored_grads}
  if prepared.true_features is not None:
    summary["recovery"] = metrics.dictionary_recovery(
        prepared.true_features, np.asarray(params["W_dec"]))
  return summary, metrics.density_histogram(rates)


def save_params(path: Path, params) -> None:
  """A params.safetensors file at `path` from (device) params."""
  runs.write_params_file(path, jax.device_get(params))


def train_and_evaluate(config, workdir: str | Path,
                       progress: bool = True, split=None) -> dict:
  """Trains (or resumes) one SAE in `workdir`; returns the summary dict.
  `split`: explicit (train rows, validation rows), see prepare."""
  validate_config(config)
  # data errors surface before the workdir is used
  prepared = prepare(config, split=split)
  workdir = Path(workdir)
  config_dict = config.to_dict()
  check_workdir(workdir, config_dict)
  with runs.lock(workdir):
    runs.check_data_hash(workdir, prepared.info())
    runs.write_config(workdir, config_dict)
    runs.write_data_info(workdir, prepared.info())
    return _train(config, workdir, prepared, progress)


def _train(config, workdir: Path, prepared: PreparedData,
           progress: bool) -> dict:
  spec = core.static_spec_from_config(config, prepared.x_train.shape[0])
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(config.seed))
  mngr = checkpoint.manager(workdir)
  restored = checkpoint.restore_latest(mngr, state)
  if restored is not None:
    state = restored
  metrics_path = workdir / runs.METRICS_FILE
  rows = read_metrics(metrics_path, up_to_epoch=int(state.epoch))

  total = config.train.epochs
  bar = tqdm(total=total, initial=int(state.epoch), unit="epoch",
             desc=f"train {config.model.arch}", disable=not progress)
  while int(state.epoch) < total and not bool(state.stopped | state.failed):
    n = min(config.train.epochs_per_call, total - int(state.epoch))
    state, epoch_metrics = core.compiled_train_epochs(spec, n)(
        state, hp, prepared.x_train, prepared.x_val, int(state.epoch))
    new_rows = epoch_rows(epoch_metrics, eval_set=eval_set_name(prepared))
    if bool(state.failed):
      raise core.TrainingError(
          f"loss became NaN/inf near step {int(state.step)} (epoch "
          f"{int(state.epoch) + 1}); lower train.lr or check the data. The "
          "last good checkpoint is kept in the workdir")
    rows += new_rows
    write_metrics(metrics_path, rows)
    bar.update(len(new_rows))
    if rows:
      name = eval_set_name(prepared)
      bar.set_postfix(loss=f"{rows[-1][f'{name}_loss']:.4g}",
                      fvu=f"{rows[-1][f'{name}_fvu']:.3f}",
                      l0=f"{rows[-1][f'{name}_l0']:.1f}")
    epoch = int(state.epoch)
    if (epoch % config.train.checkpoint_every_epochs == 0 or epoch >= total
        or bool(state.stopped)):
      checkpoint.save(mngr, epoch, state)
  bar.close()
  if mngr.latest_step() != int(state.epoch):
    checkpoint.save(mngr, int(state.epoch), state)

  # keep="last": the final parameters, as the reference reports its test
  # figures (its best-validation model is only saved aside)
  final = (state.params if config.train.get("keep", "best") == "last"
           else state.best_params)
  summary, hist = final_report(spec, hp, final, prepared)
  summary.update(epochs_run=int(state.epoch), steps=int(state.step),
                 kept=config.train.get("keep", "best"),
                 dead_window_fraction=(rows[-1]["dead_window_fraction"]
                                       if rows else 0.0),
                 best_epoch=int(state.best_epoch),
                 divergence_restores=int(sum(r.get("restored", 0)
                                             for r in rows)),
                 early_stopped=bool(state.stopped))
  save_params(workdir / runs.PARAMS_FILE, final)
  runs.write_summary(workdir, dict(summary, density_histogram=hist))
  if rows:
    plots.training_curves(rows, workdir / "training_curves.png")
  plots.density_histogram(hist, workdir / "density.png")
  return summary
