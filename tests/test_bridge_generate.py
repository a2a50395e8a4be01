"""Run planning, prompt files and evaluation maths (no models)."""

import numpy as np
import pytest
import torch

from bridge import evaluate, generate
from bridge.directions import Directions


def _directions():
  return Directions(
      vectors=torch.ones(2, 4), feature_ids=(3, 7), emotions=("happy", "sad"),
      selectivity=(2.0, 2.0), p_values=(0.01, 0.01),
      typical_activation=torch.ones(2))


def test_plan_and_batches():
  clips = generate.plan_clips(["a", "b"], _directions(), [0, 2, 4])
  per_prompt = 1 + 2 * 2 * 2 + 2  # baseline, steer+random, 2 prompt edits
  assert len(clips) == 2 * per_prompt
  steer = [c for c in clips if c.kind == "steer" and c.base_prompt == "a"]
  assert [(c.feature, c.strength, c.column) for c in steer] == [
      (3, 2.0, 0), (3, 4.0, 0), (7, 2.0, 1), (7, 4.0, 1)]
  rand = [c for c in clips if c.kind == "random" and c.base_prompt == "a"]
  assert {c.column for c in rand} == {2, 3}  # columns after the features
  edits = [c.prompt for c in clips if c.kind == "prompt_edit"]
  assert edits == ["a, happy", "a, sad", "b, happy", "b, sad"]
  groups = generate.batches(clips, batch_size=4)
  for rows in groups:  # one text per generate call, at most 4 rows
    assert len({clips[i].prompt for i in rows}) == 1 and len(rows) <= 4
  assert sorted(i for rows in groups for i in rows) == list(range(len(clips)))
  bare = generate.plan_clips(["a"], _directions(), [0, 1], False, False)
  assert [c.kind for c in bare] == ["baseline", "steer", "steer"]


def test_read_prompts(tmp_path):
  (tmp_path / "p.txt").write_text("a piano piece\n\n  a violin  \n")
  assert generate.read_prompts(tmp_path / "p.txt") == ["a piano piece",
                                                       "a violin"]
  (tmp_path / "p.jsonl").write_text('{"text": "x", "emotion": "happy"}\n')
  assert generate.read_prompts(tmp_path / "p.jsonl") == ["x"]
  (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
  with pytest.raises(generate.PromptsError, match="bad.jsonl:1"):
    generate.read_prompts(tmp_path / "bad.jsonl")
  with pytest.raises(generate.PromptsError, match="no prompts file"):
    generate.read_prompts(tmp_path / "missing.txt")


def test_dose_response():
  fit = evaluate.dose_response([0, 1, 2, 4], [1.0, 1.5, 2.0, 3.0])
  assert fit["slope"] == pytest.approx(0.5)
  assert fit["intercept"] == pytest.approx(1.0)
  assert fit["stderr"] == pytest.approx(0.0, abs=1e-9)
  assert evaluate.dose_response([0, 0], [1, 2])["slope"] is None


def _clip(kind, strength, happy, feature=None, emotion=None):
  probs = {"happy": happy, "sad": 1 - happy}
  return dict(kind=kind, strength=strength, feature=feature, emotion=emotion,
              probs=probs, valence=happy - (1 - happy))


def test_feature_effects():
  clips = [_clip("baseline", 0.0, 0.5), _clip("baseline", 0.0, 0.5),
           _clip("steer", 2.0, 0.7, 3, "happy"),
           _clip("steer", 4.0, 0.9, 3, "happy"),
           _clip("random", 2.0, 0.5, 3, "happy"),
           _clip("random", 4.0, 0.5, 3, "happy"),
           _clip("prompt_edit", 0.0, 0.8, None, "happy")]
  eff = evaluate.feature_effects(clips, 3, "happy")
  assert eff["steer"]["target"]["slope"] == pytest.approx(0.1)
  assert eff["steer"]["valence"]["slope"] == pytest.approx(0.2)
  assert eff["random"]["valence"]["slope"] == pytest.approx(0.0, abs=1e-12)
  assert eff["prompt_edit"]["valence"]["effect"] == pytest.approx(0.6)
  assert eff["steer"]["mean_by_strength"]["target"] == {
      "0": 0.5, "2": 0.7, "4": 0.9}


def test_read_audio_resamples_and_cuts(tmp_path):
  import soundfile
  soundfile.write(tmp_path / "a.wav", np.zeros((8000, 2)), 8000)
  audio = evaluate.read_audio(tmp_path / "a.wav", 48000, max_seconds=0.5)
  assert audio.shape == (24000,) and audio.dtype == np.float32
