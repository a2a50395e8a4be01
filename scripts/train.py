r"""Trains one sparse autoencoder on an embedding set.

  python scripts/train.py --config=configs/sae.py:reference --workdir=runs/reference \
      --data=PATH
Rerunning on the same workdir resumes from the latest checkpoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/sae.py", "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.",
                               required=True)
_DATA = flags.DEFINE_string("data", None,
                            "Embedding-set folder (overrides data.path).")


def main(argv):
  del argv
  config = _CONFIG.value
  if _DATA.value:
    with config.unlocked():
      config.data.path = _DATA.value
  from emosae_jax import train_run
  summary = train_run.train_and_evaluate(config, _WORKDIR.value)
  print(cli.format_summary(summary))


if __name__ == "__main__":
  cli.run(main)
