r"""Prompts -> embeddings -> SAE sweep -> analysis -> export -> steered audio
-> one report.html, resumable, in one workdir.

  python scripts/pipeline.py --config=configs/pipeline.py --workdir=runs/main
  python scripts/pipeline.py --config=configs/pipeline.py:offline \
      --workdir=runs/offline --stages=analysis,export,report
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/pipeline.py", "Pipeline config (preset after ':').",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.",
                               required=True)
_STAGES = flags.DEFINE_string("stages", None, "Comma list of stages to run "
                              "(default: the config's, i.e. all).")


def main(argv):
  del argv
  from emosae_jax import pipeline
  state = pipeline.run(_CONFIG.value, _WORKDIR.value, _STAGES.value)
  report = state["stages"].get("report", {}).get("record", {}).get("report")
  if report:
    print(f"report: {report}")


if __name__ == "__main__":
  cli.run(main)
