"""emosae_jax.layer_scan on tiny sets with a known answer: a layer set with
an emotion planted in it stands above both nulls; a pure-noise one does not."""

import dataclasses
import json

import numpy as np

from emosae_jax import data, layer_scan
from emosae_jax import directions_format as fmt

_EMOTIONS = ["happy", "sad", "calm", "angry"]


def _layer_set(path, layer, planted, n_templates=12, per_cell=4, d=16):
  """Every template holds every emotion (shuffling within templates moves
  labels); templates t10, t11 are held out. planted: each emotion adds its
  own direction; else the rows are noise."""
  rng = np.random.default_rng(layer)
  labels = np.tile(np.repeat(np.arange(len(_EMOTIONS)), per_cell),
                   n_templates)
  groups = np.repeat([f"t{t}" for t in range(n_templates)],
                     len(_EMOTIONS) * per_cell)
  x = rng.normal(size=(len(labels), d))
  if planted:
    x += 3.0 * np.eye(d)[labels]
  es = data.make_embedding_set(
      x, labels, _EMOTIONS, [f"p{i}" for i in range(len(labels))], groups,
      heldout_groups=["t10", "t11"], site=fmt.decoder_layer(layer),
      layer=layer)
  data.save_embedding_set(es, path)
  data.atomic_write_json(path.parent / "residual.json",
                         {"sets": sorted(p.name for p in path.parent.glob(
                             "layer_*"))})


def test_planted_layer_stands_above_its_nulls(tmp_path):
  res = tmp_path / "res"
  _layer_set(res / "layer_00", 0, planted=False)
  _layer_set(res / "layer_01", 1, planted=True)
  settings = layer_scan.ScanSettings(shuffles=3, expansion=2, k=4, epochs=8,
                                     batch_size=64, permutations=50,
                                     min_support=3)
  result = layer_scan.scan([res], tmp_path / "scan", settings, log=print)
  noise, planted = result["rows"]
  assert [noise["site"], planted["site"]] == ["layer 0", "layer 1"]
  assert planted["accuracy"] > 0.9 > max(planted["null"])
  assert planted["significant"] > planted["significant_null_max"]
  assert noise["accuracy"] < 0.6  # chance is 0.25
  assert noise["significant"] <= noise["significant_null_max"] + 2
  assert result["best"]["layer"] == 1
  assert len(planted["significant_null"]) == 50
  saved = json.loads((tmp_path / "scan" / "layer_scan.json").read_text())
  assert saved["best"]["site"] == "layer 1"
  assert (tmp_path / "scan" / "layer_scan.png").stat().st_size > 1000
  # Rerun: every row reused from OUT/rows, nothing retrained.
  again = layer_scan.scan([res], tmp_path / "scan", settings,
                          log=lambda *_: (_ for _ in ()).throw(
                              AssertionError("recomputed a row")))
  assert again["rows"] == result["rows"]
  # The support fraction reaches the feature test: asking every feature to
  # fire on all of its emotion's examples leaves fewer significant.
  strict = layer_scan.scan([res], tmp_path / "scan_strict",
                           dataclasses.replace(settings,
                                               min_support_fraction=1.0),
                           log=print)
  assert strict["settings"]["min_support_fraction"] == 1.0
  assert strict["rows"][1]["significant"] < planted["significant"]
