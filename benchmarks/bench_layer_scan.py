"""Layer-scan cost per site at musicgen-small size (2,700 prompts x 1024):
the held-out probe with its shuffled-label probes, the small SAE and the
analysis' significance test with its null, with the scan's defaults.

  python benchmarks/bench_layer_scan.py [--sites=2]

The first site includes the compiles; later sites of the same width reuse
them, so a full scan (T5 + 24 layers) costs about the later sites' time
x 24 plus one compile per width. Random data: the counts mean nothing.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

from emosae_jax import data, layer_scan  # noqa: E402
from emosae_jax import directions_format as fmt  # noqa: E402

_SITES = flags.DEFINE_integer("sites", 2, "Layer sets to scan.")
_N = flags.DEFINE_integer("n", 2700, "Prompts per set.")
_D = flags.DEFINE_integer("d", 1024, "Width (musicgen-small: 1024).")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n, d = _N.value, _D.value
  labels = rng.integers(0, 9, n)
  groups = [f"t{i % 60}" for i in range(n)]
  root = Path(tempfile.mkdtemp())
  names = [f"layer_{l:02d}" for l in range(_SITES.value)]
  for layer, name in enumerate(names):
    x = rng.normal(size=(n, d)) + np.eye(d)[labels]
    es = data.make_embedding_set(
        x, labels, [f"e{i}" for i in range(9)], None, groups,
        heldout_groups=[f"t{i}" for i in range(48, 60)],
        site=fmt.decoder_layer(layer), layer=layer)
    data.save_embedding_set(es, root / "res" / name)
  data.atomic_write_json(root / "res" / "residual.json", {"sets": names})
  last = [time.perf_counter()]

  def log(line):
    now = time.perf_counter()
    print(f"{now - last[0]:6.1f} s  {line.strip()}")
    last[0] = now

  start = time.perf_counter()
  layer_scan.scan([root / "res"], root / "scan", layer_scan.ScanSettings(),
                  log=log)
  print(f"total {time.perf_counter() - start:.1f} s for {len(names)} sites "
        f"of {n} x {d}")


if __name__ == "__main__":
  app.run(main)
