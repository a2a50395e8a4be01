r"""Scores steered clips with CLAP: valence and dose-response per feature.

  python scripts/evaluate.py --steering=runs/steer \
      --clap=laion/clap-htsat-unfused

Reads STEERING/steering.json (from scripts/steer.py), scores every clip
zero-shot against "<emotion> music" texts, and writes
STEERING/evaluation.json and STEERING/dose_response.png: per feature, the
slope of valence (P(happy) - P(sad)) and of P(emotion) against strength,
beside a random direction of the same norm and the prompt edit.
--clap takes a hub name (HF cache) or a local folder.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402  (jax-free)

_STEERING = flags.DEFINE_string("steering", None, "Output folder of "
                                "scripts/steer.py.", required=True)
_CLAP = flags.DEFINE_string("clap", "laion/clap-htsat-unfused",
                            "CLAP hub name or local folder.")
_EMOTIONS = flags.DEFINE_list("emotions", [], "Extra emotions to score "
                              "against (happy, sad and the run's are "
                              "always in).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Clips per CLAP forward.")
_PLOT = flags.DEFINE_bool("plot", True, "Write dose_response.png.")
_DEVICE = flags.DEFINE_string("device", "auto", "cpu, cuda, cuda:N or auto.")


def main(argv):
  del argv
  import torch
  from bridge import evaluate
  device = _DEVICE.value
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  result = evaluate.evaluate_run(
      _STEERING.value, clap=_CLAP.value, emotions=_EMOTIONS.value,
      device=device, batch_size=_BATCH.value, plot=_PLOT.value)
  for feat in result["features"]:
    steer, rand = feat["steer"]["valence"], feat["random"]["valence"]
    edit = feat["prompt_edit"]["valence"]["effect"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.4f}"
    print(f"feature {feat['feature']} ({feat['emotion']}): valence slope "
          f"{fmt(steer['slope'])} (random {fmt(rand['slope'])}), prompt "
          f"edit {fmt(edit)}")
  print(f"{len(result['clips'])} clips scored; see "
        f"{_STEERING.value}/evaluation.json")


if __name__ == "__main__":
  cli.run(main)
