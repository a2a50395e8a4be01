"""Steering hook on a bare T5 encoder and a tiny transformers MusicGen."""

from unittest import mock

import numpy as np
import pytest
import torch

from bridge import steering, tiny
from bridge.directions import DirectionsError
from bridge.generate import Settings, TransformersBackend, generate

PROMPTS = ["a piano piece", "a slow violin melody with soft strings"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def t5():
  return tiny.tiny_t5_encoder(d_model=32)


@pytest.fixture(scope="module")
def musicgen():
  return tiny.tiny_musicgen(d_model=32)


def _directions(d_model=32, n=2, seed=0):
  return tiny.random_directions(d_model, n, seed)


def _encode(model, tokenizer, texts):
  batch = tokenizer(texts, return_tensors="pt", padding=True)
  with torch.no_grad():
    out = model(**batch).last_hidden_state
  return out, batch["attention_mask"]


def test_mean_pooled_shift_and_padding(t5):
  model, tok = t5
  dirs = _directions(n=1)
  base, mask = _encode(model, tok, PROMPTS)
  assert (mask == 0).any()  # the short prompt is padded
  with steering.steer(model, dirs, [2.0, -3.0]):
    steered, _ = _encode(model, tok, PROMPTS)
  delta = steered - base
  assert torch.all(delta[mask == 0] == 0)  # padded positions untouched
  pool = lambda h: (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
  unit = dirs.vectors[0] * dirs.typical_activation[0]
  expected = pool(base) + torch.tensor([2.0, -3.0])[:, None] * unit
  torch.testing.assert_close(pool(steered), expected, rtol=1e-5, atol=1e-5)


def test_several_directions_add_up(t5):
  model, tok = t5
  dirs = _directions(n=2)
  base, mask = _encode(model, tok, PROMPTS[:1])
  with steering.steer(model, dirs, [[1.0, 2.0]]):
    steered, _ = _encode(model, tok, PROMPTS[:1])
  expected = 1.0 * 1.5 * dirs.vectors[0] + 2.0 * 0.5 * dirs.vectors[1]
  torch.testing.assert_close(steered[0, 0] - base[0, 0], expected, rtol=1e-5,
                             atol=1e-5)


def test_strength_zero_is_exact_and_hook_is_removed(t5):
  model, tok = t5
  base, _ = _encode(model, tok, PROMPTS)
  with steering.steer(model, _directions(), 0.0):
    assert steering.active_hooks(model) == 1
    same, _ = _encode(model, tok, PROMPTS)
  assert torch.equal(same, base)
  assert steering.active_hooks(model) == 0
  with pytest.raises(RuntimeError, match="boom"):
    with steering.steer(model, _directions(), 5.0):
      raise RuntimeError("boom")
  assert steering.active_hooks(model) == 0
  after, _ = _encode(model, tok, PROMPTS)
  assert torch.equal(after, base)


def test_tuple_output_and_positional_mask(t5):
  model, tok = t5
  batch = tok(PROMPTS, return_tensors="pt", padding=True)
  ids, mask = batch["input_ids"], batch["attention_mask"]
  with torch.no_grad():
    base = model(ids, mask, return_dict=False)[0]
    with steering.steer(model, _directions(n=1), 1.0):
      steered = model(ids, mask, return_dict=False)[0]
  assert torch.all((steered - base)[mask == 0] == 0)
  assert torch.all((steered - base)[mask == 1] != 0)


def test_row_layouts():
  offsets = torch.arange(2.0)[:, None].repeat(1, 3)  # row b holds b
  tile = steering.SteeringHook(offsets, "tile").row_offsets(4)[:, 0]
  inter = steering.SteeringHook(offsets, "interleave").row_offsets(4)[:, 0]
  assert tile.tolist() == [0, 1, 0, 1]
  assert inter.tolist() == [0, 0, 1, 1]
  with pytest.raises(DirectionsError, match="3 rows but 2 strengths"):
    steering.SteeringHook(offsets, "tile").row_offsets(3)


def test_wrong_dimension_is_rejected(t5, musicgen):
  with pytest.raises(DirectionsError, match="d_model=16.*d_model=32"):
    with steering.steer(t5[0], torch.zeros(16), 1.0):
      pass
  with pytest.raises(DirectionsError, match="d_model=16.*d_model=32"):
    with steering.steer(musicgen[0], torch.zeros(2, 16), 1.0):
      pass
  assert steering.active_hooks(t5[0]) == 0


# --- transformers MusicGen --------------------------------------------------


def _codes(model, processor, texts, **kwargs):
  """The audio codes [B, K, T] that generate hands to the Encodec decoder."""
  inputs = processor(text=texts, return_tensors="pt", padding=True)
  decode = model.audio_encoder.decode
  with mock.patch.object(model.audio_encoder, "decode", wraps=decode) as spy:
    with torch.no_grad():
      model.generate(**inputs, **kwargs)
  codes = spy.call_args.args[0] if spy.call_args.args else \
      spy.call_args.kwargs["audio_codes"]
  return codes[0]


GREEDY = dict(do_sample=False, guidance_scale=3.0, max_new_tokens=12)


def test_musicgen_strength_zero_and_nonzero(musicgen):
  model, proc = musicgen
  dirs = _directions()
  base = _codes(model, proc, PROMPTS, **GREEDY)
  with steering.steer(model, dirs, 0.0):
    zero = _codes(model, proc, PROMPTS, **GREEDY)
  assert torch.equal(zero, base)
  with steering.steer(model, dirs, [8.0, 8.0]):
    moved = _codes(model, proc, PROMPTS, **GREEDY)
  assert not torch.equal(moved[0], base[0])
  assert not torch.equal(moved[1], base[1])
  assert steering.active_hooks(model) == 0


def _decoder_states(model, proc, texts, **kwargs):
  """encoder_hidden_states the decoder sees at the first step."""
  seen = []
  hook = model.decoder.register_forward_pre_hook(
      lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()),
      with_kwargs=True)
  try:
    _codes(model, proc, texts, **kwargs)
  finally:
    hook.remove()
  return seen[0]


def test_musicgen_cfg_unconditional_branch_untouched(musicgen):
  model, proc = musicgen
  base = _decoder_states(model, proc, PROMPTS, **GREEDY)
  with steering.steer(model, _directions(), [4.0, -4.0]) as hook:
    steered = _decoder_states(model, proc, PROMPTS, **GREEDY)
  assert hook.batch_sizes == [2]  # the encoder runs on conditional rows only
  assert base.shape[0] == 4  # [conditional rows; unconditional rows]
  assert torch.equal(steered[2:], base[2:])
  assert not torch.equal(steered[0], base[0])
  assert not torch.equal(steered[1], base[1])


def test_musicgen_num_return_sequences_row_mapping(musicgen):
  model, proc = musicgen
  kwargs = dict(do_sample=True, guidance_scale=3.0, max_new_tokens=4,
                num_return_sequences=2)
  base = _decoder_states(model, proc, PROMPTS, **kwargs)
  with steering.steer(model, _directions(), [0.0, 4.0]):
    steered = _decoder_states(model, proc, PROMPTS, **kwargs)
  # HF expands after the encoder: [c0, c0, c1, c1, u0, u0, u1, u1].
  assert steered.shape[0] == 8
  assert torch.equal(steered[:2], base[:2])  # strength 0 rows
  assert not torch.equal(steered[2], base[2])
  assert torch.equal(steered[2], steered[3])
  assert torch.equal(steered[4:], base[4:])


def test_musicgen_batched_strengths_equal_separate_calls(musicgen):
  model, proc = musicgen
  dirs = _directions()
  strengths = [0.0, 3.0, -3.0, 6.0]
  with steering.steer(model, dirs, strengths):
    batched = _codes(model, proc, PROMPTS[:1] * 4, **GREEDY)
  for row, s in enumerate(strengths):
    with steering.steer(model, dirs, s):
      alone = _codes(model, proc, PROMPTS[:1], **GREEDY)
    assert torch.equal(batched[row], alone[0]), f"strength {s}"


def test_generate_helper_on_backend(musicgen):
  backend = TransformersBackend.__new__(TransformersBackend)
  backend.model, backend.processor = musicgen
  backend.device = "cpu"
  settings = Settings(duration=0.2, sampling=False)
  audio = generate(backend, PROMPTS, _directions(), [0.0, 2.0], settings)
  frames = round(0.2 * backend.frame_rate)
  assert audio.shape == (2, 1, frames * 160)
  assert np.isfinite(audio).all()
