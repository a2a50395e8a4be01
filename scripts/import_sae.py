r"""Turns a SAELens SAE folder into an emosae run, for analysis and export.

  python scripts/import_sae.py --src=DIR --workdir=runs/imported
  python scripts/analyze.py --workdir=runs/imported --data=EMBEDDINGS
  python scripts/export.py --workdir=runs/imported --out=DIR
DIR holds cfg.json and sae_weights.safetensors (what SAELens's
SAE.save_model writes; architectures standard, topk, jumprelu). An SAE
trained elsewhere reads raw activations (identity normaliser) and records no
data, so pass --data to analyze.py; a folder exported by emosae brings its
run's config, normaliser and data back. See emosae_jax/saelens_format.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "SAELens SAE folder.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "New emosae run folder.",
                               required=True)


def main(argv):
  del argv
  from configs.sae import get_config
  from emosae_jax import saelens_format
  path = saelens_format.import_sae(
      _SRC.value, _WORKDIR.value,
      lambda arch: get_config(f"arch={arch}").to_dict())
  print(f"imported {_SRC.value} into {path}")


if __name__ == "__main__":
  cli.run(main)
