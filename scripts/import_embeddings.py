r"""Imports embeddings.npy + labels.npy (+ metadata.json) as an embedding set.

  python scripts/import_embeddings.py --src=results/t5_embeddings --out=PATH
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "Folder with embeddings.npy, "
                           "labels.npy, optional metadata.json.",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "Output embedding-set folder.",
                           required=True)


def main(argv):
  del argv
  from emosae_jax import data, importer
  es = importer.import_numpy_folder(_SRC.value)
  data.save_embedding_set(es, _OUT.value)
  counts = {n: int((es.labels == i).sum()) for i, n in
            enumerate(es.label_names)}
  print(f"wrote {len(es)} x {es.dim} embeddings to {_OUT.value}: {counts}")


if __name__ == "__main__":
  cli.run(main)
