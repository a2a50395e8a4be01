r"""Generates MusicGen clips steered along exported SAE directions.

  python scripts/steer.py --directions=runs/export --out=runs/steer \
      --model=facebook/musicgen-small --strengths=0,2,4 --emotions=happy,sad

Per prompt (built-in neutral prompts, or --prompts=FILE of text lines or
JSONL with "text"): an unsteered baseline, each feature at each non-zero
strength, a random direction of the same norm at the same strengths, and
the prompt edit (the emotion word added to the prompt). Writes WAVs under
OUT/clips and OUT/steering.json. --model takes a hub name (HF cache) or a
local folder; --backend=audiocraft uses audiocraft's MusicGen. Directions
are added where their export's `site` says: the T5 output, or the output of
decoder layer L (transformers, or audiocraft's LM transformer); a model
without that layer or width is refused.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402  (jax-free)

_DIRECTIONS = flags.DEFINE_string("directions", None, "Export folder "
                                  "(directions.safetensors + .json).",
                                  required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_MODEL = flags.DEFINE_string("model", "facebook/musicgen-small",
                             "Hub name or local folder.")
_BACKEND = flags.DEFINE_enum("backend", "transformers",
                             ["transformers", "audiocraft"], "MusicGen library.")
_STRENGTHS = flags.DEFINE_list("strengths", ["0", "2", "4"], "Strengths, in "
                               "units of each feature's typical activation.")
_FEATURES = flags.DEFINE_list("features", [], "Feature ids (default: all).")
_EMOTIONS = flags.DEFINE_list("emotions", [], "Emotions (default: all).")
_PROMPTS = flags.DEFINE_string("prompts", None, "Prompts file (text lines or "
                               "JSONL with 'text'); default: neutral prompts.")
_DURATION = flags.DEFINE_float("duration", 5.0, "Seconds per clip.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", 3.0, "CFG coefficient.")
_GREEDY = flags.DEFINE_bool("greedy", False, "Argmax decoding, not sampling.")
_TOP_K = flags.DEFINE_integer("top_k", 250, "Top-k when sampling.")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed (one per generate call).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Rows per generate call.")
_RANDOM = flags.DEFINE_bool("random_baseline", True, "Random-direction clips.")
_EDIT = flags.DEFINE_bool("prompt_edit", True, "Prompt-edit clips.")
_DEVICE = flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto.")


def _numbers(values, kind, name):
  try:
    return [kind(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name} must be a list of {kind.__name__}s, "
                     f"got {','.join(values)}") from None


def main(argv):
  del argv
  strengths = _numbers(_STRENGTHS.value, float, "strengths")
  features = _numbers(_FEATURES.value, int, "features") or None
  import torch
  from bridge import generate
  device = _DEVICE.value
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  settings = generate.Settings(
      duration=_DURATION.value, guidance_scale=_GUIDANCE.value,
      sampling=not _GREEDY.value, top_k=_TOP_K.value, seed=_SEED.value)
  prompts = _PROMPTS.value and generate.read_prompts(_PROMPTS.value)
  run = generate.run_steering(
      _DIRECTIONS.value, _OUT.value, model=_MODEL.value,
      backend=_BACKEND.value, prompts=prompts, features=features,
      emotions=_EMOTIONS.value or None, strengths=strengths,
      settings=settings, batch_size=_BATCH.value,
      random_baseline=_RANDOM.value, prompt_edit=_EDIT.value,
      device=device)
  print(f"{len(run['clips'])} clips in {run['generate_calls']} generate calls "
        f"({run['generate_seconds']:.1f} s); see {_OUT.value}/steering.json")


if __name__ == "__main__":
  cli.run(main)
