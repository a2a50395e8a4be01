r"""Where does emotion live? Probe accuracy and SAE feature counts per set.

  python scripts/layer_scan.py --sets=/tmp/emosae/emb_t5,/tmp/emosae/residual \
      --out=/tmp/emosae/layer_scan

--sets takes embedding-set folders (e.g. T5 output from extract.py) and
residual extractions (folders with residual.json from extract_residual.py,
expanded to their layer sets). For each set (emosae_jax.layer_scan): a
probe trained on some templates and tested on held-out ones, beside
--shuffles probes trained on shuffled labels; and the count of significant
features of a small SAE trained on the set (--epochs, --expansion, --k),
beside the same count under --permutations label shuffles (--nosae skips
the SAEs). Writes OUT/layer_scan.json (with the best decoder layer) and
OUT/layer_scan.png; a killed scan resumes from OUT/rows and OUT/saes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_SETS = flags.DEFINE_list("sets", None, "Embedding sets or residual "
                          "extraction folders.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_SHUFFLES = flags.DEFINE_integer("shuffles", 5, "Shuffled-label probes per "
                                 "set (the probe's null).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for splits, SAEs, shuffles.")
_SAE = flags.DEFINE_bool("sae", True, "Train an SAE per set and count its "
                         "significant features.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "SAE epochs per set.")
_EXPANSION = flags.DEFINE_integer("expansion", 2, "d_sae = expansion x d.")
_K = flags.DEFINE_integer("k", 16, "TopK k.")
_PERMUTATIONS = flags.DEFINE_integer("permutations", 200, "Label shuffles "
                                     "for the feature test and its null.")
_MIN_SUPPORT = flags.DEFINE_integer("min_support", 5, "Minimum support.")
_MIN_SUPPORT_FRACTION = flags.DEFINE_float(
    "min_support_fraction", 0.15, "Part of the test, as in analyze.py: a "
    "significant feature also fires on >= this fraction of its emotion's "
    "examples (0: BH and support only).")


def main(argv):
  del argv
  from emosae_jax import layer_scan
  settings = layer_scan.ScanSettings(
      shuffles=_SHUFFLES.value, seed=_SEED.value, sae=_SAE.value,
      epochs=_EPOCHS.value, expansion=_EXPANSION.value, k=_K.value,
      permutations=_PERMUTATIONS.value, min_support=_MIN_SUPPORT.value,
      min_support_fraction=_MIN_SUPPORT_FRACTION.value)
  result = layer_scan.scan(_SETS.value, _OUT.value, settings)
  best = result["best"]
  print(f"best decoder layer: {best['site']} (probe {best['probe_excess']:+.3f}"
        f" over shuffled labels)" if best else "no decoder layers scanned")
  print(f"wrote {_OUT.value}/layer_scan.json and layer_scan.png")


if __name__ == "__main__":
  cli.run(main)
