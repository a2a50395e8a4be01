r"""How the support fraction in the test trades count for reliability, on a
selection set: the evidence behind the pipeline's min_support_fraction.

  python scripts/pipeline.py --config=configs/pipeline.py:offline \
      --config.analysis.min_support_fraction=0 --workdir=/tmp/f0
  python benchmarks/support_scan.py --analysis=/tmp/f0/analysis \
      --set=embeddings_val

Reads an analysis written with min_support_fraction=0 and applies each
fraction afterwards: a BH-significant feature is kept when it fires on >=
the fraction of its emotion's corpus examples, and holds when it also did
so on the set (BH's q-values do not change: the fraction filters after
BH, as in the test). Reappearing uses the stability matches of the
BH-significant features (the analysis at that fraction matches among fewer
features and can differ by a feature or two). Prints, pooled over the
sweep's members: kept features, the shares holding on the set and
reappearing in >= half of the other seeds, and the emotions covered per
SAE. Choose on a selection set (val), never on the test split.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emosae_jax import analysis  # noqa: E402

FRACTIONS = (0.0, 0.05, 0.08, 0.1, 0.12, 0.14, 0.15, 0.16, 0.18, 0.2, 0.25, 0.3,
             0.4, 0.5)


def scan(summary: dict, arrays: dict, j: int, fractions=FRACTIONS):
  info = summary["validation"][j]
  n_set = np.array([info["examples_per_emotion"][n]
                    for n in info["emotions"]], float)
  key = f"validation{j}/"
  own = np.take_along_axis(arrays["rate"],
                           arrays["emotion"][:, None].astype(int), 1)[:, 0]
  testable = arrays[key + "corpus_testable"].astype(bool)
  holds = arrays[key + "holds"].astype(bool)
  set_emotion = np.maximum(arrays[key + "emotion"].astype(int), 0)
  set_support = arrays[key + "support"]
  again = np.zeros_like(testable)
  for i, m in enumerate(summary["members"]):
    for r in m["features"]:
      if r["n_other_seeds"]:
        again[i, r["feature"]] = r["reappears_in"] >= r["n_other_seeds"] / 2
  rows = []
  for f in fractions:
    keep = testable & (own >= f - 1e-6)
    hold = holds & keep & (set_support >= f * n_set[set_emotion] - 1e-6)
    n = int(keep.sum())
    emotions = np.mean([len(set(arrays["emotion"][i][keep[i]].tolist()))
                        for i in range(keep.shape[0])])
    rows.append({"fraction": f, "n": n, "hold": int(hold.sum()),
                 "reappear": int((again & keep).sum()),
                 "robust": int((again & hold).sum()),
                 "emotions_per_sae": float(emotions)})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--analysis", required=True,
                      help="analysis folder written with fraction 0")
  parser.add_argument("--set", default="embeddings_val",
                      help="the validation set (its path's last part)")
  args = parser.parse_args()
  summary = analysis.load_summary(args.analysis)
  if summary["settings"].get("min_support_fraction"):
    sys.exit("error: the analysis used min_support_fraction="
             f"{summary['settings']['min_support_fraction']}; scan one "
             "written with 0")
  paths = [v["path"] for v in summary["validation"]]
  hits = [j for j, p in enumerate(paths) if Path(p).name == args.set]
  if not hits:
    sys.exit(f"error: no validation set named {args.set} among {paths}")
  pct = lambda a, b: f"{a / b:.0%}" if b else "-"
  print(f"on {paths[hits[0]]}, pooled over {len(summary['members'])} SAEs")
  for r in scan(summary, analysis.load_arrays(args.analysis), hits[0]):
    print(f"fraction {r['fraction']:<5g} significant {r['n']:4d}  hold "
          f"{pct(r['hold'], r['n']):>4}  reappear {pct(r['reappear'], r['n']):>4}"
          f"  both {pct(r['robust'], r['n']):>4}  emotions per SAE "
          f"{r['emotions_per_sae']:.1f}")


if __name__ == "__main__":
  main()
