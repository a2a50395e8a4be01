r"""Writes an emotion-labelled prompt corpus (or neutral prompts) as JSON lines.

  python scripts/make_prompts.py --out=/tmp/emosae/prompts.jsonl
  python scripts/make_prompts.py --out=/tmp/emosae/neutral.jsonl --neutral --n=200

Each line: {"id", "text", "emotion", "template", "shape", "split", "slots",
"valence", "arousal", "style", "kind", "cue", "intensity", "emotions",
"negated", "emotion_words"}. Split "test" shares no wording with "train":
held-out templates, emotion words and one whole caption style. --n counts
the labelled prompts; --unlabelled_fraction adds mixed/negated ones with
emotion null. See emosae_jax/prompt_data/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli, errors, prompts  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output prompts.jsonl path.",
                           required=True)
_N = flags.DEFINE_integer("n", prompts.DEFAULT_N, "Number of prompts.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed (same seed, same "
                             "file).")
_NEUTRAL = flags.DEFINE_bool("neutral", False, "Write emotion-free prompts "
                             "(for steering) instead of emotion prompts.")
_EMOTIONS = flags.DEFINE_list("emotions", None, "Subset of emotions "
                              "(default: all in the taxonomy).")
_HELDOUT = flags.DEFINE_float("heldout_fraction", 0.2, "Fraction of each "
                              "style's templates, of each emotion's words, "
                              "phrases and scenes, and of the sentence "
                              "frames held out as 'test'.")
_VAL = flags.DEFINE_float("val_fraction", 0.0, "Fraction of every pool "
                          "left to training moved into a 'val' split with "
                          "its own templates and words (0: none).")
_STYLE = flags.DEFINE_string("heldout_style", prompts.DEFAULT_HELDOUT_STYLE,
                             "Caption style held out whole as 'test'.")
_UNLABELLED = flags.DEFINE_float("unlabelled_fraction", 0.1, "Mixed/negated "
                                 "prompts (emotion null) per labelled one.")
_TAXONOMY = flags.DEFINE_string("taxonomy", None, "Taxonomy JSON (default: "
                                "the packaged one).")


def main(argv):
  del argv
  try:
    tax = prompts.load_taxonomy(_TAXONOMY.value)
    if _NEUTRAL.value:
      records = prompts.neutral_prompts(_N.value, _SEED.value, tax)
    else:
      records = prompts.generate_prompts(
          _N.value, _SEED.value, _EMOTIONS.value, _HELDOUT.value, tax,
          heldout_style=_STYLE.value, unlabelled_fraction=_UNLABELLED.value,
          val_fraction=_VAL.value)
  except (prompts.PromptError, OSError) as e:
    cli.exit_with(errors.one_line(e))
  prompts.write_prompts(records, _OUT.value)
  splits, kinds = {}, {}
  for r in records:
    splits[r["split"]] = splits.get(r["split"], 0) + 1
    kinds[r.get("kind", "neutral")] = kinds.get(r.get("kind", "neutral"),
                                                0) + 1
  print(f"wrote {len(records)} prompts to {_OUT.value} "
        f"({len({r['template'] for r in records})} templates; {splits}; "
        f"{kinds})")


if __name__ == "__main__":
  cli.run(main)
