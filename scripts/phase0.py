r"""Phase 0 first look at an embedding set: probes, similarity test, PCA.

  python scripts/phase0.py --data=/tmp/emosae/emb_minilm --out=/tmp/emosae/phase0
  python scripts/phase0.py --data=runs/demo/embeddings --splits=runs/demo \
      --out=/tmp/emosae/phase0

Writes phase0.json (probe accuracy on held-out templates, on held-out emotion
words and by k-fold, each beside chance; for a corpus from make_prompts, the
balanced accuracy of a probe trained on the training split and scored on the
held-out split (templates + emotion words + caption style) and on the
held-out caption style alone, beside 1/K and a shuffled-label probe;
within- vs between-emotion cosine similarity with a permutation p-value;
with --splits, the probe fit on the train split with its settings chosen on
the val split, scored on val and once on the test split) and PNG plots.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli, data, probe  # noqa: E402
from emosae_jax.splits import load_split_sets  # noqa: E402

_DATA = flags.DEFINE_string("data", None, "Embedding-set folder.",
                            required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_FOLDS = flags.DEFINE_integer("folds", 5, "k of the stratified k-fold probe.")
_PERMS = flags.DEFINE_integer("permutations", 1000, "Label permutations of "
                              "the similarity test.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for folds and permutations.")
_SPLITS = flags.DEFINE_string("splits", None, "A pipeline workdir holding "
                              "embeddings_train/, embeddings_val/ and "
                              "embeddings_heldout/: adds the probe fit on "
                              "train, chosen on val, scored on test.")


def main(argv):
  del argv
  es = data.load_embedding_set(_DATA.value)
  splits = load_split_sets(_SPLITS.value) if _SPLITS.value else None
  r = probe.phase0(es, _OUT.value, _FOLDS.value, _PERMS.value, _SEED.value,
                   splits=splits)
  h, k, c = r["probe_heldout"], r["probe_kfold"], r["cosine"]
  print(f"held-out {h['split']} probe accuracy {h['accuracy']:.3f} "
        f"(chance {h['chance']:.3f}, shuffled labels "
        f"{h['shuffled_label_accuracy']:.3f}; {h['n_test']} test prompts)")
  s = r["probe_heldout_style"]
  if s:
    for name, part in (("held-out split", s["heldout_split"]),
                       (f"held-out style {'+'.join(s['heldout_styles'])}",
                        s["heldout_style_only"])):
      print(f"{name}: balanced accuracy {part['balanced_accuracy']:.3f} "
            f"(chance {part['chance_uniform']:.3f}, shuffled labels "
            f"{part['shuffled_label_balanced_accuracy']:.3f}; "
            f"{part['n_test']} test prompts, C={part['C']})")
  v = r["probe_val_chosen"]
  if v and "skipped" in v:
    print(f"val-chosen probe skipped: {v['skipped']}")
  elif v:
    for part in ("val", "test"):
      print(f"val-chosen probe (C={v['C']}, {v['content_directions']} "
            f"content directions removed) on {part}: balanced accuracy "
            f"{v[part]['balanced_accuracy']:.3f} (shuffled labels "
            f"{v[part]['shuffled_label_balanced_accuracy']:.3f}; "
            f"{v[part]['n_test']} prompts)")
  w = r["probe_heldout_words"]
  if w:
    print(f"held-out emotion words probe accuracy {w['accuracy']:.3f} "
          f"(chance {w['chance']:.3f}; {w['n_test']} test prompts)")
  print(f"{k['n_folds']}-fold probe accuracy {k['accuracy']:.3f} "
        f"+- {k['std']:.3f} (chance {k['chance']:.3f})")
  print(f"cosine within {c['within']:.3f} vs between {c['between']:.3f} "
        f"(p={c['p_value']:.3g}); wrote {_OUT.value}/phase0.json")


if __name__ == "__main__":
  cli.run(main)
