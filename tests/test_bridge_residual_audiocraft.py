"""Residual-stream extraction and steering on a tiny random audiocraft
MusicGen (its LMModel transformer), both CFG layouts.

Needs audiocraft (scripts/install_audiocraft.sh): tested for real, never
skipped.
"""

import contextlib
import json
import os
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from bridge import audiocraft_batching, residual, residual_steering, tiny
from bridge.directions import load_directions
from bridge.generate import AudiocraftBackend, Settings, generate
from emosae_jax import data
from emosae_jax import directions_format as fmt
from residual_helpers import assert_site_refused
from conftest import last_line, run_script

PROMPTS = ["a piano piece", "a slow violin melody with soft strings",
           "happy upbeat rock"]
WIDTH = 32  # tiny.tiny_audiocraft_config's LM dim

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def backend():
  be = AudiocraftBackend.__new__(AudiocraftBackend)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # xformers' "built for another torch"
    be.model = tiny.tiny_audiocraft_musicgen(seed=0)
  be.model_id, be.device = "tiny", "cpu"
  return be


def _generate_lm(model, texts, steps=4, two_step=False, sampling=False):
  """audiocraft's own LM.generate (what MusicGen.generate runs), seeded."""
  attributes, _ = model._prepare_tokens_and_attributes(list(texts), None)
  torch.manual_seed(0)
  with torch.no_grad():
    return model.lm.generate(None, attributes, max_gen_len=steps,
                             use_sampling=sampling, top_k=16, cfg_coef=3.0,
                             two_step_cfg=two_step)


def _record(lm):
  """Plain torch hooks (not the adapter's): every LM call's sequence and
  condition tensors, and every condition-provider output."""
  calls, provided = [], []
  handles = [
      lm.register_forward_pre_hook(lambda m, a, k: calls.append(
          (a[0].clone(), k["condition_tensors"])), with_kwargs=True),
      lm.condition_provider.register_forward_hook(
          lambda m, a, out: provided.append(out))]
  return calls, provided, handles


def _layer_by_hand(lm, sequence, tensors, layer):
  """Layer `layer`'s output over a whole sequence [B, K, S], computed by a
  plain (non-streaming, causal) forward of the first layer + 1 blocks."""
  x = sum(lm.emb[k](sequence[:, k]) for k in range(lm.num_codebooks))
  x, cross = lm.fuser(x, tensors)
  blocks = lm.transformer.layers
  lm.transformer.layers = nn.ModuleList(blocks[:layer + 1])
  try:
    with torch.no_grad():
      return lm.transformer(x, cross_attention_src=cross)
  finally:
    lm.transformer.layers = blocks


@pytest.mark.parametrize("two_step", [False, True])
def test_captured_states_equal_a_manual_forward(backend, two_step):
  model, lm, b = backend.model, backend.model.lm, 2
  calls, provided, handles = _record(lm)
  try:
    with residual.capture(model, [0, 1], keep_frames=True) as caps:
      _generate_lm(model, PROMPTS[:b], steps=3, two_step=two_step)
  finally:
    for h in handles:
      h.remove()
  # 3 frames + 3 delay steps = 6 positions, each fed once per branch.
  assert caps[0].frames == caps[1].frames == 6
  cond_tensors = provided[0]
  if two_step:  # [cond call, null call] per step, B rows each
    assert len(calls) == 12 and len(provided) == 2
    assert all(t is provided[0] for _, t in calls[::2])
    fed = torch.cat([seq for seq, _ in calls[::2]], dim=-1)
  else:  # one call per step: [cond B; null B] rows
    assert len(calls) == 6 and calls[0][0].shape[0] == 2 * b
    fed = torch.cat([seq[:b] for seq, _ in calls], dim=-1)
    cond_tensors = {k: (v[0][:b], v[1][:b]) for k, v in cond_tensors.items()}
  assert fed.shape == (b, tiny.TINY_N_Q, 6)
  for layer in (0, 1):
    states = caps[layer].states()
    assert states.shape == (b, 6, WIDTH)
    ref = _layer_by_hand(lm, fed, cond_tensors, layer)
    torch.testing.assert_close(states, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(caps[layer].mean(), states.mean(1))
  null_tensors = {k: (torch.zeros_like(v[0][:b]), torch.zeros_like(v[1][:b]))
                  for k, v in cond_tensors.items()}
  # Not the unconditional branch (it sees the null condition).
  assert not torch.allclose(_layer_by_hand(lm, fed, null_tensors, 0),
                            caps[0].states(), atol=1e-3)


def _layer_outputs(backend, layer, strengths, from_step=0, two_step=False,
                   texts=PROMPTS[:2]):
  """(before, after): layer `layer`'s output at every call, before and
  after the steering hook, in one steered generate call."""
  before, after = [], []
  block = residual_steering.decoder_layers(backend.model)[layer]
  h1 = block.register_forward_hook(lambda m, a, o: before.append(o.clone()))
  try:
    with residual_steering.steer(backend.model, tiny.random_directions(
        WIDTH, 1), strengths, layer, from_step=from_step):
      h2 = block.register_forward_hook(lambda m, a, o: after.append(o))
      try:
        _generate_lm(backend.model, texts, steps=3, two_step=two_step)
      finally:
        h2.remove()
  finally:
    h1.remove()
  return before, after


def test_hook_leaves_the_unconditional_half_untouched(backend):
  before, after = _layer_outputs(backend, 1, [3.0, -2.0])
  assert len(after) == 6
  for b, a in zip(before, after):
    assert a.shape[0] == 4  # [cond 2; null 2]
    assert torch.equal(a[2:], b[2:])
    assert not torch.equal(a[:2], b[:2])
  unit = tiny.random_directions(WIDTH, 1).steering_vectors()[0].double()
  delta = (after[0] - before[0]).double()
  torch.testing.assert_close(delta[0, 0], 3.0 * unit, rtol=1e-5, atol=1e-5)
  torch.testing.assert_close(delta[1, 0], -2.0 * unit, rtol=1e-5, atol=1e-5)


def test_two_step_cfg_null_calls_untouched(backend):
  before, after = _layer_outputs(backend, 1, [3.0, -2.0], two_step=True)
  assert len(after) == 12  # cond, null per step
  for i, (b, a) in enumerate(zip(before, after)):
    assert a.shape[0] == 2
    assert torch.equal(a, b) == (i % 2 == 1), i  # the null call is odd


@pytest.mark.parametrize("two_step", [False, True])
def test_from_step_gates_positions(backend, two_step):
  before, after = _layer_outputs(backend, 0, 5.0, from_step=3,
                                 two_step=two_step, texts=PROMPTS[:1])
  per_step = 2 if two_step else 1
  for i, (b, a) in enumerate(zip(before, after)):
    position, null = divmod(i, per_step)
    cond = a[:1]  # the one prompt's conditional row (or the whole cond call)
    assert torch.equal(cond, b[:1]) == (position < 3 or bool(null)), i


def test_strength_zero_is_bit_exact_and_hooks_go(backend):
  settings = Settings(duration=0.1, sampling=True, top_k=16, seed=3)
  base = generate(backend, PROMPTS[:2], settings=settings)
  site = fmt.decoder_layer(0)
  dirs = tiny.random_directions(WIDTH, 1)
  same = generate(backend, PROMPTS[:2], dirs, 0.0, settings, site)
  assert np.array_equal(base, same)
  moved = generate(backend, PROMPTS[:2], dirs, [0.0, 30.0], settings, site)
  assert np.array_equal(moved[0], base[0])  # row 0 at strength 0
  assert not np.array_equal(moved[1], base[1])
  assert residual_steering.active_hooks(backend.model) == 0


_PER = dict(feature_ids=[7], emotions=["happy"], selectivity=[2.0],
            p_values=[0.01], typical_activation=[1.0])


def test_exported_layer_steers_there_and_wrong_sites_are_refused(
    backend, tmp_path):
  vectors = np.random.default_rng(0).normal(size=(1, WIDTH))
  fmt.write(tmp_path / "l1", vectors, dict(_PER, site=fmt.decoder_layer(1)))
  settings = Settings(duration=0.1, sampling=False)
  with mock.patch.object(residual_steering, "steer",
                         wraps=residual_steering.steer) as spy:
    steered = generate(backend, PROMPTS[:1], load_directions(tmp_path / "l1"),
                       40.0, settings)
  assert spy.call_args.args[3] == 1  # the layer the export names
  assert not np.array_equal(steered,
                            generate(backend, PROMPTS[:1], settings=settings))
  assert_site_refused(backend, vectors, _PER, settings, tmp_path,
                      PROMPTS[:1])


def _extract(loaded, out, texts=PROMPTS, **kw):
  kw = dict(dict(model="tiny", loaded_backend=loaded, batch_size=2,
                 max_new_tokens=6, progress=False), **kw)
  labels = [i % 2 for i in range(len(texts))]
  return residual.extract(out, texts, labels, ["happy", "sad"], **kw)


def test_extraction_writes_a_set_per_layer(backend, tmp_path):
  paths, reused = _extract(backend, tmp_path / "a")
  assert not reused and [p.name for p in paths] == ["layer_00", "layer_01"]
  es = data.load_embedding_set(paths[1])
  assert es.embeddings.shape == (3, WIDTH) and np.isfinite(
      es.embeddings).all()
  assert es.meta["backend"] == "audiocraft" and es.meta["layers"] == [0, 1]
  assert es.meta["frames"] == 6 and es.meta["pooling"] == "mean"
  assert es.meta["site"] == fmt.decoder_layer(1)
  # The first batch by hand: the mean of its captured layer-1 states.
  rows = residual.batch_plan(backend, PROMPTS, 2)[0]
  with residual.capture(backend.model, [1]) as caps:
    torch.manual_seed(0)  # extract seeds batch b with seed + b
    residual._run_audiocraft(backend, [PROMPTS[i] for i in rows],
                             residual.generate_kwargs(6, 3.0, True, 250))
  np.testing.assert_allclose(es.embeddings[rows], caps[1].mean().numpy(),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="at least 4"):
    _extract(backend, tmp_path / "b", max_new_tokens=3)
  with pytest.raises(ValueError, match="loaded model is audiocraft's"):
    _extract(backend, tmp_path / "c", backend="transformers")


@pytest.fixture(scope="module")
def musicgen_layout():
  """musicgen's LM layout: memory-efficient attention, no biases."""
  be = AudiocraftBackend.__new__(AudiocraftBackend)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    be.model = tiny.tiny_audiocraft_musicgen(
        seed=0, lm_overrides=tiny.MUSICGEN_LM_LAYOUT)
  be.model_id, be.device = "tiny-musicgen-layout", "cpu"
  return be


@pytest.mark.parametrize("layout", ["default", "musicgen"])
def test_batched_extraction_equals_one_by_one(backend, musicgen_layout,
                                              layout, tmp_path):
  """Batches mix T5 token counts: audiocraft's cross-attention sees the
  padding, so only the mask (bridge.audiocraft_batching) keeps a short
  prompt beside a long one where it is alone; the reference is
  audiocraft's unpatched computation, one prompt per call."""
  be = backend if layout == "default" else musicgen_layout
  texts = ["a happy song", "a piano piece with soft strings", "a sad song",
           "calm"]
  counts = residual.token_counts(be, texts)
  plan = residual.batch_plan(be, texts, 2)
  assert [counts[i] for rows in plan for i in rows] == sorted(counts)
  assert all(len({counts[i] for i in rows}) == 2 for rows in plan)
  batched, _ = _extract(be, tmp_path / "b", texts, sampling=False)
  # The reference: audiocraft's own computation, one prompt per call.
  kwargs = residual.generate_kwargs(6, 3.0, False, 250)
  rows = [texts[i] for i in plan[0]]
  with mock.patch.object(audiocraft_batching, "batched",
                         lambda lm: contextlib.nullcontext()):
    alone = np.concatenate([residual.pooled_batch(be, [t], [0, 1], kwargs,
                                                  0)[0] for t in texts])
    unmasked, _ = residual.pooled_batch(be, rows, [1], kwargs, 0)
  for layer, path in enumerate(batched):
    np.testing.assert_allclose(data.load_embedding_set(path).embeddings,
                               alone[:, layer], rtol=1e-5, atol=1e-5)
  # Without the mask the shorter prompt of a batch moves.
  masked, _ = residual.pooled_batch(be, rows, [1], kwargs, 0)
  assert np.abs(unmasked[0] - masked[0]).max() > 0.05
  np.testing.assert_allclose(unmasked[1], masked[1], rtol=1e-5, atol=1e-5)


def test_one_prompt_is_unchanged_and_t5_skips_null_rows(musicgen_layout):
  """One prompt (no padding): the library's own attention, bit for bit,
  and T5 runs on the prompt's row only (not CFG's empty null row); the
  hooks and patched forwards go afterwards."""
  kwargs = residual.generate_kwargs(5, 3.0, False, 250)
  lm = musicgen_layout.model.lm
  t5 = lm.condition_provider.conditioners["description"].t5
  rows = []
  handle = t5.register_forward_pre_hook(
      lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
  try:
    with mock.patch.object(audiocraft_batching, "batched",
                           lambda lm: contextlib.nullcontext()):
      plain, _ = residual.pooled_batch(musicgen_layout, PROMPTS[:1], [0, 1],
                                       kwargs, 0)
    masked, _ = residual.pooled_batch(musicgen_layout, PROMPTS[:1], [0, 1],
                                      kwargs, 0)
  finally:
    handle.remove()
  assert rows == [2, 1]  # [prompt; null] without, the prompt alone with
  assert np.array_equal(plain, masked)
  assert not lm._forward_pre_hooks  # pylint: disable=protected-access
  assert all("forward" not in vars(layer.cross_attention)
             for layer in lm.transformer.layers)
  assert "forward" not in vars(lm.condition_provider.conditioners[
      "description"])


# --- the scripts, on a tiny audiocraft folder (T5 in a temporary hub cache) --


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  root = tmp_path_factory.mktemp("residual_audiocraft")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tiny.save_tiny_audiocraft_musicgen(root / "musicgen", root / "hf" / "hub")
  (root / "neutral.txt").write_text("a piano piece\n")
  (root / "prompts.jsonl").write_text(
      '{"text": "a happy piano piece", "emotion": "happy"}\n'
      '{"text": "a sad violin", "emotion": "sad"}\n')
  vectors = np.random.default_rng(0).normal(size=(1, WIDTH))
  for layer in (1, 9):
    fmt.write(root / f"layer{layer}", vectors,
              dict(_PER, site=fmt.decoder_layer(layer)))
  return root


def _script(work, name, *args):
  env = dict(HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
  with mock.patch.dict(os.environ, env):
    return run_script(name, *args)


def test_steer_script_steers_a_decoder_layer_and_refuses_a_missing_one(work):
  common = [f"--model={work / 'musicgen'}", "--backend=audiocraft",
            "--strengths=0,2", "--duration=0.1", "--greedy",
            f"--prompts={work / 'neutral.txt'}", "--noprompt_edit",
            "--device=cpu"]
  ok = _script(work, "steer.py", f"--directions={work / 'layer1'}",
               f"--out={work / 'steer1'}", *common)
  assert ok.returncode == 0, ok.stderr[-2000:]
  run = json.loads((work / "steer1" / "steering.json").read_text())
  assert run["directions"]["site"] == fmt.decoder_layer(1)
  assert run["settings"]["backend"] == "audiocraft"
  bad = _script(work, "steer.py", f"--directions={work / 'layer9'}",
                f"--out={work / 'steer9'}", *common)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert "decoder layer 9" in last_line(bad.stderr)
  assert "2 decoder layers" in last_line(bad.stderr)


def test_extract_script_audiocraft_backend(work):
  out = work / "res"
  args = [f"--prompts={work / 'prompts.jsonl'}", f"--model={work / 'musicgen'}",
          "--backend=audiocraft", "--layers=1", "--max_new_tokens=5"]
  run = _script(work, "extract_residual.py", *args, f"--out={out}")
  assert run.returncode == 0, run.stderr[-2000:]
  es = data.load_embedding_set(out / "layer_01")
  assert es.embeddings.shape == (2, WIDTH)
  assert es.meta["backend"] == "audiocraft" and es.meta["frames"] == 5
  assert es.meta["model"] == str(work / "musicgen")
  assert es.meta["encoder_revision"].startswith("local:")
