"""scripts/train.py and scripts/import_embeddings.py as a user runs them."""

import json

import numpy as np
import pytest

from conftest import last_line, run_script
from emosae_jax import data


def _write_set(path, n=40, d=32, nan=False, short_labels=False):
  x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
  es = data.make_embedding_set(x, np.arange(n) % 4, list("abcd"))
  if nan or short_labels:
    # Bypasses validation, as a hand-made or damaged file would.
    if nan:
      es.embeddings[1, 1] = np.nan
    if short_labels:
      es.labels = es.labels[:-3]
    from safetensors.numpy import save_file
    path.mkdir()
    save_file({"embeddings": es.embeddings}, str(path /
                                                 "embeddings.safetensors"))
    meta = dict(es.meta, format_version=1, labels=es.labels.tolist(),
                label_names=es.label_names, texts=es.texts, groups=es.groups)
    (path / "embeddings.json").write_text(json.dumps(meta))
  else:
    data.save_embedding_set(es, path)
  return path


def _train(tmp_path, *extra):
  return run_script("train.py", "--config=configs/sae.py:runlocal",
                    f"--workdir={tmp_path / 'work'}", *extra)


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--data=/nonexistent/set"], "no embedding set"),
    ("nan", [], "NaN"),
    ("short_labels", [], "37 labels for 40 embeddings"),
    ("dim", ["--config.model.d_in=16"], "dimension 32"),
    (None, ["--config.data.synthetic=True", "--config.model.arch=conv"],
     "unknown SAE architecture"),
    (None, ["--config.data.synthetic=True", "--config.train.typo=1"],
     "typo"),
    (None, ["--config.data.synthetic=True",
            "--config.train.matmul_precision=fp64"],
     "train.matmul_precision='fp64'"),
])
def test_bad_input_one_line_error_nothing_written(tmp_path, setup, args,
                                                  message):
  if setup:
    path = _write_set(tmp_path / "set", nan=setup == "nan",
                      short_labels=setup == "short_labels")
    args = [f"--data={path}", *args]
  result = _train(tmp_path, *args)
  assert result.returncode != 0
  assert message in last_line(result.stderr), result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "work").exists()


def test_import_then_train(tmp_path):
  src = tmp_path / "numpy"
  src.mkdir()
  rng = np.random.default_rng(0)
  np.save(src / "embeddings.npy", rng.normal(size=(64, 32)).astype("f4"))
  np.save(src / "labels.npy", np.arange(64) % 4)
  (src / "metadata.json").write_text(json.dumps(
      {"emotions": ["happy", "sad", "calm", "energetic"]}))
  result = run_script("import_embeddings.py", f"--src={src}",
                      f"--out={tmp_path / 'set'}")
  assert result.returncode == 0, result.stderr[-2000:]
  result = _train(tmp_path, f"--data={tmp_path / 'set'}",
                  "--config.train.epochs=3")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads((tmp_path / "work" / "summary.json").read_text())
  assert summary["epochs_run"] == 3 and "heldout_fvu" in summary
  bad = run_script("import_embeddings.py", "--src=/nonexistent",
                   f"--out={tmp_path / 'x'}")
  assert bad.returncode != 0 and "not a folder" in last_line(bad.stderr)


def test_rerun_reads_the_persistent_compilation_cache(tmp_path, monkeypatch):
  """The first run fills the cache folder; a rerun from it trains the same
  parameters bit for bit."""
  from safetensors.numpy import load_file
  cache = tmp_path / "cache"
  monkeypatch.setenv("EMOSAE_JAX_CACHE", str(cache))
  params = []
  for name in ("a", "b"):
    result = run_script("train.py", "--config=configs/sae.py:runlocal",
                        "--config.data.synthetic=True",
                        "--config.train.epochs=5",
                        f"--workdir={tmp_path / name}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(cache.iterdir())
    params.append(load_file(str(tmp_path / name / "params.safetensors")))
  for key, value in params[0].items():
    np.testing.assert_array_equal(value, params[1][key], err_msg=key)
