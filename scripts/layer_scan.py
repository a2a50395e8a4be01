r"""Where does emotion live? Held-out-template probe accuracy per embedding set.

  python scripts/layer_scan.py --sets=/tmp/emosae/emb_t5,/tmp/emosae/residual \
      --out=/tmp/emosae/layer_scan

--sets takes embedding-set folders (e.g. T5 output from extract.py) and
residual extractions (folders with residual.json from extract_residual.py,
expanded to their layer sets). For each set: a logistic-regression probe
trained on some templates and tested on held-out ones (emosae_jax.probe),
beside a null of --shuffles probes trained on shuffled training labels and
scored on the same test prompts. Writes OUT/layer_scan.json and
OUT/layer_scan.png (accuracy per site, the null's mean and range, chance).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from emosae_jax import cli, data, plots, probe  # noqa: E402

_SETS = flags.DEFINE_list("sets", None, "Embedding sets or residual "
                          "extraction folders.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SHUFFLES = flags.DEFINE_integer("shuffles", 5, "Shuffled-label probes per "
                                 "set (the null).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for splits and shuffles.")


def expand(paths: list[str]) -> list[Path]:
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
  return f"T5 output ({es.meta.get('encoder', '?')})", 0


def scan_one(es: data.EmbeddingSet, shuffles: int, seed: int) -> dict:
  labelled = es.subset(np.flatnonzero(es.labels >= 0))
  x, y = labelled.embeddings, labelled.labels
  train, test, how = probe.heldout_split(labelled, seed)
  real = probe.heldout_accuracy(x, y, train, test, labelled.label_names,
                                seed)
  rng = np.random.default_rng(seed)
  null = []
  for _ in range(shuffles):
    shuffled = y.copy()
    shuffled[train] = rng.permutation(y[train])  # test labels stay true
    null.append(probe.heldout_accuracy(x, shuffled, train, test,
                                       seed=seed)["accuracy"])
  return dict(accuracy=real["accuracy"], chance=real["chance"],
              chance_uniform=real["chance_uniform"], null=null,
              null_mean=float(np.mean(null)) if null else None,
              split=how, n_train=real["n_train"], n_test=real["n_test"],
              d=es.dim, per_emotion=real["per_emotion"])


def plot(rows: list[dict], path: Path) -> None:
  fig, ax = plots.plt.subplots(figsize=(max(5, 0.45 * len(rows) + 2), 3.6))
  xs = np.arange(len(rows))
  ax.plot(xs, [r["accuracy"] for r in rows], "o-", label="held-out probe")
  if all(r["null"] for r in rows):
    lo = [min(r["null"]) for r in rows]
    hi = [max(r["null"]) for r in rows]
    ax.fill_between(xs, lo, hi, alpha=0.3, color="grey",
                    label="shuffled labels (range)")
    ax.plot(xs, [r["null_mean"] for r in rows], "--", color="grey")
  ax.plot(xs, [r["chance"] for r in rows], ":", color="black",
          label="majority chance")
  ax.set_xticks(xs, [r["site"] for r in rows], rotation=60, ha="right",
                fontsize=7)
  ax.set_ylabel("accuracy on held-out templates")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  ax.set_title("Where is emotion readable?")
  plots.save_figure(fig, path)


def main(argv):
  del argv
  if _SHUFFLES.value < 1:
    raise ValueError(f"--shuffles must be >= 1, got {_SHUFFLES.value}")
  out = Path(_OUT.value)
  rows = []
  for path in expand(_SETS.value):
    es = data.load_embedding_set(path)
    name, key = site_name(es)
    rows.append(dict(site=name, order=key, path=str(path),
                     **scan_one(es, _SHUFFLES.value, _SEED.value)))
    print(f"{name:>24}: {rows[-1]['accuracy']:.3f} (shuffled labels "
          f"{rows[-1]['null_mean']:.3f}, chance {rows[-1]['chance']:.3f})")
  rows.sort(key=lambda r: r["order"])
  out.mkdir(parents=True, exist_ok=True)
  plot(rows, out / "layer_scan.png")
  data.atomic_write_json(out / "layer_scan.json", dict(
      rows=rows, shuffles=_SHUFFLES.value, seed=_SEED.value))
  best = max(rows, key=lambda r: r["accuracy"])
  print(f"best: {best['site']} ({best['accuracy']:.3f}); wrote "
        f"{out}/layer_scan.json and layer_scan.png")


if __name__ == "__main__":
  cli.run(main)
