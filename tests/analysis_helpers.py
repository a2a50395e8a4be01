"""Builders shared by the analysis and export tests (cached per process).

`random_run()`   a run workdir of a randomly initialised topk SAE on small
                 labelled data with template groups (no training; for
                 exact comparisons and error cases), written by the run
                 layout's writers (emosae_jax.runs) with the data record
                 training itself writes (prepare(config).info()).
`planted_run()`  a topk SAE trained on planted-dictionary data whose labels
                 own features (for the recall / false-discovery tests).
Both are built once per test process into a temporary folder.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np

from conftest import tiny_config
from emosae_jax import data, runs, saes

_ROOT = Path(tempfile.mkdtemp(prefix="emosae_analysis_tests_"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

# Settings small enough for tests; the same DeviceSpec is reused across tests
# so the jitted analysis compiles once per shape.
RANDOM_SETTINGS = dict(permutations=60, fdr=0.1, min_support=3,
                       n_causal=32, n_random=4, n_top=5)


def labelled_set(n_per=50, k=3, d=16, n_groups=10, shift=1.5, seed=0,
                 **meta) -> data.EmbeddingSet:
  """Gaussian embeddings with an emotion-dependent mean; every template
  group holds every emotion; texts carry HTML to check escaping."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(k), n_per)
  mu = rng.normal(size=(k, d))
  x = rng.normal(size=(len(labels), d)) + shift * mu[labels] + 3.0
  groups = [f"t{i % n_groups}" for i in range(len(labels))]
  texts = [f"<b>prompt</b> {i} & co" for i in range(len(labels))]
  names = [f"emo{e}" for e in range(k)]
  return data.make_embedding_set(
      x, labels, names, texts, groups,
      encoder={"name": "test-encoder", "revision": "r1"}, **meta)


def write_run(workdir: Path, es_path: Path, params: dict, d_sae: int,
              k: int) -> Path:
  """A finished run of `params` on the set at es_path, as training writes
  it: runs' writers, the data record of prepare(config)."""
  from emosae_jax.prepare import prepare
  config = tiny_config("topk", model__d_in=len(params["b_dec"]),
                       model__d_sae=d_sae, model__k=k, data__synthetic=False,
                       data__path=str(es_path))
  runs.prepare_workdir(workdir)
  runs.write_config(workdir, config.to_dict())
  runs.write_data_info(workdir, prepare(config).info())
  runs.write_params(workdir, params)
  return workdir


def random_params(d: int, m: int, seed: int) -> dict:
  spec = saes.SAESpec(arch="topk", d_in=d, d_sae=m, k=4)
  params = saes.init_params(spec, jax.random.PRNGKey(seed))
  # Unequal decoder norms and a non-zero bias exercise the raw-unit mapping.
  rng = np.random.default_rng(seed)
  params = {k: np.asarray(v) for k, v in params.items()}
  params["W_dec"] = params["W_dec"] * rng.uniform(0.5, 2.0, (m, 1))
  params["b_dec"] = rng.normal(size=d).astype(np.float32) * 0.1
  return {k: v.astype(np.float32) for k, v in params.items()}


@functools.lru_cache(maxsize=None)
def random_run() -> Path:
  es = labelled_set()
  es_path = data.save_embedding_set(es, _ROOT / "random_data")
  return write_run(_ROOT / "random_run", es_path,
                   random_params(es.dim, 32, 0), 32, 4)


PLANTED = dict(n_examples=2048, n_features=48, n_labels=4, d=48)


@functools.lru_cache(maxsize=None)
def planted_run() -> Path:
  """topk SAE (d_sae 64, k 8, 40 epochs: ~8 s) on planted label features."""
  from emosae_jax import train_run
  config = tiny_config(
      "topk", data__n_examples=PLANTED["n_examples"],
      data__n_features=PLANTED["n_features"],
      data__n_labels=PLANTED["n_labels"], model__d_in=PLANTED["d"],
      model__d_sae=64, model__k=8, train__batch_size=64, train__epochs=40,
      train__epochs_per_call=40, train__checkpoint_every_epochs=40)
  workdir = _ROOT / "planted_run"
  train_run.train_and_evaluate(config, workdir, progress=False)
  return workdir


def planted_data():
  from emosae_jax import synthetic
  return synthetic.make_synthetic(
      n_examples=PLANTED["n_examples"], d=PLANTED["d"],
      n_features=PLANTED["n_features"], avg_active=4.0, noise=0.01,
      n_labels=PLANTED["n_labels"], seed=0)


def scratch(name: str) -> Path:
  path = _ROOT / name
  path.mkdir(parents=True, exist_ok=True)
  return path


def permuted_sweep(tmp_path: Path) -> tuple[Path, np.ndarray]:
  """A one-group sweep written by runs' writers (its group folder is
  returned): member 0 = the random run, 1 = failed (NaN parameters),
  2 = member 0 with its features permuted (so every feature reappears, at
  cosine 1). Rows follow the global indices here; tests/test_runs.py covers
  groups whose rows do not."""
  run = runs.load_members(random_run())
  params = {k: v[0] for k, v in run.params.items()}
  perm = np.random.default_rng(3).permutation(params["W_dec"].shape[0])
  permuted = dict(params, W_dec=params["W_dec"][perm],
                  W_enc=params["W_enc"][:, perm], b_enc=params["b_enc"][perm])
  broken = {k: np.full_like(v, np.nan) for k, v in params.items()}
  stacked = {k: np.stack([params[k], broken[k], permuted[k]]) for k in params}
  top = runs.prepare_workdir(tmp_path / "sweep")
  overrides = [{"seed": i} for i in range(3)]
  runs.write_config(top, {"base": run.config, "overrides": overrides})
  entries = [{"index": i, "group": 0, "overrides": overrides[i], "seed": i,
              "config": dict(run.config, seed=i), "status": status}
             for i, status in enumerate(["ok", "failed", "ok"])]
  gdir = runs.prepare_workdir(runs.group_dir(top, 0))
  entries = runs.write_group(gdir, entries, stacked, run.config, run.info)
  runs.write_sweep(top, entries, [gdir.name])
  return gdir, perm


# --------------------------------------------------------------------------
# Planted corpus vs validation: general and corpus-specific features

TRANSFER = dict(k=3, d=32, n_background=14, n_train=1500, n_val=600)


def transfer_dictionary(seed: int = 0) -> dict[str, np.ndarray]:
  """Unit directions: general[e] fires with emotion e in both sets,
  corpus[e] with emotion e only in the training set (a template habit; on
  the validation set it fires at random), background at random in both."""
  t = TRANSFER
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(t["d"], t["d"])))
  dirs = q.T[:2 * t["k"] + t["n_background"]]  # orthonormal rows
  return {"general": dirs[:t["k"]], "corpus": dirs[t["k"]:2 * t["k"]],
          "background": dirs[2 * t["k"]:]}


def transfer_set(split: str, seed: int) -> data.EmbeddingSet:
  """split "train": general and corpus features follow the emotion;
  "validation": only the general ones do."""
  t, dic = TRANSFER, transfer_dictionary()
  n = t["n_train"] if split == "train" else t["n_val"]
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % t["k"]
  own = labels[:, None] == np.arange(t["k"])[None]  # [N, K]
  general = rng.uniform(size=own.shape) < np.where(own, 0.6, 0.03)
  corpus = rng.uniform(size=own.shape) < (np.where(own, 0.6, 0.03)
                                          if split == "train" else 0.2)
  background = rng.uniform(size=(n, t["n_background"])) < 0.2
  mag = lambda shape: rng.uniform(1.0, 2.0, shape)
  x = (general * mag(own.shape)) @ dic["general"] + (
      corpus * mag(own.shape)) @ dic["corpus"] + (
      background * mag(background.shape)) @ dic["background"]
  x = x + 0.02 * rng.normal(size=x.shape) + 0.5
  names = ["happy", "sad", "tense"]
  if split == "validation":  # same emotions, other order and spelling
    order = [1, 2, 0]  # happy, sad, tense -> their index in `names`
    names = ["Tense", "happy", "SAD", "calm"]  # calm: none, left out
    labels = np.array(order)[labels]
  texts = [f"{split} prompt {i}" for i in range(n)]
  groups = [f"{split}{i % 10}" for i in range(n)]
  return data.make_embedding_set(x, labels, names, texts, groups,
                                 encoder={"name": "planted", "revision": "1"})


TRANSFER_LRS = (6e-3, 1e-2)
TRANSFER_SEEDS = (0, 1, 2)


@functools.lru_cache(maxsize=None)
def transfer_sweep() -> tuple[Path, Path]:
  """A real sweep (lr x seed, one group) on the planted training set, and
  the validation set's folder."""
  from emosae_jax import sweep
  train_path = data.save_embedding_set(transfer_set("train", 0),
                                       _ROOT / "transfer_train")
  val_path = data.save_embedding_set(transfer_set("validation", 1),
                                     _ROOT / "transfer_validation")
  t = TRANSFER
  base = tiny_config("topk", data__synthetic=False, data__path=str(train_path),
                     model__d_in=t["d"], model__d_sae=24, model__k=5,
                     train__batch_size=64, train__epochs=30,
                     train__epochs_per_call=30,
                     train__checkpoint_every_epochs=30)
  overrides = sweep.product(sweep.axis("train.lr", list(TRANSFER_LRS)),
                            sweep.axis("seed", list(TRANSFER_SEEDS)))
  workdir = _ROOT / "transfer_sweep"
  sweep.run_sweep(base, overrides, workdir, progress=False)
  return workdir / "g0", val_path


@functools.lru_cache(maxsize=None)
def transfer_analysis():
  """(group folder, validation folder, analysis Result) of transfer_sweep,
  analysed with its validation set (shared by the analysis and export
  tests)."""
  from emosae_jax import analysis
  workdir, val_path = transfer_sweep()
  result = analysis.analyze(workdir, settings=analysis.Settings(
      permutations=200, n_causal=32), validation=[str(val_path)])
  return workdir, val_path, result
