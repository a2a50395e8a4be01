"""Directions export: raw-unit round trip, displacement consistency, the
bridge reading it, feature selection, sweeps, errors, the script."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import analysis_helpers as helpers
from conftest import last_line, run_script
from emosae_jax import analysis, data, export, runs, saes


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
          runs.normalizer_of(members.info), members)


def test_round_trip_equals_decoder_row_in_raw_units(analysed, tmp_path):
  out = export.export_directions(analysed, tmp_path / "dirs",
                                 top_per_emotion=2)
  tensors = load_file(str(out / "directions.safetensors"))
  meta = json.loads((out / "directions.json").read_text())
  w_dec, normalizer, _ = _decoder_and_normalizer(analysed)
  assert tensors["directions"].dtype == np.float32
  assert tensors["directions"].shape == (len(meta["feature_ids"]),
                                         meta["d_model"])
  # A single run has no other seeds: no consensus, nothing robust; the
  # class-mean baselines follow the features.
  n = len(meta["kinds"]) - 3
  assert meta["kinds"] == ["feature"] * n + ["class_mean"] * 3
  assert not any(meta["robust"])
  directions = tensors["directions"][:n]
  meta = {k: v[:n] if isinstance(v, list) else v for k, v in meta.items()}
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


# --------------------------------------------------------------------------
# Consensus and class-mean directions: planted data with known answers


@pytest.fixture(scope="module")
def transfer_export(tmp_path_factory):
  """The planted sweep (general features hold on validation, corpus-
  specific ones do not) analysed with its validation set, and exported."""
  workdir, _, result = helpers.transfer_analysis()
  out = tmp_path_factory.mktemp("transfer")
  analysis.write(result, out / "analysis", report=False)
  dirs = export.export_directions(workdir, out / "dirs", top_per_emotion=2,
                                  analysis_dir=out / "analysis")
  return workdir, out / "analysis", dirs


def _unit(v):
  return v / np.linalg.norm(v)


def test_consensus_export_is_the_planted_direction(transfer_export):
  """Raw-unit consensus per emotion = the planted general direction (the
  data is built in raw units); its steering vector at strength 1 is
  consensus * scale / normaliser.scale."""
  workdir, analysis_dir, out = transfer_export
  directions, meta = export.load_export(out)
  arrays = analysis.load_arrays(analysis_dir)
  normalizer = runs.normalizer_of(analysis.load_members(workdir).info)
  general = helpers.transfer_dictionary()["general"]
  names = ["happy", "sad", "tense"]
  assert meta["kinds"][:3] == ["consensus"] * 3
  assert meta["emotions"][:3] == names and meta["feature_ids"][:3] == [
      -1, -2, -3]
  for e in range(3):
    details = meta["details"][e]
    assert meta["robust"][e] and details["n_seeds"] == 3
    assert details["spread"] > 0.95
    assert _unit(directions[e]) @ general[e] > 0.95
    g = 0  # member 0's configuration (lr 6e-3, seeds 0-2)
    np.testing.assert_allclose(
        directions[e] * meta["typical_activation"][e],
        arrays["directions/consensus"][g, e] * arrays["directions/scale"][
            g, e] / normalizer.scale, rtol=1e-5, atol=1e-7)
    assert meta["p_values"][e] is None and meta["selectivity"][e] is None


def test_export_orders_robust_first_and_marks_kinds(transfer_export):
  workdir, analysis_dir, out = transfer_export
  directions, meta = export.load_export(out)
  arrays = analysis.load_arrays(analysis_dir)
  robust = arrays["directions/robust"][0]
  rank = [0 if k == "consensus" else 1 if r else 2 if k == "feature" else 3
          for k, r in zip(meta["kinds"], meta["robust"])]
  assert rank == sorted(rank) and rank.count(0) == 3 and rank.count(3) == 3
  dic = helpers.transfer_dictionary()
  names = ["happy", "sad", "tense"]
  w_dec, normalizer, _ = _decoder_and_normalizer(workdir)
  seen = set()
  for row, f, kind, r, e in zip(directions, meta["feature_ids"],
                                meta["kinds"], meta["robust"],
                                meta["emotions"]):
    if kind != "feature":
      continue
    assert r == bool(robust[f])
    np.testing.assert_allclose(row, w_dec[f] / normalizer.scale, rtol=1e-6)
    if e not in seen:  # an emotion's first feature: its general direction
      seen.add(e)
      assert r and _unit(w_dec[f]) @ dic["general"][names.index(e)] > 0.8
    if not r:  # robust significant features of the emotion come first
      e_index = names.index(e)
      others = np.flatnonzero(robust & arrays["significant"][0]
                              & (arrays["emotion"][0] == e_index))
      assert set(others) <= set(meta["feature_ids"]), (e, others)
  assert seen == set(names)
  # Class means: the baseline, unit in normalised units, then raw.
  class_mean = arrays["directions/class_mean"]
  for i in range(len(directions) - 3, len(directions)):
    assert meta["kinds"][i] == "class_mean" and not meta["robust"][i]
    e = ["happy", "sad", "tense"].index(meta["emotions"][i])
    np.testing.assert_allclose(directions[i], _unit(class_mean[e])
                               / normalizer.scale, rtol=1e-5)
  # The pipeline steers per emotion the first direction: the consensus.
  assert export.steering_choice(meta, 1) == [-1, -2, -3]
  assert len(export.steering_choice(meta, 9)) == len(directions) - 3


def test_bridge_loads_consensus_directions_as_torch(transfer_export):
  torch = pytest.importorskip("torch")
  from bridge.directions import load_directions
  _, _, out = transfer_export
  vectors, meta = export.load_export(out)
  loaded = load_directions(out, dtype=torch.float64)
  assert loaded.kinds == tuple(meta["kinds"])
  assert loaded.robust == tuple(meta["robust"])
  np.testing.assert_allclose(loaded.vectors.numpy(), vectors)
  assert np.isnan(loaded.p_values[0]) and loaded.details[0]["n_seeds"] == 3
  happy = loaded.select(features=[-1])
  assert happy.kinds == ("consensus",) and happy.emotions == ("happy",)
  np.testing.assert_allclose(happy.steering_vectors().numpy()[0],
                             vectors[0] * meta["typical_activation"][0],
                             rtol=1e-6)
  sad = loaded.select(emotions=["sad"])
  assert sad.kinds[0] == "consensus" and sad.kinds[-1] == "class_mean"


def test_bridge_reads_exports_without_kinds_as_features(tmp_path):
  torch = pytest.importorskip("torch")
  from bridge.directions import load_directions, save_directions
  save_directions(tmp_path / "old", np.ones((2, 4)), dict(
      feature_ids=[3, 5], emotions=["a", "b"], selectivity=[2.0, 3.0],
      p_values=[0.01, 0.02], typical_activation=[1.0, 1.0]))
  loaded = load_directions(tmp_path / "old", dtype=torch.float32)
  assert loaded.kinds == ("feature", "feature")
  assert loaded.robust == (False, False)
  assert loaded.take([1]).feature_ids == (5,)


def test_export_names_the_site_its_data_came_from(tmp_path):
  """An SAE trained on a decoder layer's set exports directions that steer
  at that layer, not at T5's output."""
  from emosae_jax import directions_format, runs
  es = helpers.labelled_set(site=directions_format.decoder_layer(3))
  es_path = data.save_embedding_set(es, tmp_path / "layer_03")
  run = helpers.write_run(tmp_path / "run", es_path,
                          helpers.random_params(es.dim, 32, 0), 32, 4)
  assert runs.load_members(run).info["site"] == {"kind": "decoder_layer",
                                                 "layer": 3}
  result = analysis.analyze(run, settings=analysis.Settings(
      **helpers.RANDOM_SETTINGS))
  analysis.write(result, run, report=False)
  out = export.export_directions(run, tmp_path / "dirs", top_per_emotion=1)
  meta = json.loads((out / "directions.json").read_text())
  assert meta["site"] == {"kind": "decoder_layer", "layer": 3}
