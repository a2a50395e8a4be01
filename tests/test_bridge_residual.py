"""Residual-stream extraction and steering on a tiny random MusicGen."""

from unittest import mock

import numpy as np
import pytest
import torch

from bridge import residual, residual_steering, tiny
from bridge.generate import Settings, TransformersBackend, generate
from emosae_jax import data
from emosae_jax import directions_format as fmt
from residual_helpers import assert_site_refused

PROMPTS = ["a piano piece", "a slow violin melody with soft strings",
           "happy upbeat rock", "dark ambient synth", "calm folk guitar"]
LABELS, NAMES = [0, 1, 0, 1, 0], ["happy", "sad"]
GREEDY = dict(max_new_tokens=6, do_sample=False, guidance_scale=3.0)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def backend():
  be = TransformersBackend.__new__(TransformersBackend)
  be.model, be.processor = tiny.tiny_musicgen(d_model=32)
  be.device, be.model_id = "cpu", "tiny"
  return be


def _inputs(backend, texts):
  return backend.processor(text=list(texts), padding=True,
                           return_tensors="pt")


def _directions(d_model=32, n=1, seed=0):
  return tiny.random_directions(d_model, n, seed)


def test_captured_states_equal_a_manual_forward(backend):
  """Each kept position, cond rows only, is the full forward's hidden state
  (output_hidden_states) at that layer on the ids generate fed the decoder."""
  model = backend.model
  inputs = _inputs(backend, PROMPTS[:2])
  assert (inputs["attention_mask"] == 0).any()  # padding is exercised
  fed = []
  pre = model.decoder.register_forward_pre_hook(
      lambda m, a, k: fed.append(k["input_ids"]), with_kwargs=True)
  try:
    with residual.capture(model, [0, 1], keep_frames=True) as caps, \
        torch.no_grad():
      torch.manual_seed(0)
      model.generate(**inputs, max_new_tokens=6, do_sample=True,
                     guidance_scale=3.0)
  finally:
    pre.remove()
  # transformers 5.24 runs the start token twice (its prefill's cache is
  # dropped): 7 calls for 6 positions; the capture counts it once.
  assert len(fed) == 7 and torch.equal(fed[0], fed[1])
  ids = torch.cat(fed[1:], dim=1)  # [2B * K, T]: [cond; uncond] rows
  assert ids.shape == (2 * 2 * tiny.TINY_N_Q, 6)
  with torch.no_grad():
    enc = model.text_encoder(**inputs).last_hidden_state
    enc = torch.cat([enc, torch.zeros_like(enc)])
    mask = torch.cat([inputs["attention_mask"],
                      torch.zeros_like(inputs["attention_mask"])])
    ref = model.decoder(input_ids=ids, encoder_hidden_states=enc,
                        encoder_attention_mask=mask,
                        output_hidden_states=True).hidden_states
  layer0, layer1 = caps[0].states(), caps[1].states()
  assert layer0.shape == (2, 6, 32) and caps[0].frames == 6
  torch.testing.assert_close(layer0, ref[1][:2], rtol=1e-4, atol=1e-5)
  # transformers ties the last hidden state to the final layer norm's output.
  final_norm = model.decoder.model.decoder.layer_norm
  with torch.no_grad():
    torch.testing.assert_close(final_norm(layer1), ref[2][:2], rtol=1e-4,
                               atol=1e-5)
  torch.testing.assert_close(caps[1].mean(), layer1.mean(1), rtol=1e-5,
                             atol=1e-6)
  # Not the unconditional rows: they see zero text states.
  assert not torch.allclose(layer0, ref[1][2:], atol=1e-3)


def test_hook_leaves_unconditional_rows_untouched(backend):
  model = backend.model
  before, after = [], []
  block = residual_steering.decoder_layers(model)[1]
  h1 = block.register_forward_hook(lambda m, a, o: before.append(o.clone()))
  try:
    with residual_steering.steer(model, _directions(), [3.0, -2.0], 1):
      h2 = block.register_forward_hook(lambda m, a, o: after.append(o))
      with torch.no_grad():
        model.generate(**_inputs(backend, PROMPTS[:2]), **GREEDY)
      h2.remove()
  finally:
    h1.remove()
  assert len(before) == len(after) == 7
  for b, a in zip(before, after):
    assert a.shape[0] == 4  # [cond 2; uncond 2]
    assert torch.equal(a[2:], b[2:])
    assert not torch.equal(a[:2], b[:2])
  unit = (_directions().steering_vectors()[0]).double()
  delta = (after[0][0] - before[0][0]).double()
  torch.testing.assert_close(delta[0], 3.0 * unit, rtol=1e-5, atol=1e-5)


def test_strength_zero_is_bit_exact_and_hooks_go(backend):
  settings = Settings(duration=0.1, sampling=True, seed=3)
  base = generate(backend, PROMPTS[:2], settings=settings)
  site = fmt.decoder_layer(0)
  same = generate(backend, PROMPTS[:2], _directions(), 0.0, settings, site)
  assert np.array_equal(base, same)
  moved = generate(backend, PROMPTS[:2], _directions(), [0.0, 30.0],
                   settings, site)
  assert np.array_equal(moved[0], base[0])  # row 0 at strength 0
  assert not np.array_equal(moved[1], base[1])
  assert residual_steering.active_hooks(backend.model) == 0


def test_from_step_gates_positions(backend):
  model = backend.model
  after = []
  block = residual_steering.decoder_layers(model)[0]
  with torch.no_grad():
    base = []
    h = block.register_forward_hook(lambda m, a, o: base.append(o.clone()))
    model.generate(**_inputs(backend, PROMPTS[:1]), **GREEDY)
    h.remove()
    with residual_steering.steer(model, _directions(), 5.0, 0, from_step=3):
      h = block.register_forward_hook(lambda m, a, o: after.append(o))
      model.generate(**_inputs(backend, PROMPTS[:1]), **GREEDY)
      h.remove()
  positions = [0, 0, 1, 2, 3, 4, 5]  # the start token runs twice
  assert len(after) == len(positions)
  for position, b, a in zip(positions, base, after):
    assert torch.equal(a, b) == (position < 3), position


def test_exported_layer_steers_there_and_wrong_sites_are_refused(
    backend, tmp_path):
  vectors = np.random.default_rng(0).normal(size=(1, 32)).astype(np.float32)
  per = dict(feature_ids=[7], emotions=["happy"], selectivity=[2.0],
             p_values=[0.01], typical_activation=[1.0])
  from bridge.directions import load_directions
  fmt.write(tmp_path / "l1", vectors, dict(per, site=fmt.decoder_layer(1)))
  dirs = load_directions(tmp_path / "l1")
  settings = Settings(duration=0.1, sampling=False)
  with mock.patch.object(residual_steering, "steer",
                         wraps=residual_steering.steer) as spy:
    steered = generate(backend, PROMPTS[:1], dirs, 40.0, settings)
  assert spy.call_args.args[3] == 1  # the layer the export names
  base = generate(backend, PROMPTS[:1], settings=settings)
  assert not np.array_equal(steered, base)
  assert_site_refused(backend, vectors, per, settings, tmp_path,
                      PROMPTS[:1])
  from emosae_jax.errors import UserError
  assert issubclass(residual_steering.SiteError, UserError)


def _extract(backend, out, **kw):
  kw = dict(dict(model="tiny", loaded_backend=backend, batch_size=2,
                 max_new_tokens=5, progress=False), **kw)
  return residual.extract(out, PROMPTS, LABELS, NAMES, ["g"] * 5, **kw)


def test_extraction_writes_a_set_per_layer_and_batches_match_one_by_one(
    backend, tmp_path):
  paths, reused = _extract(backend, tmp_path / "b", sampling=False)
  assert not reused and [p.name for p in paths] == ["layer_00", "layer_01"]
  es = data.load_embedding_set(paths[1])
  assert es.embeddings.shape == (5, 32)
  assert es.meta["site"] == fmt.decoder_layer(1) and es.meta["layer"] == 1
  assert es.meta["frames"] == 5 and es.meta["pooling"] == "mean"
  assert es.meta["model"] == "tiny"
  ones, _ = _extract(backend, tmp_path / "one", sampling=False, batch_size=1)
  np.testing.assert_allclose(
      data.load_embedding_set(ones[1]).embeddings, es.embeddings,
      rtol=1e-4, atol=1e-5)  # padding inside a batch changes nothing
  with mock.patch.object(residual, "pooled_batch") as spy:
    again, reused = _extract(backend, tmp_path / "b", sampling=False)
  assert reused and again == paths and not spy.called
  assert not (tmp_path / "b" / residual.PARTIAL_DIR).exists()


def test_killed_extraction_resumes_to_the_same_result(backend, tmp_path):
  whole, _ = _extract(backend, tmp_path / "whole", layers=[1])
  saves = []

  def dying_save(path, *args, real=residual._save_shard):
    if len(saves) == 2:
      raise KeyboardInterrupt  # killed after two batches
    saves.append(path)
    real(path, *args)

  with mock.patch.object(residual, "_save_shard", dying_save):
    with pytest.raises(KeyboardInterrupt):
      _extract(backend, tmp_path / "resumed", layers=[1])
  assert not (tmp_path / "resumed" / "layer_01").exists()
  with mock.patch.object(residual, "pooled_batch",
                         wraps=residual.pooled_batch) as spy:
    resumed, reused = _extract(backend, tmp_path / "resumed", layers=[1])
  assert not reused and spy.call_count == 1  # only the third batch
  a = data.load_embedding_set(whole[0]).embeddings
  b = data.load_embedding_set(resumed[0]).embeddings
  assert np.array_equal(a, b)


def test_bad_layers_are_refused(backend, tmp_path):
  with pytest.raises(residual_steering.SiteError, match="2-layer decoder"):
    _extract(backend, tmp_path / "x", layers=[0, 2])


def test_run_steering_records_and_checks_the_site(backend, tmp_path):
  from bridge.generate import run_steering
  vectors = np.random.default_rng(1).normal(size=(1, 32))
  per = dict(feature_ids=[3], emotions=["happy"], selectivity=[3.0],
             p_values=[0.01], typical_activation=[2.0])
  fmt.write(tmp_path / "l1", vectors, dict(per, site=fmt.decoder_layer(1)))
  run = run_steering(tmp_path / "l1", tmp_path / "out", model="tiny",
                     prompts=PROMPTS[:1], strengths=(0.0, 2.0),
                     settings=Settings(duration=0.1, sampling=False),
                     prompt_edit=False, loaded_backend=backend)
  assert run["directions"]["site"] == fmt.decoder_layer(1)
  assert len(run["clips"]) == 3  # baseline, steer, random
  fmt.write(tmp_path / "t5", vectors[:, :16], per)  # a t5_output site
  with pytest.raises(Exception, match="d_model=16"):
    run_steering(tmp_path / "t5", tmp_path / "out2", model="tiny",
                 prompts=PROMPTS[:1], loaded_backend=backend)
