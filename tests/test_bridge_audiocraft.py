"""Steering a tiny random audiocraft MusicGen (built offline from a config).

Needs audiocraft (scripts/install_audiocraft.sh, run by `make install`):
the audiocraft path is tested for real, never skipped.
"""

import warnings

import numpy as np
import pytest
import torch

from bridge import steering, tiny
from bridge.directions import Directions
from bridge.generate import AudiocraftBackend, Settings, generate

PROMPTS = ["a piano piece", "a slow violin melody with soft strings"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # xformers' "built for another torch"
    return tiny.tiny_audiocraft_musicgen(seed=0)


def _directions(n=2):
  gen = torch.Generator().manual_seed(0)
  return Directions(
      vectors=torch.randn(n, tiny.AUDIOCRAFT_T5_DIM, generator=gen) * 0.05,
      feature_ids=tuple(range(n)), emotions=("happy", "sad")[:n],
      selectivity=(2.0,) * n, p_values=(0.01,) * n,
      typical_activation=torch.ones(n) * 2.0)


def _tokens(model, texts, two_step_cfg=False):
  model.set_generation_params(duration=0.24, use_sampling=False, cfg_coef=3.0,
                              two_step_cfg=two_step_cfg)
  with torch.no_grad():
    _, tokens = model.generate(texts, return_tokens=True)
  return tokens


def test_targets_description_t5(model):
  encoder, layout = steering.find_t5_encoder(model)
  assert encoder is model.lm.condition_provider.conditioners["description"].t5
  assert layout == "tile"
  assert steering.find_t5_encoder(model.lm)[0] is encoder


def test_strength_zero_and_nonzero(model):
  dirs = _directions()
  base = _tokens(model, PROMPTS)
  with steering.steer(model, dirs, 0.0):
    zero = _tokens(model, PROMPTS)
  assert torch.equal(zero, base)
  with steering.steer(model, dirs, [6.0, 6.0]):
    moved = _tokens(model, PROMPTS)
  assert not torch.equal(moved[0], base[0])
  assert not torch.equal(moved[1], base[1])
  assert steering.active_hooks(model) == 0


def _t5_states(model, texts, dirs=None, strengths=0.0, two_step_cfg=False):
  """Every T5 output during one generate call, after steering."""
  encoder, _ = steering.find_t5_encoder(model)
  seen = []
  record = lambda m, a, k, out: seen.append(
      (out.last_hidden_state.clone(), k["attention_mask"].clone()))
  with steering.steer(model, dirs if dirs is not None else _directions(),
                      strengths if dirs is not None else 0.0) as hook:
    handle = encoder.register_forward_hook(record, with_kwargs=True)
    try:
      _tokens(model, texts, two_step_cfg)
    finally:
      handle.remove()
  return seen, hook.batch_sizes


def test_cfg_null_rows_untouched(model):
  base, _ = _t5_states(model, PROMPTS)
  steered, sizes = _t5_states(model, PROMPTS, _directions(), [4.0, -4.0])
  assert sizes == [4]  # [conditional rows; null rows] in one encoder call
  (h0, mask), (h1, _) = base[0], steered[0]
  assert torch.all(mask[2:] == 0)  # audiocraft's null condition
  assert torch.equal(h1[2:], h0[2:])
  assert torch.all((h1 - h0)[mask == 0] == 0)  # padding untouched too
  assert not torch.equal(h1[0], h0[0]) and not torch.equal(h1[1], h0[1])


def test_two_step_cfg(model):
  base, _ = _t5_states(model, PROMPTS, two_step_cfg=True)
  steered, sizes = _t5_states(model, PROMPTS, _directions(), [4.0, 0.0],
                              two_step_cfg=True)
  assert sizes == [2, 2]  # conditional call, then null call
  assert not torch.equal(steered[0][0][0], base[0][0][0])
  assert torch.equal(steered[0][0][1], base[0][0][1])  # strength 0 row
  assert torch.equal(steered[1][0], base[1][0])  # null call


def test_batched_strengths_equal_separate_calls(model):
  dirs = _directions()
  strengths = [0.0, 4.0, -4.0]
  with steering.steer(model, dirs, strengths):
    batched = _tokens(model, PROMPTS[:1] * 3)
  for row, s in enumerate(strengths):
    with steering.steer(model, dirs, s):
      alone = _tokens(model, PROMPTS[:1])
    assert torch.equal(batched[row], alone[0]), f"strength {s}"


def test_hook_removed_after_error(model):
  with pytest.raises(ValueError, match="inside"):
    with steering.steer(model, _directions(), 3.0):
      assert steering.active_hooks(model) == 1
      raise ValueError("inside")
  assert steering.active_hooks(model) == 0


def test_generate_helper_on_backend(model):
  backend = AudiocraftBackend.__new__(AudiocraftBackend)
  backend.model = model
  audio = generate(backend, PROMPTS, _directions(), [0.0, 2.0],
                   Settings(duration=0.2, sampling=True, seed=3))
  assert audio.shape == (2, 1, round(0.2 * 50) * 160)
  assert np.isfinite(audio).all()
