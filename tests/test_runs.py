"""The run layout (emosae_jax.runs): a sweep's members paired with their own
parameter rows in every group, analysed and exported as if trained alone;
locks; refusing changed data; damaged files."""

import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import ROOT, last_line, run_script, tiny_config
from emosae_jax import analysis, data, export, runs, sweep, train_run

# Interleaved widths (g0 = members 0, 2, 4; g1 = members 1, 3) and member 2
# diverges, so every group's rows differ from the global member indices.
OVERRIDES = [{"model.d_sae": 16}, {"model.d_sae": 32},
             {"model.d_sae": 16, "train.lr": 1e30},
             {"model.d_sae": 32, "seed": 1}, {"model.d_sae": 16, "seed": 1}]
SETTINGS = analysis.Settings(permutations=20, fdr=0.2, min_support=2,
                             n_causal=4, n_random=2, n_top=3)


def labelled_set(n_per=40, k=3, d=16, seed=0, shift=1.5):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(k), n_per)
  mu = rng.normal(size=(k, d))
  x = rng.normal(size=(len(labels), d)) + shift * mu[labels] + 2.0
  groups = [f"t{i % 8}" for i in range(len(labels))]
  return data.make_embedding_set(
      x, labels, [f"emo{e}" for e in range(k)],
      [f"prompt {i}" for i in range(len(labels))], groups,
      encoder={"name": "test-encoder", "revision": "r1"})


def base_config(es_path, **kw):
  return tiny_config("relu_l1", **({
      "data__synthetic": False, "data__path": str(es_path),
      "model__d_in": 16, "model__d_sae": 16, "train__batch_size": 32,
      "train__epochs": 3, "train__epochs_per_call": 3,
      "train__checkpoint_every_epochs": 3, "train__warmup_steps": 0,
      "train__max_grad_norm": 0.0} | kw))


def member_config(es_path, over):
  return sweep.expand(base_config(es_path), [over])[0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  es_path = data.save_embedding_set(labelled_set(), root / "data")
  result = sweep.run_sweep(base_config(es_path), OVERRIDES, root / "sweep",
                           progress=False)
  return root, es_path, result


def _single(root, es_path, member):
  workdir = root / f"single{member}"
  if not (workdir / runs.PARAMS_FILE).exists():
    train_run.train_and_evaluate(member_config(es_path, OVERRIDES[member]),
                                 workdir, progress=False)
  return workdir


def test_every_member_reads_its_own_parameters(swept):
  """Before runs.py, g0 paired rows with global indices (member 4 read
  past the end) and g1 paired member 1 with member 0's row."""
  root, es_path, result = swept
  assert [m["status"] for m in result["members"]] == [
      "ok", "ok", "failed", "ok", "ok"]
  top = root / "sweep"
  assert [m["indices"] for m in [
      {"indices": runs.load_members(top / g).indices}
      for g in result["groups"]]] == [[0, 4], [1, 3]]
  for member in (0, 1, 3, 4):
    single = load_file(str(_single(root, es_path, member) / runs.PARAMS_FILE))
    run = runs.load_members(top, member=member)
    assert run.indices == [member] and run.is_sweep
    assert run.configs[0]["model"]["d_sae"] == OVERRIDES[member][
        "model.d_sae"]
    for name, value in single.items():
      np.testing.assert_array_equal(run.params[name][0], value, name)
  with pytest.raises(runs.RunLayoutError, match="member 2 has no trained "
                     "parameters"):
    runs.load_members(top, member=2)
  with pytest.raises(runs.RunLayoutError, match="pass one of its groups"):
    runs.load_members(top)


def test_every_group_analyses_and_exports_member_n(swept, tmp_path):
  root, es_path, result = swept
  top = root / "sweep"
  for group in result["groups"]:
    analysis.write(analysis.analyze(top / group, settings=SETTINGS),
                   top / group, report=False)
  for member in (0, 1, 3, 4):
    arrays = analysis.load_arrays(runs.member_group(top, member))
    summary = analysis.load_summary(runs.member_group(top, member))
    position = [m["index"] for m in summary["members"]].index(member)
    features = [int(f) for f in np.flatnonzero(arrays["fires"][position])[:2]]
    directions, meta = export.load_export(export.export_directions(
        top, tmp_path / str(member), features=features, member=member))
    single = runs.load_members(_single(root, es_path, member))
    scale = data.Normalizer.from_dict(single.info["normalizer"]).scale
    np.testing.assert_allclose(
        directions, single.params["W_dec"][0][features] / scale, rtol=1e-6)
    assert meta["source"]["member"] == member
    assert meta["site"] == {"kind": "t5_output"}
  proc = run_script("export.py", f"--workdir={top}", "--member=3",
                    f"--out={tmp_path / 'script'}", "--features=0")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert export.load_meta(tmp_path / "script")["source"]["member"] == 3


@pytest.mark.parametrize("kind", ["train", "sweep"])
def test_resume_refuses_changed_data(tmp_path, kind):
  """Before: the resume went ahead, refitting the normaliser on new data."""
  es_path = data.save_embedding_set(labelled_set(), tmp_path / "data")
  old = data.load_embedding_set(es_path).meta["content_hash"]

  def run(epochs):
    config = base_config(es_path, train__epochs=epochs)
    if kind == "train":
      train_run.train_and_evaluate(config, tmp_path / "w", progress=False)
    else:
      sweep.run_sweep(config, OVERRIDES[:2], tmp_path / "w", progress=False)

  run(1)
  data.save_embedding_set(labelled_set(seed=1), es_path)
  new = data.load_embedding_set(es_path).meta["content_hash"]
  with pytest.raises(data.DataError, match=f"content hash {old}, but "
                     f".* now has content hash {new}; use a new --workdir"):
    run(2)


# --------------------------------------------------------------------------
# Locks, damaged files, a workdir under a file, a full disk


_HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from emosae_jax import runs
with runs.lock(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(600)
"""


def _holder(workdir):
  proc = subprocess.Popen(
      [sys.executable, "-c", _HOLD_LOCK.format(root=str(ROOT)), str(workdir)],
      stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_process_refuses_and_stale_lock_is_taken_over(tmp_path):
  es_path = data.save_embedding_set(labelled_set(), tmp_path / "data")
  config = base_config(es_path, train__epochs=1)
  (tmp_path / "w").mkdir()
  holder = _holder(tmp_path / "w")
  try:
    with pytest.raises(runs.RunLayoutError, match=f"in use by process "
                       f"{holder.pid} "):
      train_run.train_and_evaluate(config, tmp_path / "w", progress=False)
    with pytest.raises(runs.RunLayoutError, match=f"process {holder.pid}"):
      sweep.run_sweep(config, OVERRIDES[:1], tmp_path / "w", progress=False)
  finally:
    holder.kill()  # SIGKILL: the lock file stays behind, stale
    holder.wait()
  assert (tmp_path / "w" / runs.LOCK_FILE).exists()
  train_run.train_and_evaluate(config, tmp_path / "w", progress=False)
  assert not (tmp_path / "w" / runs.LOCK_FILE).exists()


def test_truncated_safetensors_is_one_line(swept, tmp_path):
  root, es_path, _ = swept
  run = _single(root, es_path, 0)
  damaged = tmp_path / "run"
  import shutil
  shutil.copytree(run, damaged, ignore=shutil.ignore_patterns("ckpt"))
  params = damaged / runs.PARAMS_FILE
  params.write_bytes(params.read_bytes()[:100])
  with pytest.raises(runs.RunLayoutError, match="damaged or truncated"):
    runs.load_members(damaged)
  bad_set = tmp_path / "set"
  shutil.copytree(es_path, bad_set)
  tensors = bad_set / data.TENSOR_FILE
  tensors.write_bytes(tensors.read_bytes()[:-50])
  with pytest.raises(data.DataError, match="damaged or truncated"):
    data.load_embedding_set(bad_set)
  for script, args in [
      ("train.py", ["--config=configs/sae.py:runlocal", f"--data={bad_set}",
                    f"--workdir={tmp_path / 'w'}"]),
      ("phase0.py", [f"--data={bad_set}", f"--out={tmp_path / 'p'}"]),
      ("analyze.py", [f"--workdir={damaged}"])]:
    r = run_script(script, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (
        script, r.stderr[-2000:])
    assert "damaged or truncated safetensors" in last_line(r.stderr), script


def test_workdir_under_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  for script, config in [("train.py", "configs/sae.py:runlocal"),
                         ("sweep.py", "configs/sweep.py:runlocal")]:
    r = run_script(script, f"--config={config}",
                   "--config.data.synthetic=True",
                   f"--workdir={tmp_path / 'file' / 'w'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, (
        script, r.stderr[-2000:])
    assert "is a file, not a folder" in last_line(r.stderr), script


def test_disk_full_during_checkpoint_is_one_line(tmp_path, monkeypatch):
  """Orbax raised a flood of tracebacks and left its temporary folder."""
  import errno
  from etils import epath

  def full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  es_path = data.save_embedding_set(labelled_set(), tmp_path / "data")
  monkeypatch.setattr(epath.Path, "write_text", full)
  with pytest.raises(runs.RunLayoutError, match="disk full while saving the "
                     "checkpoint of epoch 1; free space and rerun"):
    train_run.train_and_evaluate(base_config(es_path, train__epochs=1),
                                 tmp_path / "w", progress=False)
  assert list((tmp_path / "w" / "ckpt").iterdir()) == []
  assert not (tmp_path / "w" / runs.LOCK_FILE).exists()
