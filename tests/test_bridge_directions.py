"""Directions export: write/read round trip, selection, dimension checks."""

import json

import numpy as np
import pytest
import torch

from bridge import directions as D
from emosae_jax import directions_format as fmt


def _meta(n=3):
  return dict(feature_ids=[5, 9, 12][:n], emotions=["happy", "sad", "happy"][:n],
              selectivity=[3.0, 2.0, 1.5][:n], p_values=[0.01, 0.02, 0.2][:n],
              typical_activation=[1.5, 2.0, 0.5][:n],
              encoder={"name": "t5-base", "revision": "abc"},
              source={"workdir": "/w", "member": 2, "data_hash": "h"})


@pytest.fixture
def export(tmp_path):
  vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
  D.save_directions(tmp_path / "dirs", vectors, _meta())
  return tmp_path / "dirs", vectors


def test_round_trip(export):
  path, vectors = export
  meta = json.loads((path / fmt.META_FILE).read_text())
  assert meta["format_version"] == 1 and meta["d_model"] == 8
  dirs = D.load_directions(path, dtype=torch.float64)
  assert dirs.vectors.dtype == torch.float64 and len(dirs) == 3
  np.testing.assert_array_equal(dirs.vectors.float().numpy(), vectors)
  assert dirs.feature_ids == (5, 9, 12)
  assert dirs.emotions == ("happy", "sad", "happy")
  assert dirs.meta["source"]["member"] == 2
  expected = vectors * np.array([1.5, 2.0, 0.5])[:, None]
  np.testing.assert_allclose(dirs.steering_vectors().numpy(), expected,
                             rtol=1e-6)
  assert not list(path.glob(".*"))  # no temp files left behind


def test_select_by_emotion_and_feature(export):
  dirs = D.load_directions(export[0])
  happy = dirs.select(emotions=["happy"])
  assert happy.feature_ids == (5, 12)
  torch.testing.assert_close(happy.vectors, dirs.vectors[[0, 2]])
  assert dirs.select(features=[9]).emotions == ("sad",)
  assert dirs.select(features=[9], emotions=["happy"]).feature_ids == (
      5, 9, 12)
  assert dirs.select() is dirs


def test_unknown_selection_lists_what_exists(export):
  dirs = D.load_directions(export[0])
  with pytest.raises(D.DirectionsError, match=r"\[7\].*\[5, 9, 12\]"):
    dirs.select(features=[7])
  with pytest.raises(D.DirectionsError, match=r"angry.*happy.*sad"):
    dirs.select(emotions=["angry"])


def test_d_model_check_names_both_dims(export):
  dirs = D.load_directions(export[0])
  dirs.check_d_model(8)
  with pytest.raises(D.DirectionsError, match="d_model=8.*d_model=768"):
    dirs.check_d_model(768)


def test_random_like_keeps_norms(export):
  dirs = D.load_directions(export[0])
  rand = dirs.random_like(seed=1)
  torch.testing.assert_close(rand.vectors.norm(dim=1), dirs.vectors.norm(dim=1))
  assert not torch.allclose(rand.vectors, dirs.vectors)
  assert rand.emotions[0] == "random:happy"
  torch.testing.assert_close(rand.vectors, dirs.random_like(seed=1).vectors)


def test_bad_exports(tmp_path, export):
  with pytest.raises(D.DirectionsError, match="no directions export"):
    D.load_directions(tmp_path / "missing")
  with pytest.raises(D.DirectionsError, match="entries for 3"):
    D.save_directions(tmp_path / "bad", np.zeros((3, 4)), _meta(n=2))
  path = export[0]
  meta = json.loads((path / fmt.META_FILE).read_text())
  (path / fmt.META_FILE).write_text(json.dumps({**meta, "d_model": 9}))
  with pytest.raises(D.DirectionsError, match="d_model=9"):
    D.load_directions(path)
  (path / fmt.META_FILE).write_text(json.dumps({**meta, "format_version": 2}))
  with pytest.raises(D.DirectionsError, match="format_version 2"):
    D.load_directions(path)
