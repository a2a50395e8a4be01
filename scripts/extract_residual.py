r"""Embeds prompts with MusicGen's decoder: one embedding set per layer.

  python scripts/extract_residual.py --prompts=/tmp/emosae/prompts.jsonl \
      --model=facebook/musicgen-small --out=/tmp/emosae/residual
  python scripts/extract_residual.py --prompts=prompts.jsonl --layers=6,12 \
      --model=/path/to/musicgen --max_new_tokens=16 --out=/tmp/res
  python scripts/extract_residual.py --prompts=prompts.jsonl \
      --backend=audiocraft --model=facebook/musicgen-small --out=/tmp/res_ac

MusicGen (transformers, or --backend=audiocraft: audiocraft's LM) runs
--max_new_tokens decoder steps per prompt; the output of each chosen
decoder layer (default: all), conditional rows only under classifier-free
guidance, is averaged over the positions the decoder ran. Writes
OUT/layer_LL (embedding sets with backend, layer, site, pooling, frames and
model in the provenance) and OUT/residual.json. A killed run resumes from
OUT/.partial; a finished one with the same settings is reused.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

# emosae_jax.prompts is stdlib only (no jax), so this runs beside audiocraft.
from emosae_jax import cli, prompts  # noqa: E402

_PROMPTS = flags.DEFINE_string("prompts", None, "prompts.jsonl from "
                               "make_prompts.py, or a caption CSV/JSONL.",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder (one set per layer).",
                           required=True)
_MODEL = flags.DEFINE_string("model", "facebook/musicgen-small",
                             "Hub name (HF cache) or local MusicGen folder.")
_BACKEND = flags.DEFINE_enum("backend", "transformers",
                             ["transformers", "audiocraft"],
                             "MusicGen library (audiocraft: a hub name or a "
                             "folder with state_dict.bin).")
_LAYERS = flags.DEFINE_list("layers", [], "Decoder layers, 0-based "
                            "(default: every layer).")
_TEXT_COLUMN = flags.DEFINE_string("text_column", None, "Caption column.")
_FILTER = flags.DEFINE_list("emotion_filter", [], "Keep only these emotions.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts per generate call.")
_FRAMES = flags.DEFINE_integer("max_new_tokens", 16, "Decoder steps per "
                               "prompt (50 per second, delay pattern "
                               "included: at least the codebook count for "
                               "audiocraft).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 3.0, "CFG coefficient.")
_GREEDY = flags.DEFINE_bool("greedy", False, "Argmax decoding, not sampling.")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed (one per batch).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Model dtype (pooling is always float32).")
_DEVICE = flags.DEFINE_string("device", "cpu", "cpu, cuda or cuda:N.")
_FORCE = flags.DEFINE_bool("force", False, "Recompute even if cached.")


def main(argv):
  del argv
  try:
    layers = [int(l) for l in _LAYERS.value] or None
  except ValueError:
    raise ValueError(f"--layers must be integers, got "
                     f"{','.join(_LAYERS.value)}") from None
  records, counts = prompts.load_prompt_file(
      _PROMPTS.value, _TEXT_COLUMN.value, _FILTER.value)
  print(f"{len(records)} prompts from {_PROMPTS.value}: {counts}")
  names, labels, groups, heldout = prompts.label_arrays(records)
  from bridge import residual  # torch import only once the input is good
  paths, _ = residual.extract(
      _OUT.value, [r["text"] for r in records], labels, names, groups,
      model=_MODEL.value, backend=_BACKEND.value, layers=layers, batch_size=_BATCH.value,
      max_new_tokens=_FRAMES.value, guidance_scale=_GUIDANCE.value,
      sampling=not _GREEDY.value, seed=_SEED.value, device=_DEVICE.value,
      dtype=_DTYPE.value, force=_FORCE.value,
      meta=dict(prompts_file=os.path.abspath(_PROMPTS.value),
                heldout_groups=heldout, import_counts=counts,
                emotion_words=[prompts.emotion_words(r) for r in records]))
  print(f"{len(paths)} embedding sets in {_OUT.value} "
        f"({paths[0].name} .. {paths[-1].name})")


if __name__ == "__main__":
  cli.run(main)
