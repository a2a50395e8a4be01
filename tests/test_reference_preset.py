"""The `reference` preset against the torch re-implementation of the reference
system (benchmarks/reference_torch.py), step for step on a tiny case: the
same starting weights and batches must give the same weights, dead counters
and resampling (issue 12). torch is imported here only, never by emosae_jax.
"""

import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from configs.sae import get_config
from emosae_jax import train_core as core

torch = pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_reference  # noqa: E402
import bench_reference_branch  # noqa: E402
import reference_torch  # noqa: E402

D, M, BATCH = 8, 32, 4


def _pair(x, **torch_options):
  """A preset state and a ReferenceSAE holding the same weights."""
  config = get_config("reference")
  config.model.d_in, config.model.d_sae = D, M
  config.train.batch_size = BATCH
  spec = core.static_spec_from_config(config, len(x))
  state = core.init_state(spec, jax.random.PRNGKey(0))
  sae = reference_torch.ReferenceSAE(torch.as_tensor(x), M, **torch_options)
  p = jax.device_get(state.params)
  with torch.no_grad():
    sae.w_enc.copy_(torch.tensor(np.array(p["W_enc"]).T))
    sae.w_dec.copy_(torch.tensor(np.array(p["W_dec"]).T))
  return config, spec, state, sae


def _assert_same(state, sae):
  p = jax.device_get(state.params)
  np.testing.assert_allclose(p["W_enc"], sae.w_enc.detach().numpy().T,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(p["W_dec"], sae.w_dec.detach().numpy().T,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(p["b_enc"], sae.b_enc.detach().numpy(),
                             rtol=1e-4, atol=1e-6)
  # the decoder's own learned bias, beside the fixed pre-bias
  np.testing.assert_allclose(p["b_out"], sae.b_out.detach().numpy(),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.steps_since_fired),
                                sae.since.numpy())


def _data(seed=0, n=12):
  x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
  return x - x.mean(0)  # centred: the preset's units, the reference's bias


def test_init_is_the_references():
  """Kaiming-uniform x 0.1 encoder; orthogonal decoder whose weights over
  the latents are unit norm for each input dimension (torch's dim=1)."""
  _, spec, state, _ = _pair(_data())
  w_enc = np.asarray(state.params["W_enc"])
  w_dec = np.asarray(state.params["W_dec"])
  assert np.abs(w_enc).max() <= 0.1 * np.sqrt(6 / D)
  assert np.abs(w_enc).max() > 0.08 * np.sqrt(6 / D)
  np.testing.assert_allclose(w_dec.T @ w_dec, np.eye(D), atol=1e-5)


def test_training_steps_match_torch():
  """MSE + 3e-3 x mean |h| over batch and latents, Adam 1e-3, the decoder
  renormalised per input dimension, its learned output bias and the dead
  counters, for 5 steps."""
  x = _data()
  _, spec, state, sae = _pair(x)
  hp = core.hparams_from_config(get_config("reference"))
  step = jax.jit(lambda s, xb: core.train_step(spec, hp, s, xb))
  for i in range(5):
    xb = x[(np.arange(BATCH) + 3 * i) % len(x)]
    state, _ = step(state, xb)
    sae.step(torch.as_tensor(xb))
  _assert_same(state, sae)


def test_resampling_matches_torch():
  """Latents unfired for more than 100 steps: encoder x 0.1, decoder
  direction unit norm, counter 0; one at exactly 100 is left alone."""
  x = _data()
  _, spec, state, sae = _pair(x)
  since = np.zeros(M, np.int32)
  since[:10] = 150
  since[10:13] = 100
  since[13:16] = 101
  state = state.replace(steps_since_fired=jax.numpy.asarray(since))
  sae.since = torch.as_tensor(since.astype(np.int64))
  state = core._resample(spec, x, state)
  assert sae.resample() == 13
  _assert_same(state, sae)
  assert np.all(np.asarray(state.steps_since_fired)[10:13] == 100)


def test_epoch_keeps_the_short_last_batch():
  """10 rows at batch 4: steps of 4, 4 and 2 rows (the reference's
  DataLoader), the same as three torch steps on those rows."""
  x = _data(n=10)
  _, spec, state, sae = _pair(x)
  assert spec.steps_per_epoch == 3
  perm = np.asarray(jax.random.permutation(
      jax.random.fold_in(state.rng, 0), len(x)))
  hp = core.hparams_from_config(get_config("reference"))
  state, _ = core.compiled_train_epochs(spec, 1)(state, hp, x, x, 0)
  for rows in (perm[:4], perm[4:8], perm[8:]):
    sae.step(torch.as_tensor(x[rows]))
  assert int(state.step) == 3
  _assert_same(state, sae)


def test_torch_runs_on_the_presets_streams():
  """bench_reference.py --torch_streams=preset: torch given the preset's
  starting weights and row orders follows the preset over 3 epochs (9
  steps, short batches included), so a paired run differs in arithmetic
  only."""
  x = _data(n=10)
  config = bench_reference.preset_config(D, seed=3, epochs=3)
  config.model.d_sae, config.train.batch_size = M, BATCH
  spec = core.static_spec_from_config(config, len(x))
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(3))
  state, _ = core.compiled_train_epochs(spec, 3)(state, hp, x, x, 0)
  init, orders = bench_reference.preset_streams(config, len(x))
  r = reference_torch.train_reference(x, x, x, d_sae=M, epochs=3,
                                      batch=BATCH, init=init, orders=orders)
  assert r["steps"] == int(state.step) == 9
  _assert_same(state, r["model"])


def test_torch_continues_from_a_preset_state():
  """bench_reference_branch.py: torch given a trained preset state (Adam's
  moments and count, dead counters) takes the same next epoch as the
  preset. A dropped moment, a transposed layout or a restarted count (bias
  correction) would each show."""
  x = _data(n=10)
  config = bench_reference.preset_config(D, seed=4, epochs=3)
  config.model.d_sae, config.train.batch_size = M, BATCH
  spec = core.static_spec_from_config(config, len(x))
  hp = core.hparams_from_config(config)
  run = core.compiled_train_epochs(spec, 1)
  state = core.init_state(spec, jax.random.PRNGKey(4))
  for epoch in range(2):
    state, _ = run(state, hp, x, x, epoch)
  sae = bench_reference_branch.torch_from_state(state, x)
  _, orders = bench_reference.preset_streams(config, len(x))
  state, _ = run(state, hp, x, x, 2)
  (epoch, sae), = bench_reference_branch.torch_epochs(
      sae, x, orders, 2, 3, step=6, batch=BATCH)
  assert epoch == 3 and int(state.step) == 9
  _assert_same(state, sae)
