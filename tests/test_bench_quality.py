"""bench_quality's SAELens job lists and flags (no training, no SAELens venv
needed): which learning rates, L1 coefficients and schedule SAELens gets."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_quality  # noqa: E402

LRS = {"relu_l1": [1e-3], "topk": [1e-3], "sparsify": [None]}


def _runs(lrs, archs=("relu_l1", "topk")):
  jobs = bench_quality.saelens_jobs(archs, lrs, [1.0, 3.0], [16], 1536, 256,
                                    320, 0, False)
  return {(j["arch"], j["l1"], j["lr"]) for j in jobs}


def test_saelens_relu_lrs_apart_from_ours():
  """Without --saelens_relu_lrs SAELens's ReLU+L1 gets the shared grid;
  with it, its own lrs at every L1 coefficient, TopK keeping the shared
  grid; --archs filters."""
  assert _runs(LRS) == {("relu_l1", 1.0, 1e-3), ("relu_l1", 3.0, 1e-3),
                        ("topk", 0.0, 1e-3)}
  assert _runs(dict(LRS, saelens_relu_l1=[3e-4])) == {
      ("relu_l1", 1.0, 3e-4), ("relu_l1", 3.0, 3e-4), ("topk", 0.0, 1e-3)}
  assert _runs(LRS, archs=["topk"]) == {("topk", 0.0, 1e-3)}


def test_saelens_schedule_defaults_or_ours(monkeypatch):
  """defaults: no schedule keys (SAELens's constant lr, no L1 warm-up);
  matched: this project's schedule in steps (decay fraction x steps)."""
  assert bench_quality.saelens_schedule("relu_l1", 320, False) == {}
  config = bench_quality.get_config("arch=relu_l1")
  config.train.warmup_steps = 10
  config.train.lr_decay_fraction = 0.2
  config.train.sparsity_warmup_steps = 16
  monkeypatch.setattr(bench_quality, "get_config", lambda arg: config)
  assert bench_quality.saelens_schedule("relu_l1", 320, True) == dict(
      lr_warm_up_steps=10, lr_decay_steps=64, l1_warm_up_steps=16)


@pytest.mark.parametrize("flag", ["--relu_l1s=0,1", "--relu_l1s=a",
                                  "--saelens_relu_l1s=1,-3",
                                  "--saelens_relu_lrs=3e-4,x"])
def test_bad_flags_one_line(monkeypatch, flag):
  """A bad coefficient or lr list stops before any training, with one line
  naming the flags."""
  monkeypatch.setattr(sys, "argv", ["bench_quality.py", "--skip_saelens",
                                    "--skip_sparsify", flag])
  with pytest.raises(SystemExit) as stop:
    bench_quality.main()
  assert "--relu_l1s" in str(stop.value) and "\n" not in str(stop.value)
