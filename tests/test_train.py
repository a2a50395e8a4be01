"""End-to-end training on planted-dictionary data (known right answers)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

from conftest import tiny_config
from emosae_jax import saes, train_run
from emosae_jax import train_core as core


def _recovery_config(arch, **overrides):
  settings = dict(data__n_examples=8192, data__n_features=256,
                  model__d_in=64, model__d_sae=512, model__k_aux=64,
                  train__epochs=30, train__epochs_per_call=10)
  return tiny_config(arch, **(settings | overrides))


@pytest.mark.parametrize("arch, overrides", [
    ("topk", {}),
    ("relu_l1", {"train__sparsity_coeff": 0.06, "train__epochs": 60}),
])
def test_recovers_planted_dictionary(tmp_path, arch, overrides):
  summary = train_run.train_and_evaluate(
      _recovery_config(arch, **overrides), tmp_path, progress=False)
  assert summary["recovery"]["true_to_learned"] >= 0.9, summary
  assert summary["heldout_fvu"] < 0.5


def test_resumed_run_equals_uninterrupted_and_is_deterministic(tmp_path):
  # The interruption is a 5-epoch run resumed to 10 epochs: the same as 10
  # uninterrupted only under a constant lr (relu_l1's default decay follows
  # the planned length, so the 5-epoch run decays over its epoch 5).
  config = tiny_config("relu_l1", train__resample_every=20,
                       train__dead_window=10, train__lr_decay_fraction=0.0)
  train_run.train_and_evaluate(config, tmp_path / "a", progress=False)
  train_run.train_and_evaluate(config, tmp_path / "b", progress=False)
  half = tiny_config("relu_l1", train__resample_every=20,
                     train__dead_window=10, train__epochs=5,
                     train__lr_decay_fraction=0.0)
  train_run.train_and_evaluate(half, tmp_path / "c", progress=False)
  train_run.train_and_evaluate(config, tmp_path / "c", progress=False)
  a, b, c = (load_file(str(tmp_path / r / "params.safetensors"))
             for r in "abc")
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_allclose(a[name], c[name], rtol=1e-6, atol=1e-6)
  epochs = [r["epoch"] for r in train_run.read_metrics(tmp_path / "c" /
                                                     "metrics.jsonl")]
  assert epochs == list(range(1, 11))


def test_workdir_of_other_run_is_refused(tmp_path):
  train_run.train_and_evaluate(tiny_config(train__epochs=5), tmp_path,
                             progress=False)
  with pytest.raises(ValueError, match="different run"):
    train_run.train_and_evaluate(tiny_config(train__lr=1e-2), tmp_path,
                               progress=False)


def test_nan_loss_stops_with_clear_error(tmp_path):
  config = tiny_config("relu_l1", train__lr=1e30, train__max_grad_norm=0.0,
                       train__warmup_steps=0)
  with pytest.raises(core.TrainingError, match="NaN"):
    train_run.train_and_evaluate(config, tmp_path, progress=False)
  assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_other_architectures_train(tmp_path, arch):
  overrides = dict(train__epochs=5)
  if arch == "jumprelu":
    overrides.update(model__bandwidth=0.1, model__threshold_init=0.2,
                     train__sparsity_coeff=3e-2)
  summary = train_run.train_and_evaluate(tiny_config(arch, **overrides),
                                       tmp_path, progress=False)
  assert np.isfinite(summary["heldout_fvu"]) and summary["heldout_fvu"] < 1.0
  params = load_file(str(tmp_path / "params.safetensors"))
  if arch == "batchtopk":
    assert params["threshold"] > 0  # inference threshold was learned
    assert 1 <= summary["heldout_l0"] <= 3 * 4
  else:
    assert not np.allclose(params["log_threshold"], np.log(0.2))


def test_jumprelu_threshold_gets_gradient_through_ste():
  spec = saes.SAESpec("jumprelu", 4, 8, bandwidth=0.5, threshold_init=0.3)
  params = saes.init_params(spec, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (64, 4))
  arch = saes.get_arch("jumprelu")

  def l0(p):
    x_hat, acts, pre = saes.forward(spec, p, x, True)
    return arch.loss_terms(spec, p, x, x_hat, pre, acts, None, None)[
        "sparsity"]

  grad = jax.grad(l0)(params)["log_threshold"]
  assert jnp.all(grad <= 0) and jnp.any(grad < 0)  # higher theta -> lower L0


def test_encoder_gradient_matches_autodiff_with_five_matmuls():
  """The encoder's hand-written VJP (b_dec's gradient as a matrix-vector
  product) equals autodiff of the plain formula, for every input; and a
  step's gradient costs five [batch x d_in x d_sae] matmuls, not six."""
  batch, d, m = 64, 16, 48
  keys = jax.random.split(jax.random.key(0), 5)
  params = {"W_enc": jax.random.normal(keys[0], (d, m)),
            "b_enc": jax.random.normal(keys[1], (m,)),
            "b_dec": jax.random.normal(keys[2], (d,)),
            "W_dec": jax.random.normal(keys[3], (m, d))}
  x = jax.random.normal(keys[4], (batch, d))

  def loss(pre_fn, p, x):
    acts = jax.nn.relu(pre_fn(p, x))
    return jnp.sum(jnp.square(saes.decode(p, acts) - x)) + jnp.sum(acts)

  def plain(p, x):
    return (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]

  got = jax.grad(functools.partial(loss, saes.pre_activation),
                 argnums=(0, 1))(params, x)
  want = jax.grad(functools.partial(loss, plain), argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)

  def flops(pre_fn):
    grad = jax.jit(jax.grad(functools.partial(loss, pre_fn)))
    return grad.lower(params, x).compile().cost_analysis()["flops"]

  matmul = 2 * batch * d * m
  assert flops(saes.pre_activation) < 5.5 * matmul < flops(plain)


def test_resampling_revives_dead_latents():
  config = tiny_config("relu_l1", train__resample_every=5,
                       train__dead_window=5)
  spec = core.static_spec_from_config(config, 1024)
  state = core.init_state(spec, jax.random.PRNGKey(0))
  # Kill half the latents: a large negative bias means they never fire.
  b_enc = state.params["b_enc"].at[::2].set(-1e3)
  state = state.replace(params=dict(state.params, b_enc=b_enc))
  x = jax.random.normal(jax.random.key(2), (1024, 32)) * 2
  hp = core.hparams_from_config(config)
  state, _ = core.compiled_train_epochs(spec, 2)(state, hp, x, x, 0)
  assert float(jnp.mean(state.params["b_enc"][::2] < -100)) == 0.0



def test_chunks_reuse_one_compiled_program():
  """Later chunks (another first_epoch) must not retrace the epoch runner."""
  config = tiny_config(train__epochs=6)
  spec = core.static_spec_from_config(config, 512)
  hp = core.hparams_from_config(config)
  run = core.compiled_train_epochs(spec, 1)
  x = jax.random.normal(jax.random.key(3), (512, 32))
  state = core.init_state(spec, jax.random.PRNGKey(0))
  for first_epoch in range(3):
    state, _ = run(state, hp, x, x, first_epoch)
  assert run._cache_size() == 1  # pylint: disable=protected-access


def test_lr_schedule_warms_up_holds_then_decays_to_zero():
  """lr_at: linear warm-up over 10 steps, constant, then linear decay to 0
  over the last 20% of 100 planned steps (the values worked out by hand)."""
  config = tiny_config("topk", train__lr=1e-3, train__warmup_steps=10,
                       train__lr_decay_fraction=0.2, train__epochs=100)
  spec = core.static_spec_from_config(config, config.train.batch_size)
  assert spec.total_steps == 100
  hp = core.hparams_from_config(config)
  got = [float(core.lr_at(spec, hp, jnp.float32(s)))
         for s in (0, 4, 9, 50, 80, 90, 99, 100, 120)]
  want = [1e-4, 5e-4, 1e-3, 1e-3, 1e-3, 5e-4, 5e-5, 0.0, 0.0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
  hp["lr_decay_fraction"] = jnp.float32(0.0)  # off: constant after warm-up
  assert float(core.lr_at(spec, hp, jnp.float32(99))) == pytest.approx(1e-3)


def test_grad_clip_is_in_summed_loss_units():
  """max_grad_norm is in units of the loss summed over input dimensions
  (SAELens's): Adam's updates on our mean loss's gradients g_t equal those of
  plain optax clip(max_grad_norm) + Adam on d_in x g_t (Adam's eps, 1e-8 on
  our loss, is d_in x that on the summed one). Gradient sizes vary, so a
  clip in other units would weight the steps differently."""
  config = tiny_config("relu_l1", train__max_grad_norm=1.0)
  spec = core.static_spec_from_config(config, 256)
  d_in = config.model.d_in
  summed = optax.chain(optax.clip_by_global_norm(1.0),
                       optax.scale_by_adam(eps=1e-8 * d_in))
  ours = core._optimizer(spec)
  zeros = {"w": jnp.zeros((7, 5))}
  want_state, got_state = summed.init(zeros), ours.init(zeros)
  for t, size in enumerate((1e-1, 1e-4, 3e-2, 1e-6, 1e-3)):
    grads = {"w": size * jax.random.normal(jax.random.PRNGKey(t), (7, 5))}
    want, want_state = summed.update(
        jax.tree.map(lambda g: d_in * g, grads), want_state)
    got, got_state = ours.update(grads, got_state)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-4, atol=1e-9)
