import json

import numpy as np
import pytest

from emosae_jax import data, importer


def _set(n=20, d=8, k=3, seed=0, groups=None):
  rng = np.random.default_rng(seed)
  return data.make_embedding_set(
      rng.normal(size=(n, d)), rng.integers(0, k, n), [f"e{i}" for i in
                                                       range(k)],
      texts=[f"t{i}" for i in range(n)], groups=groups,
      encoder={"name": "test", "revision": "0"}, pooling="mean")


def test_round_trip_keeps_everything(tmp_path):
  es = _set(groups=[f"g{i % 4}" for i in range(20)])
  es.extra["token_mask"] = np.ones((20, 5), np.int32)
  data.save_embedding_set(es, tmp_path / "set")
  back = data.load_embedding_set(tmp_path / "set", expected_dim=8)
  np.testing.assert_array_equal(back.embeddings, es.embeddings)
  np.testing.assert_array_equal(back.labels, es.labels)
  assert back.texts == es.texts and back.groups == es.groups
  assert back.meta["encoder"] == {"name": "test", "revision": "0"}
  assert back.meta["content_hash"] == es.meta["content_hash"]
  np.testing.assert_array_equal(back.extra["token_mask"], 1)
  assert not [p for p in (tmp_path / "set").iterdir()
              if p.name.startswith(".")]


@pytest.mark.parametrize("mutate, message", [
    (lambda es: es.embeddings.__setitem__((3, 2), np.nan), "NaN"),
    (lambda es: setattr(es, "labels", es.labels[:-1]), "labels for"),
    (lambda es: setattr(es, "labels", es.labels + 5), "labels must lie"),
])
def test_validation_names_the_problem(mutate, message):
  es = _set()
  mutate(es)
  with pytest.raises(data.DataError, match=message):
    data.validate(es)


def test_dimension_mismatch_and_tampering(tmp_path):
  data.save_embedding_set(_set(), tmp_path)
  with pytest.raises(data.DataError, match="d_in=16"):
    data.load_embedding_set(tmp_path, expected_dim=16)
  meta = json.loads((tmp_path / "embeddings.json").read_text())
  meta["labels"][0] = (meta["labels"][0] + 1) % 3
  (tmp_path / "embeddings.json").write_text(json.dumps(meta))
  with pytest.raises(data.DataError, match="content hash"):
    data.load_embedding_set(tmp_path)


def test_normalizer_mean_norm_and_inverse():
  x = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 16))
  norm = data.fit_normalizer(x)
  xn = norm.apply(x)
  assert abs(np.linalg.norm(xn, axis=1).mean() - 4.0) < 1e-4
  np.testing.assert_allclose(xn.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(norm.invert(xn), x, rtol=1e-5, atol=1e-5)
  v = np.ones(16)
  np.testing.assert_allclose(norm.invert(xn[0] + v) - x[0],
                             norm.direction_to_raw(v), atol=1e-5)


def test_split_by_group_is_deterministic_and_disjoint():
  groups = [f"tmpl{i % 10}" for i in range(200)]
  tr, va = data.split_indices(200, groups, 0.2, seed=1)
  tr2, va2 = data.split_indices(200, groups, 0.2, seed=1)
  np.testing.assert_array_equal(va, va2)
  assert not {groups[i] for i in tr} & {groups[i] for i in va}
  assert 30 <= len(va) <= 60 and len(tr) + len(va) == 200
  tr, va = data.split_indices(50, [""] * 50, 0.2, seed=0)
  assert len(va) == 10 and not set(tr) & set(va)


def test_importer_reads_numpy_folder(tmp_path):
  x = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
  np.save(tmp_path / "embeddings.npy", x)
  np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 3] * 3))
  (tmp_path / "metadata.json").write_text(json.dumps(
      {"emotions": ["happy", "sad", "calm", "energetic"]}))
  es = importer.import_numpy_folder(tmp_path)
  assert es.label_names == ["happy", "sad", "calm", "energetic"]
  np.testing.assert_array_equal(es.embeddings, x)
  np.save(tmp_path / "labels.npy", np.array([0, 1, 2]))
  with pytest.raises(data.DataError, match="3 labels for 12"):
    importer.import_numpy_folder(tmp_path)


@pytest.mark.parametrize("meta, name, revision", [
    ({"model_name": "t5-base"}, "t5-base", ""),  # the reference data's key
    ({"model": "t5-base", "model_revision": "abc"}, "t5-base", "abc"),
    ({"encoder": {"name": "e", "revision": "r"}}, "e", "r"),
    ({}, "unknown", ""),
])
def test_importer_reads_the_encoder_metadata_names(tmp_path, meta, name,
                                                   revision):
  np.save(tmp_path / "embeddings.npy", np.eye(4, dtype=np.float32))
  np.save(tmp_path / "labels.npy", np.array([0, 1, 0, 1]))
  (tmp_path / "metadata.json").write_text(json.dumps(meta))
  es = importer.import_numpy_folder(tmp_path)
  assert es.meta["encoder"] == {"name": name, "revision": revision}
