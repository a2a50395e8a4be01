"""The torch-side scripts under faults: no hub, non-finite strengths. Each
must end in one line (exit 2) within seconds and leave nothing behind."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bridge.directions import load_directions, save_directions
from emosae_jax import directions_format

ROOT = Path(__file__).resolve().parents[1]
# torch + transformers import in a few seconds; the hub libraries' retries
# without a network took far longer (benchmarks/README.md has the figures).
FAST_SECONDS = 25


def _meta(n=1):
  return dict(feature_ids=[3][:n], emotions=["happy"][:n],
              selectivity=[3.0][:n], p_values=[0.01][:n],
              typical_activation=[2.0][:n])


def _run(script, *args, hf_home):
  env = {k: v for k, v in os.environ.items()
         if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
  env.update(HF_HOME=str(hf_home), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
  start = time.perf_counter()
  r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args],
                     capture_output=True, text=True, env=env, timeout=300,
                     cwd=ROOT)
  return r, time.perf_counter() - start


def _one_line(r):
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), r.stderr[-2000:]
  return last


@pytest.fixture
def directions(tmp_path):
  return save_directions(tmp_path / "dirs",
                         np.random.default_rng(0).normal(size=(1, 32)),
                         _meta())


def test_steer_refuses_non_finite_strengths(directions, tmp_path):
  out = tmp_path / "steer"
  r, _ = _run("steer.py", f"--directions={directions}", f"--out={out}",
              "--strengths=0,nan,inf", "--model=/nonexistent/musicgen",
              hf_home=tmp_path / "hf")
  assert "strengths must be finite numbers, got nan, inf" in _one_line(r)
  assert not out.exists()


@pytest.mark.parametrize("script, args, name", [
    ("extract.py", ["--model=t5-base"], "'t5-base'"),
    ("steer.py", [], "'facebook/musicgen-small'"),
    ("evaluate.py", [], "'laion/clap-htsat-unfused'"),
])
def test_no_hub_fails_fast_naming_the_fix(directions, tmp_path, script,
                                          args, name):
  """No network here: the hub is unreachable and the cache is empty."""
  if script == "extract.py":
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "a calm piano", "emotion":
                                   "calm"}) + "\n")
    args = [f"--prompts={prompts}", f"--out={tmp_path / 'emb'}", *args]
  elif script == "steer.py":
    args = [f"--directions={directions}", f"--out={tmp_path / 'steer'}",
            "--strengths=0,1"]
  else:
    import soundfile
    run = tmp_path / "run"
    run.mkdir()
    soundfile.write(run / "a.wav", np.zeros(800), 8000)
    clip = dict(path="a.wav", kind="baseline", feature=None, emotion=None,
                strength=0.0)
    (run / "steering.json").write_text(json.dumps(
        {"clips": [clip], "directions": {"feature_ids": [], "emotions": []}}))
    args = [f"--steering={run}"]
  r, seconds = _run(script, *args, hf_home=tmp_path / "empty_hf")
  last = _one_line(r)
  assert name in last and "HF_HUB_OFFLINE" in last and "HF_HOME" in last
  assert seconds < FAST_SECONDS, (seconds, last)


def test_old_exports_read_as_t5_output_site(directions):
  meta_path = directions / directions_format.META_FILE
  meta = json.loads(meta_path.read_text())
  assert meta["site"] == {"kind": "t5_output"}
  del meta["site"]  # as written before the field existed
  meta_path.write_text(json.dumps(meta))
  assert load_directions(directions).meta["site"] == {"kind": "t5_output"}
  with pytest.raises(directions_format.DirectionsError, match="site"):
    directions_format.write(directions, np.zeros((1, 4)),
                            dict(_meta(), site={"kind": "middle"}))
