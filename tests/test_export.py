"""Directions export: raw-unit round trip, displacement consistency, the
bridge reading it, feature selection, sweeps, errors, the script."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import analysis_helpers as helpers
from conftest import last_line, run_script
from emosae_jax import analysis, checkpoint, data, export, saes


@pytest.fixture(scope="module")
def analysed():
  """The random run with its analysis written into the workdir."""
  run = helpers.random_run()
  if not (run / analysis.ANALYSIS_FILE).exists():
    result = analysis.analyze(run, settings=analysis.Settings(
        **helpers.RANDOM_SETTINGS))
    analysis.write(result, run, report=False)
  return run


def _decoder_and_normalizer(workdir, member=0):
  members = analysis.load_members(workdir)
  pos = members.indices.index(member)
  return (members.params["W_dec"][pos],
          checkpoint.normalizer_of(members.info), members)


def test_round_trip_equals_decoder_row_in_raw_units(analysed, tmp_path):
  out = export.export_directions(analysed, tmp_path / "dirs",
                                 top_per_emotion=2)
  tensors = load_file(str(out / "directions.safetensors"))
  meta = json.loads((out / "directions.json").read_text())
  directions = tensors["directions"]
  w_dec, normalizer, _ = _decoder_and_normalizer(analysed)
  assert directions.dtype == np.float32
  assert directions.shape == (len(meta["feature_ids"]), meta["d_model"])
  for row, f in zip(directions, meta["feature_ids"]):
    np.testing.assert_allclose(row, w_dec[f] / normalizer.scale, rtol=1e-6)
    np.testing.assert_allclose(row, normalizer.direction_to_raw(w_dec[f]))
  arrays = analysis.load_arrays(analysed)
  summary = analysis.load_summary(analysed)
  names = summary["data"]["label_names"]
  assert meta["format_version"] == 1 and meta["d_model"] == 16
  assert meta["emotions"] == [names[arrays["emotion"][0, f]]
                              for f in meta["feature_ids"]]
  assert all(arrays["significant"][0, f] for f in meta["feature_ids"])
  np.testing.assert_allclose(meta["typical_activation"], [
      arrays["typical_activation"][0, f] for f in meta["feature_ids"]])
  np.testing.assert_allclose(meta["p_values"], [
      arrays["p_value"][0, f] for f in meta["feature_ids"]])
  assert meta["encoder"] == {"name": "test-encoder", "revision": "r1"}
  info = json.loads((analysed / "data_info.json").read_text())
  assert meta["source"]["data_hash"] == info["content_hash"]
  assert meta["source"]["member"] == 0
  # Best per emotion: at most two per emotion, lowest p first.
  for e in set(meta["emotions"]):
    ps = [p for p, e2 in zip(meta["p_values"], meta["emotions"]) if e2 == e]
    assert len(ps) <= 2 and ps == sorted(ps)


def test_typical_displacement_matches_decoding(analysed, tmp_path):
  """typical * direction (raw) == the raw change of the reconstruction when
  the feature's activation grows by its typical value."""
  out = export.export_directions(analysed, tmp_path / "d", features=[0, 5])
  directions, meta = export.load_export(out)
  w_dec, normalizer, members = _decoder_and_normalizer(analysed)
  es = analysis.load_data(members)
  params = {k: jnp.asarray(v[0]) for k, v in members.params.items()}
  acts = saes.encode(members.sae, params,
                     jnp.asarray(normalizer.apply(es.embeddings[:7])))
  before = normalizer.invert(np.asarray(saes.decode(params, acts)))
  for row, f, typical in zip(directions, meta["feature_ids"],
                             meta["typical_activation"]):
    after = normalizer.invert(np.asarray(
        saes.decode(params, acts.at[:, f].add(typical))))
    np.testing.assert_allclose(after - before,
                               np.broadcast_to(typical * row, after.shape),
                               rtol=1e-4, atol=1e-5)


def test_bridge_reads_export_as_torch(analysed, tmp_path):
  torch = pytest.importorskip("torch")
  from bridge.directions import load_directions
  out = export.export_directions(analysed, tmp_path / "d", features=[3, 1])
  loaded = load_directions(out, dtype=torch.float64)
  w_dec, normalizer, _ = _decoder_and_normalizer(analysed)
  assert loaded.feature_ids == (3, 1) and loaded.d_model == 16
  np.testing.assert_allclose(loaded.vectors.numpy(),
                             w_dec[[3, 1]] / normalizer.scale, rtol=1e-6)
  np.testing.assert_allclose(
      loaded.steering_vectors().numpy(),
      loaded.typical_activation.numpy()[:, None] * w_dec[[3, 1]]
      / normalizer.scale, rtol=1e-6)


def test_sweep_member_export(tmp_path):
  sweep, perm = helpers.permuted_sweep(tmp_path)
  result = analysis.analyze(sweep, settings=analysis.Settings(
      **helpers.RANDOM_SETTINGS, member_batch=1))
  analysis.write(result, sweep, report=False)
  out = export.export_directions(sweep, tmp_path / "d", features=[4, 9],
                                 member=2)
  directions, meta = export.load_export(out)
  w_dec, normalizer, _ = _decoder_and_normalizer(sweep, member=0)
  np.testing.assert_allclose(directions, w_dec[perm[[4, 9]]]
                             / normalizer.scale, rtol=1e-6)
  assert meta["source"]["member"] == 2
  with pytest.raises(data.DataError, match=r"member 1 has no trained "
                     r"parameters \(it failed\)"):
    export.export_directions(sweep, tmp_path / "e", features=[1], member=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(emotions=["joy"]), "unknown emotion(s) ['joy']"),
    (dict(features=[99]), "out of range [0, 32)"),
    (dict(features=[1], emotions=["emo0"]), "either --features or"),
    (dict(top_per_emotion=0), "--top_per_emotion must be >= 1"),
])
def test_export_errors(analysed, tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=__import__("re").escape(message)):
    export.export_directions(analysed, tmp_path / "d", **kwargs)


def test_export_needs_an_analysis(tmp_path):
  es = helpers.labelled_set()
  es_path = data.save_embedding_set(es, tmp_path / "data")
  run = helpers.write_run(tmp_path / "run", es_path,
                          helpers.random_params(16, 32, 0), 32, 4)
  with pytest.raises(data.DataError, match="run scripts/analyze.py"):
    export.export_directions(run, tmp_path / "d")


def test_export_script(analysed, tmp_path):
  proc = run_script("export.py", f"--workdir={analysed}",
                    f"--out={tmp_path / 'd'}", "--features=2,7")
  assert proc.returncode == 0, proc.stderr
  assert "wrote 2 directions" in proc.stdout
  assert (tmp_path / "d" / "directions.json").exists()
  proc = run_script("export.py", f"--workdir={analysed}",
                    f"--out={tmp_path / 'e'}", "--emotions=joy")
  assert proc.returncode == 2
  assert last_line(proc.stderr).startswith("error: unknown emotion(s)")
