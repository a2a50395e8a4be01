"""scripts/steer.py and scripts/evaluate.py end to end on tiny local models."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge import tiny
from bridge.directions import save_directions

ROOT = Path(__file__).resolve().parents[1]


def _meta(n, emotions=("happy", "sad")):
  return dict(feature_ids=[3, 7][:n], emotions=list(emotions)[:n],
              selectivity=[3.0, 2.5][:n], p_values=[0.01, 0.03][:n],
              typical_activation=[2.0, 1.0][:n])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  """Tiny MusicGen (transformers + audiocraft), CLAP, and exports."""
  root = tmp_path_factory.mktemp("bridge_scripts")
  rng = np.random.default_rng(0)
  tiny.save_tiny_musicgen(root / "musicgen", d_model=32)
  tiny.save_tiny_clap(root / "clap")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tiny.save_tiny_audiocraft_musicgen(root / "audiocraft",
                                       root / "hf" / "hub")
  save_directions(root / "dirs32", rng.normal(size=(2, 32)), _meta(2))
  save_directions(root / "dirs16", rng.normal(size=(2, 16)), _meta(2))
  save_directions(root / "dirs768", rng.normal(size=(1, 768)) * 0.05,
                  _meta(1))
  (root / "prompts.jsonl").write_text(
      '{"text": "a piano piece"}\n{"text": "a solo violin"}\n')
  return root


def _run(script, *args, env=None, timeout=240):
  env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
             **(env or {}))
  return subprocess.run([sys.executable, str(ROOT / "scripts" / script),
                         *args], capture_output=True, text=True, env=env,
                        timeout=timeout, cwd=ROOT)


def _check_run(out, sample_rate):
  run = json.loads((out / "steering.json").read_text())
  kinds = {c["kind"] for c in run["clips"]}
  assert kinds == {"baseline", "steer", "random", "prompt_edit"}
  for clip in run["clips"]:
    audio, rate = soundfile.read(out / clip["path"])
    assert rate == sample_rate and len(audio) > 0
    assert np.isfinite(audio).all()
  assert run["settings"]["strengths"] == [0.0, 2.0]
  return run


def test_steer_then_evaluate_transformers(work):
  out = work / "steer_tf"
  r = _run("steer.py", f"--directions={work / 'dirs32'}",
           f"--model={work / 'musicgen'}", f"--out={out}",
           "--strengths=0,2", "--duration=0.2", "--device=cpu",
           f"--prompts={work / 'prompts.jsonl'}")
  assert r.returncode == 0, r.stderr[-2000:]
  run = _check_run(out, tiny.TINY_SAMPLE_RATE)
  # per prompt: baseline + 2 features x (steer + random) + 2 prompt edits
  assert len(run["clips"]) == 2 * (1 + 4 + 2)
  steer = [c for c in run["clips"] if c["kind"] == "steer"]
  assert {(c["feature"], c["emotion"], c["strength"]) for c in steer} == {
      (3, "happy", 2.0), (7, "sad", 2.0)}
  edits = [c["prompt"] for c in run["clips"] if c["kind"] == "prompt_edit"]
  assert "a piano piece, happy" in edits

  r = _run("evaluate.py", f"--steering={out}", f"--clap={work / 'clap'}",
           "--device=cpu")
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads((out / "evaluation.json").read_text())
  assert [f["feature"] for f in result["features"]] == [3, 7]
  for feat in result["features"]:
    for kind in ("steer", "random"):
      assert isinstance(feat[kind]["valence"]["slope"], float)
      assert feat[kind]["valence"]["n"] == 4  # 2 baselines + 2 steered
    assert feat["prompt_edit"]["valence"]["n"] == 2
  clip = result["clips"][0]
  assert abs(sum(clip["probs"].values()) - 1) < 1e-4
  assert clip["valence"] == pytest.approx(
      clip["probs"]["happy"] - clip["probs"]["sad"])
  assert (out / "dose_response.png").stat().st_size > 1000


def test_steer_audiocraft_backend(work):
  out = work / "steer_ac"
  env = dict(HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1")
  r = _run("steer.py", f"--directions={work / 'dirs768'}",
           f"--model={work / 'audiocraft'}", "--backend=audiocraft",
           f"--out={out}", "--strengths=0,2", "--duration=0.2",
           "--device=cpu", f"--prompts={work / 'prompts.jsonl'}", env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  run = _check_run(out, tiny.TINY_SAMPLE_RATE)
  assert run["settings"]["backend"] == "audiocraft"


def _one_line_error(r, pattern):
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), r.stderr[-2000:]
  assert pattern in last, last
  return last


@pytest.mark.parametrize("flag,pattern", [
    ("--features=5", "unknown feature id(s) [5]; this export has feature "
     "ids [3, 7]"),
    ("--emotions=angry", "this export has emotions ['happy', 'sad']"),
    ("--strengths=x", "--strengths must be a list of floats")])
def test_bad_selection(work, flag, pattern):
  r = _run("steer.py", f"--directions={work / 'dirs32'}",
           f"--model={work / 'musicgen'}", f"--out={work / 'bad'}", flag)
  _one_line_error(r, pattern)


def test_wrong_dimension(work):
  r = _run("steer.py", f"--directions={work / 'dirs16'}",
           f"--model={work / 'musicgen'}", f"--out={work / 'bad'}")
  _one_line_error(r, "d_model=16 but model")


@pytest.mark.parametrize("backend", ["transformers", "audiocraft"])
def test_weights_not_available_offline(work, backend):
  env = dict(HF_HOME=str(work / "empty_hf"), HF_HUB_OFFLINE="1")
  r = _run("steer.py", f"--directions={work / 'dirs32'}",
           f"--out={work / 'bad'}", f"--backend={backend}", env=env)
  last = _one_line_error(r, "'facebook/musicgen-small' are not available "
                         "offline")
  assert "HF_HOME" in last and "--model=" in last
  if backend == "audiocraft":
    return  # CLAP loading does not depend on the backend
  run = work / "unscored"
  run.mkdir(exist_ok=True)
  soundfile.write(run / "a.wav", np.zeros(800), 8000)
  clip = dict(path="a.wav", kind="baseline", feature=None, emotion=None,
              strength=0.0)
  (run / "steering.json").write_text(json.dumps(
      {"clips": [clip], "directions": {"feature_ids": [], "emotions": []}}))
  r = _run("evaluate.py", f"--steering={run}", env=env)
  last = _one_line_error(r, "'laion/clap-htsat-unfused' are not available")
  assert "HF_HOME" in last and "--clap=" in last
