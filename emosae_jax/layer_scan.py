"""Where does emotion live? Per embedding set (T5's output, each MusicGen
decoder layer), two readings, each beside its shuffled-label null:

  probe     a logistic-regression probe trained on some templates and
            scored on held-out ones (emosae_jax.probe); null: probes
            trained on shuffled training labels, scored on the same
            (true) test labels
  features  the count of significant features of a small SAE trained on
            the set (train_run), by the analysis' own test (permutation
            p-value, BH, minimum support: analysis.compute); null: the same
            count under each label shuffle (the analysis' null counts)

    result = scan(["emb", "residual"], "layer_scan", ScanSettings())
    # -> layer_scan/layer_scan.json, layer_scan.png; result["best"]

A folder holding residual.json (bridge.residual) stands for its layer sets.
Each set's row is kept in OUT/rows/ as it finishes (a killed scan resumes;
the SAE workdirs under OUT/saes/ resume too). The SAE trains and is tested
on the whole set, as the reference counted; read its count only against
the null beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from emosae_jax import data, probe

SCAN_FILE = "layer_scan.json"
PLOT_FILE = "layer_scan.png"
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ScanSettings:
  shuffles: int = 5  # shuffled-label probes per set
  seed: int = 0
  sae: bool = True  # False: probes only
  arch: str = "topk"
  expansion: int = 2  # d_sae = expansion x d
  k: int = 16
  epochs: int = 20
  batch_size: int = 256
  lr: float = 1e-3
  permutations: int = 200
  fdr: float = 0.05
  min_support: int = 5
  # Part of the test, as in the analysis: a significant feature also fires
  # on >= this fraction of its emotion's examples (0: BH and support only).
  min_support_fraction: float = 0.0


def expand(paths: Sequence[str | Path]) -> list[Path]:
  """Set folders, with residual extractions replaced by their layer sets."""
  sets = []
  for p in map(Path, paths):
    manifest = p / "residual.json"
    if manifest.is_file():
      sets += [p / s for s in json.loads(manifest.read_text())["sets"]]
    else:
      sets.append(p)
  return sets


def site_name(es: data.EmbeddingSet) -> tuple[str, float]:
  """(label, sort key): T5 output first, then decoder layers in order."""
  site = es.meta.get("site") or {"kind": "t5_output"}
  if site["kind"] == "decoder_layer":
    return f"layer {site['layer']}", 1 + site["layer"]
  return f"T5 output ({Path(str(es.meta.get('encoder', '?'))).name})", 0


def probe_row(es: data.EmbeddingSet, shuffles: int, seed: int) -> dict:
  """Held-out-template probe accuracy beside `shuffles` shuffled-label
  probes (test labels stay true)."""
  labelled = es.subset(np.flatnonzero(es.labels >= 0))
  x, y = labelled.embeddings, labelled.labels
  train, test, how = probe.heldout_split(labelled, seed)
  real = probe.heldout_accuracy(x, y, train, test, labelled.label_names,
                                seed)
  rng = np.random.default_rng(seed)
  null = []
  for _ in range(shuffles):
    shuffled = y.copy()
    shuffled[train] = rng.permutation(y[train])
    null.append(probe.heldout_accuracy(x, shuffled, train, test,
                                       seed=seed)["accuracy"])
  return dict(accuracy=real["accuracy"], chance=real["chance"],
              chance_uniform=real["chance_uniform"], null=null,
              null_mean=float(np.mean(null)) if null else None,
              split=how, n_train=real["n_train"], n_test=real["n_test"],
              d=es.dim, per_emotion=real["per_emotion"])


def sae_config(path: Path, d: int, s: ScanSettings):
  """configs/sae.py with the scan's small SAE on the set at `path`."""
  spec = importlib.util.spec_from_file_location("emosae_sae_config",
                                                ROOT / "configs" / "sae.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"arch={s.arch}")
  config.seed = s.seed
  config.data.path = str(path)
  config.model.d_in, config.model.d_sae = d, s.expansion * d
  config.model.k = min(s.k, config.model.d_sae)
  config.model.k_aux = min(config.model.k_aux, config.model.d_sae)
  config.train.lr, config.train.batch_size = s.lr, s.batch_size
  config.train.epochs = s.epochs
  config.train.epochs_per_call = min(10, s.epochs)
  config.train.checkpoint_every_epochs = min(10, s.epochs)
  return config


def feature_row(path: Path, workdir: Path, s: ScanSettings) -> dict:
  """Trains (or resumes) the set's SAE in `workdir`; its significant
  feature count beside the count under each label shuffle."""
  from emosae_jax import analysis, runs, train_run
  es = data.load_embedding_set(path)
  summary = train_run.train_and_evaluate(sae_config(path, es.dim, s),
                                         workdir, progress=False)
  members = analysis.load_members(workdir)
  es = analysis.load_data(members)
  analysis.check_inputs(members, es, s.min_support)
  rows = np.flatnonzero(es.labels >= 0)
  x = runs.normalizer_of(members.info).apply(es.embeddings[rows])
  settings = analysis.Settings(permutations=s.permutations, fdr=s.fdr,
                               min_support=s.min_support,
                               min_support_fraction=s.min_support_fraction,
                               seed=s.seed,
                               n_causal=0, n_top=1)
  arrays, extras = analysis.compute(
      members.sae, members.params, x.astype(np.float32), es.labels[rows],
      len(es.label_names), analysis.group_ids([es.groups[r] for r in rows]),
      settings, fall_back_to_all_rows=True)
  null = arrays["null_significant_count"][0].astype(int)
  return dict(significant=int(arrays["significant_count"][0]),
              significant_null=null.tolist(),
              significant_null_mean=float(null.mean()),
              significant_null_max=int(null.max()),
              d_sae=int(members.sae.d_sae),
              fvu=runs.summary_metric(summary, "fvu"),
              l0=runs.summary_metric(summary, "l0"),
              permutation=extras["permutation"]["scheme"])


def _key(path: Path, s: ScanSettings) -> str:
  """A row is reused only for the same set contents and settings."""
  meta = json.loads((path / data.SIDECAR_FILE).read_text())
  text = json.dumps([meta.get("content_hash"), dataclasses.asdict(s)],
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _slug(path: Path) -> str:
  return f"{path.parent.name}_{path.name}"


def scan_set(path: Path, out: Path, s: ScanSettings, log=print) -> dict:
  """One set's row (reused from OUT/rows when its key matches)."""
  key = _key(path, s)
  cached = out / "rows" / f"{_slug(path)}.json"
  if cached.is_file():
    row = json.loads(cached.read_text())
    if row.get("key") == key:
      return row
  es = data.load_embedding_set(path)
  name, order = site_name(es)
  row = dict(site=name, order=order, path=str(path), key=key,
             **probe_row(es, s.shuffles, s.seed))
  if s.sae:
    row.update(feature_row(path, out / "saes" / _slug(path), s))
  cached.parent.mkdir(parents=True, exist_ok=True)
  data.atomic_write_json(cached, row)
  log(f"{name:>24}: probe {row['accuracy']:.3f} (shuffled labels "
      f"{row['null_mean']:.3f}, chance {row['chance']:.3f})" + (
          f"; {row['significant']} significant features (shuffled labels "
          f"{row['significant_null_mean']:.1f}, max "
          f"{row['significant_null_max']})" if s.sae else ""))
  return row


def excess(row: dict) -> tuple[float, float]:
  """How far a row stands above its nulls: probe accuracy over the null's
  mean, then significant features over the null's mean."""
  return (row["accuracy"] - (row["null_mean"] or 0.0),
          row.get("significant", 0) - row.get("significant_null_mean", 0.0))


def best_layer(rows: list[dict]) -> dict | None:
  """The decoder-layer row standing furthest above its nulls (probe first,
  feature count breaking ties); None without decoder layers."""
  layers = [r for r in rows if r["site"].startswith("layer ")]
  return max(layers, key=excess) if layers else None


def scan(paths: Sequence[str | Path], out: str | Path,
         settings: ScanSettings = ScanSettings(), log=print) -> dict:
  """Scans every set; writes OUT/layer_scan.json and layer_scan.png."""
  if settings.shuffles < 1:
    raise ValueError(f"--shuffles must be >= 1, got {settings.shuffles}")
  sets = expand(paths)
  missing = [str(p) for p in sets if not (p / data.SIDECAR_FILE).is_file()]
  if not sets or missing:
    raise data.DataError(f"no embedding set at {missing[0]}" if missing
                         else "no embedding sets to scan")
  out = Path(out)
  rows = sorted((scan_set(p, out, settings, log) for p in sets),
                key=lambda r: r["order"])
  best = best_layer(rows)
  result = dict(rows=rows, settings=dataclasses.asdict(settings),
                best=None if best is None else dict(
                    site=best["site"], path=best["path"],
                    layer=int(best["order"] - 1),
                    probe_excess=excess(best)[0],
                    feature_excess=excess(best)[1]))
  plot(rows, out / PLOT_FILE)
  data.atomic_write_json(out / SCAN_FILE, result)
  return result


def plot(rows: list[dict], path: Path) -> None:
  """Probe accuracy (left) and significant features (right) per site,
  each with its shuffled-label null (mean and range)."""
  from emosae_jax import plots
  with_sae = all("significant" in r for r in rows)
  fig, axes = plots.plt.subplots(
      1, 2 if with_sae else 1, squeeze=False,
      figsize=((2 if with_sae else 1) * max(5, 0.45 * len(rows) + 2), 3.6))
  xs = np.arange(len(rows))
  names = [r["site"] for r in rows]
  panels = [("accuracy", "null", "held-out probe",
             "accuracy on held-out templates")]
  if with_sae:
    panels.append(("significant", "significant_null", "SAE features",
                   "significant SAE features"))
  for ax, (real, null, label, ylabel) in zip(axes[0], panels):
    ax.plot(xs, [r[real] for r in rows], "o-", label=label)
    lo = [min(r[null]) for r in rows]
    hi = [max(r[null]) for r in rows]
    ax.fill_between(xs, lo, hi, alpha=0.3, color="grey",
                    label="shuffled labels (range)")
    ax.plot(xs, [np.mean(r[null]) for r in rows], "--", color="grey")
    if real == "accuracy":
      ax.plot(xs, [r["chance"] for r in rows], ":", color="black",
              label="majority chance")
      ax.set_ylim(0, 1)
    else:  # counts: from 0, and a visible range when every count is 0
      ax.set_ylim(0, 1.1 * max([1] + [r[real] for r in rows] + hi))
    ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
  axes[0][0].set_title("Where is emotion readable?")
  fig.tight_layout()
  plots.save_figure(fig, path)


def table_rows(result: dict) -> list[list]:
  """Report rows: site, probe (null), significant features (null)."""
  rows = []
  for r in result["rows"]:
    best = result.get("best") and result["best"]["path"] == r["path"]
    rows.append([r["site"] + (" (best layer)" if best else ""),
                 r["accuracy"], r["null_mean"],
                 max(r["null"]), r["chance"],
                 r.get("significant"), r.get("significant_null_mean"),
                 r.get("significant_null_max"), r.get("fvu")])
  return rows


TABLE_COLUMNS = ["site", "held-out probe accuracy",
                 "shuffled labels (mean)", "shuffled labels (max)",
                 "majority chance", "significant SAE features",
                 "shuffled labels (mean)", "shuffled labels (max)",
                 "SAE FVU"]
