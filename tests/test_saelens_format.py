"""SAELens format: export equals SAELens's own encode/decode math on raw
inputs, emosae -> SAELens -> emosae round trips, the pinned file format,
foreign folders (SAELens options emosae folds away), and bad input."""

import json
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import ROOT, last_line, run_script, tiny_config
from emosae_jax import analysis, data, runs, saes
from emosae_jax import saelens_format as slf
from emosae_jax import train_run

ARCHS = ["relu_l1", "topk", "batchtopk", "jumprelu"]


@pytest.fixture(scope="module", params=ARCHS)
def run(request, tmp_path_factory):
  """A tiny trained run of each architecture (the real training writer)."""
  arch = request.param
  workdir = tmp_path_factory.mktemp(f"run_{arch}")
  config = tiny_config(arch, data__n_examples=1024, train__epochs=2,
                       train__epochs_per_call=2, data__n_labels=4)
  if arch == "jumprelu":  # thresholds that gate part of the activations
    config.model.threshold_init = 0.2
  train_run.train_and_evaluate(config, workdir, progress=False)
  return workdir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  return slf.export_run(run, tmp_path_factory.mktemp("export") / "sae")


def raw_inputs(workdir, n=64, seed=0):
  """Random raw-unit inputs spread like the run's data."""
  norm = runs.normalizer_of(runs.load_run_info(workdir)[1])
  rng = np.random.default_rng(seed)
  x_norm = rng.normal(size=(n, len(norm.mean))).astype(np.float32)
  return norm.invert(x_norm).astype(np.float32)


def emosae_raw(workdir, x):
  """(acts, x_hat in raw units) of a run's SAE on raw inputs x."""
  members = analysis.load_members(workdir)
  params = {k: jnp.asarray(v[0]) for k, v in members.params.items()}
  norm = runs.normalizer_of(members.info)
  acts = saes.encode(members.sae, params, jnp.asarray(norm.apply(x)))
  x_hat = norm.invert(np.asarray(saes.decode(params, acts)))
  return np.asarray(acts, np.float64), np.asarray(x_hat, np.float64)


def saelens_reference(folder, x):
  """sae-lens 6.54.12's inference encode/decode (standard, topk,
  jumprelu; saes/*.py), in float64 numpy."""
  cfg = json.loads((folder / "cfg.json").read_text())
  t = {k: v.astype(np.float64)
       for k, v in load_file(str(folder / "sae_weights.safetensors")).items()}
  sae_in = x.astype(np.float64) - t["b_dec"] * cfg["apply_b_dec_to_input"]
  pre = sae_in @ t["W_enc"] + t["b_enc"]
  norms = np.linalg.norm(t["W_dec"], axis=1)
  rescale = cfg.get("rescale_acts_by_decoder_norm", False)
  if cfg["architecture"] == "standard":
    acts = np.maximum(pre, 0)
  elif cfg["architecture"] == "topk":
    pre = pre * norms if rescale else pre
    idx = np.argsort(-pre, axis=1)[:, :cfg["k"]]
    acts = np.zeros_like(pre)
    np.put_along_axis(acts, idx, np.maximum(
        np.take_along_axis(pre, idx, 1), 0), 1)
  else:  # jumprelu
    acts = np.maximum(pre, 0) * (pre > t["threshold"])
  dec_acts = acts / norms if rescale else acts
  return acts, dec_acts @ t["W_dec"] + t["b_dec"]


def assert_close(a, b, rel=1e-6):
  """Equal to `rel` of b's size (whole-array norms: float32 rounding)."""
  assert a.shape == b.shape
  err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
  print(f"relative difference {err:.3g}")
  assert err <= rel, f"relative difference {err:.3g} > {rel}"


def test_export_equals_saelens_math_on_raw_inputs(run, exported):
  x = raw_inputs(run)
  acts, x_hat = emosae_raw(run, x)
  ref_acts, ref_x_hat = saelens_reference(exported, x)
  assert 0 < np.mean(acts != 0) < 1  # some latents fire, not all
  np.testing.assert_array_equal(acts != 0, ref_acts != 0)
  assert_close(acts, ref_acts)
  assert_close(x_hat, ref_x_hat)


def test_export_folds_the_output_bias(tmp_path):
  """A ReLU SAE with the reference's decoder bias b_out (model.output_bias)
  exports as SAELens's one b_dec: b_out moved into b_dec and b_enc."""
  config = tiny_config("relu_l1", data__n_examples=1024, train__epochs=2,
                       train__epochs_per_call=2, model__output_bias=True)
  train_run.train_and_evaluate(config, tmp_path / "run", progress=False)
  params = load_file(str(tmp_path / "run" / runs.PARAMS_FILE))
  assert np.abs(params["b_out"]).max() > 1e-4  # it learned something
  folder = slf.export_run(tmp_path / "run", tmp_path / "sae")
  x = raw_inputs(tmp_path / "run")
  acts, x_hat = emosae_raw(tmp_path / "run", x)
  ref_acts, ref_x_hat = saelens_reference(folder, x)
  assert_close(acts, ref_acts)
  assert_close(x_hat, ref_x_hat)


def test_round_trip_gives_the_same_sae(run, exported, tmp_path):
  back = slf.import_sae(exported, tmp_path / "back", _default_config)
  x = raw_inputs(run, seed=1)
  for got, want in zip(emosae_raw(back, x), emosae_raw(run, x)):
    assert_close(got, want)
  old, new = analysis.load_members(run), analysis.load_members(back)
  mapped = {"batchtopk": "jumprelu"}.get(old.sae.arch, old.sae.arch)
  assert new.sae.arch == mapped and new.sae.k == old.sae.k
  # The run's own normaliser and data come back, so units are unchanged.
  assert new.info["normalizer"]["scale"] == pytest.approx(
      old.info["normalizer"]["scale"])
  assert new.config["data"] == old.config["data"]
  for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
    np.testing.assert_allclose(new.params[name], old.params[name],
                               rtol=1e-5, atol=1e-6)
  # The imported run exports again.
  again = slf.export_run(back, tmp_path / "again")
  assert_close(saelens_reference(again, x)[0], saelens_reference(
      exported, x)[0])


# Architecture-independent checks run on one architecture only.
only_relu_l1 = pytest.mark.parametrize("run", ["relu_l1"], indirect=True)


@only_relu_l1
def test_scripts_round_trip(run, exported, tmp_path):
  back, again = tmp_path / "back", tmp_path / "again"
  r = run_script("import_sae.py", f"--src={exported}", f"--workdir={back}")
  assert r.returncode == 0, r.stderr
  r = run_script("export.py", "--format=saelens", f"--workdir={back}",
                 f"--out={again}")
  assert r.returncode == 0, r.stderr
  assert last_line(r.stdout) == f"wrote a SAELens SAE folder to {again}"
  x = raw_inputs(run, seed=3)
  assert_close(saelens_reference(again, x)[1], emosae_raw(run, x)[1])


def test_format_pins_file_names_and_keys(run, exported):
  assert sorted(p.name for p in exported.iterdir()) == [
      "cfg.json", "sae_weights.safetensors"]
  cfg = json.loads((exported / "cfg.json").read_text())
  arch = analysis.load_members(run).sae.arch
  keys = {"architecture", "d_in", "d_sae", "dtype", "device",
          "apply_b_dec_to_input", "normalize_activations",
          "reshape_activations", "metadata"}
  if arch == "topk":
    keys |= {"k", "rescale_acts_by_decoder_norm"}
  assert set(cfg) == keys
  assert cfg["architecture"] == {"relu_l1": "standard", "topk": "topk",
                                 "batchtopk": "jumprelu",
                                 "jumprelu": "jumprelu"}[arch]
  assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (32, 256, "float32")
  assert cfg["apply_b_dec_to_input"] is True
  assert cfg["normalize_activations"] == "none"  # folded into the weights
  meta = cfg["metadata"]
  assert meta["sae_lens_version"] == "6.54.12"  # >= 6: no legacy remapping
  assert meta["hook_name"] == meta["model_name"] == "synthetic"
  assert meta["emosae"]["normalizer_folded"]
  tensors = load_file(str(exported / "sae_weights.safetensors"))
  want = {"W_enc": (32, 256), "b_enc": (256,), "W_dec": (256, 32),
          "b_dec": (32,)}
  if cfg["architecture"] == "jumprelu":
    want["threshold"] = (256,)
  assert {k: v.shape for k, v in tensors.items()} == want
  assert all(v.dtype == np.float32 for v in tensors.values())


def test_hook_metadata_names_t5_output_or_a_decoder_layer():
  meta = slf.hook_metadata({"encoder": "t5-base"}, {"pooling": "mean"})
  assert meta["hook_name"] == "encoder.last_hidden_state.mean_pooled"
  assert (meta["model_name"], meta["hf_hook_name"]) == ("t5-base", "encoder")
  meta = slf.hook_metadata({"encoder": "t5-base"}, {
      "layer": 12, "pooling": "mean", "model": "facebook/musicgen-small"})
  assert meta["hook_name"] == "decoder.layers.12.mean_pooled"
  assert meta["model_name"] == "facebook/musicgen-small"
  assert slf.hook_metadata({"encoder": {"name": "t5-base"}}, None)[
      "model_name"] == "t5-base"


def _edit(folder, dst, cfg_change=None, tensor_change=None):
  """A copy of a real export, changed the way another SAELens user's
  folder may differ."""
  shutil.copytree(folder, dst)
  cfg = json.loads((dst / "cfg.json").read_text())
  tensors = load_file(str(dst / "sae_weights.safetensors"))
  if cfg_change:
    cfg_change(cfg)
  if tensor_change:
    tensor_change(tensors, cfg)
  (dst / "cfg.json").write_text(json.dumps(cfg))
  save_file(tensors, str(dst / "sae_weights.safetensors"))
  return dst


def _foreign(cfg):
  """No emosae metadata, b_dec not applied to the input; topk rescales by
  decoder norms."""
  del cfg["metadata"]["emosae"]
  cfg["apply_b_dec_to_input"] = False
  if cfg["architecture"] == "topk":
    cfg["rescale_acts_by_decoder_norm"] = True


def _foreign_tensors(tensors, cfg):
  rng = np.random.default_rng(0)
  tensors["W_dec"] *= rng.uniform(0.5, 2, (cfg["d_sae"], 1)).astype(
      np.float32)
  if "threshold" in tensors:  # some thresholds <= 0 act as plain ReLU
    tensors["threshold"][::3] = -0.5
    tensors["threshold"][1::3] = 0.0


def test_foreign_folder_imports_with_identity_normaliser(exported, tmp_path):
  folder = _edit(exported, tmp_path / "foreign", _foreign, _foreign_tensors)
  back = slf.import_sae(folder, tmp_path / "back", _default_config)
  members = analysis.load_members(back)
  assert members.info["normalizer"]["scale"] == 1.0
  assert members.info["path"] == "" and members.config["data"]["path"] == ""
  x = np.random.default_rng(2).normal(size=(64, 32)).astype(np.float32) * 3
  got, want = emosae_raw(back, x), saelens_reference(folder, x)
  np.testing.assert_array_equal(got[0] != 0, want[0] != 0)
  assert_close(got[0], want[0])
  assert_close(got[1], want[1])


def _default_config(arch):
  from configs.sae import get_config
  return get_config(f"arch={arch}").to_dict()


@only_relu_l1
@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(architecture="gated"),
     "SAELens architecture 'gated' has no emosae counterpart"),
    (lambda c: c.update(normalize_activations="layer_norm"),
     "normalize_activations='layer_norm' is not supported"),
])
def test_import_refuses_what_emosae_cannot_represent(exported, tmp_path,
                                                     change, message):
  folder = _edit(exported, tmp_path / "bad", change)
  r = run_script("import_sae.py", f"--src={folder}",
                 f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert message in last_line(r.stderr)
  assert not (tmp_path / "w").exists()


@only_relu_l1
def test_import_refuses_missing_files_and_used_workdirs(exported, tmp_path):
  with pytest.raises(data.DataError, match="no sae_weights.safetensors"):
    slf.read_saelens(_without(exported, tmp_path / "b",
                              "sae_weights.safetensors"))
  extra = _edit(exported, tmp_path / "c", tensor_change=lambda t, c:
                t.update(r_mag=np.zeros(c["d_sae"], np.float32)))
  with pytest.raises(data.DataError, match="unexpected .'r_mag'."):
    slf.read_saelens(extra)
  slf.import_sae(exported, tmp_path / "w", _default_config)
  with pytest.raises(data.DataError, match="already holds a run"):
    slf.import_sae(exported, tmp_path / "w", _default_config)


def _without(folder, dst, name):
  shutil.copytree(folder, dst)
  (dst / name).unlink()
  return dst


def test_scripts_give_one_line_for_bad_input(tmp_path):
  r = run_script("import_sae.py", f"--src={tmp_path / 'nowhere'}",
                 f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert last_line(r.stderr).startswith("error: ")
  assert "no cfg.json; not a SAELens SAE folder" in r.stderr
  r = run_script("export.py", "--format=saelens",
                 f"--workdir={tmp_path / 'nowhere'}", f"--out={tmp_path}/o")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "not a run workdir" in last_line(r.stderr)



def test_export_of_a_run_on_an_embedding_set_names_its_encoder(tmp_path):
  import analysis_helpers as helpers
  out = slf.export_run(helpers.random_run(), tmp_path / "sae")
  meta = json.loads((out / "cfg.json").read_text())["metadata"]
  assert meta["model_name"] == "test-encoder"
  assert meta["hook_name"] == "encoder.last_hidden_state.mean_pooled"


@only_relu_l1
def test_export_and_import_need_no_jax(run, tmp_path):
  """The format module reads and writes runs through emosae_jax.runs
  (numpy only), so the torch side can export and import without jax."""
  code = (
      "import sys\n"
      "from emosae_jax import saelens_format as slf\n"
      f"out = slf.export_run({str(run)!r}, {str(tmp_path / 'sae')!r})\n"
      f"slf.import_sae(out, {str(tmp_path / 'back')!r}, lambda arch: 1 / 0)\n"
      "assert 'jax' not in sys.modules, 'jax was imported'\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                     text=True, cwd=ROOT, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  assert runs.load_members(tmp_path / "back").configs[0]["model"][
      "arch"] == "relu_l1"


@only_relu_l1
def test_reads_half_and_double_precision_weights(exported, tmp_path):
  """SAELens saves in its cfg dtype; every float width reads as float32
  (bfloat16, which numpy cannot write, was checked by hand)."""
  for dtype in (np.float16, np.float64):
    folder = _edit(exported, tmp_path / np.dtype(dtype).name,
                   tensor_change=lambda t, c: t.update(
                       {k: v.astype(dtype) for k, v in t.items()}))
    tensors, _ = slf.read_saelens(folder)
    assert all(v.dtype == np.float32 for v in tensors.values())
    want = load_file(str(folder / "sae_weights.safetensors"))
    for name, value in tensors.items():
      np.testing.assert_array_equal(value, want[name].astype(np.float32))
