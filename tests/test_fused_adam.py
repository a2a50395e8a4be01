"""The one-pass CPU Adam kernel (emosae_jax/fused_adam.py): the same
arithmetic as optax's chain, member by member, and used where it should be."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.sae import get_config
from emosae_jax import fused_adam
from emosae_jax import train_core as core
from emosae_jax import train_run

EPS = 1e-8
f32 = np.float32


def numpy_adam(p, g, m, v, count, lr, frozen, max_norm):
  """optax's clip_by_global_norm + scale_by_adam + p - lr * u, evaluated by
  numpy in float32, op by op in optax's order (the kernel's contract)."""
  count = count + 1
  if frozen:
    g = {k: np.zeros_like(x) for k, x in g.items()}
  # The global norm is a reduction outside the kernel, in XLA's summation
  # order, so it is taken from XLA.
  g_norm = f32(jax.jit(optax.tree.norm)(g))
  if max_norm > 0 and not g_norm < max_norm:
    g = {k: (x / g_norm) * f32(max_norm) for k, x in g.items()}
  bc1 = f32(1) - f32(0.9) ** f32(count)
  bc2 = f32(1) - f32(0.999) ** f32(count)
  out = {}
  for k in p:
    mk = f32(1 - 0.9) * g[k] + f32(0.9) * m[k]
    vk = f32(1 - 0.999) * (g[k] * g[k]) + f32(0.999) * v[k]
    u = (mk / bc1) / (np.sqrt(vk / bc2) + f32(EPS))
    out[k] = (p[k] - f32(lr) * u, mk, vk)
  return out


def random_tree(key, scale=1.0, positive=False):
  shapes = {"W": (48, 80), "b": (80,)}
  keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
  draw = jax.random.uniform if positive else jax.random.normal
  return {k: np.array(draw(keys[k], s) * scale, np.float32)
          for k, s in shapes.items()}


def optax_state(m, v, count, max_norm):
  adam = optax.ScaleByAdamState(count=jnp.int32(count), mu=m, nu=v)
  return (optax.EmptyState(), adam) if max_norm > 0 else (adam,)


@pytest.fixture(scope="module")
def kernel():
  if not fused_adam.available():
    pytest.skip("no C++ compiler: the kernel cannot be built here")


@pytest.mark.parametrize("max_norm,frozen", [
    (0.0, False),  # no clip
    (1e3, False),  # clip below its trigger
    (0.5, False),  # clip triggered
    (0.5, True),  # a frozen member: gradient taken as 0
])
def test_kernel_is_optax_formula_bit_for_bit(kernel, max_norm, frozen):
  keys = jax.random.split(jax.random.key(0), 4)
  p, g = random_tree(keys[0]), random_tree(keys[1])
  m, v = random_tree(keys[2], 0.1), random_tree(keys[3], 0.1, positive=True)
  if frozen:  # what a failed step hands over: a non-finite gradient
    g["W"][0, 0] = np.nan
  state = optax_state(m, v, 6, max_norm)
  lr = 0.0 if frozen else 1e-3  # train_step's lr for a frozen member
  new_p, new_state = jax.jit(
      lambda p, g, s: fused_adam.update(g, s, p, jnp.float32(lr),
                                        jnp.asarray(frozen), max_norm, EPS)
  )(p, g, state)
  want = numpy_adam(p, g, m, v, 6, lr, frozen, max_norm)
  adam = new_state[-1]
  assert int(adam.count) == 7
  for k in p:
    np.testing.assert_array_equal(new_p[k], want[k][0])
    np.testing.assert_array_equal(adam.mu[k], want[k][1])
    np.testing.assert_array_equal(adam.nu[k], want[k][2])
  if frozen:
    np.testing.assert_array_equal(new_p["W"], p["W"])


@pytest.mark.parametrize("axis", [1, 0])
def test_kernel_renormalises_rows_or_columns(kernel, axis):
  """unit_axes: after Adam's step the weight is rescaled to unit norm along
  rows (1) or columns (0), as base.unit_decoder does after optax's step."""
  keys = jax.random.split(jax.random.key(3), 4)
  p, g = random_tree(keys[0]), random_tree(keys[1])
  m, v = random_tree(keys[2], 0.1), random_tree(keys[3], 0.1, positive=True)
  new_p, _ = jax.jit(lambda p, g, s: fused_adam.update(
      g, s, p, jnp.float32(1e-3), jnp.asarray(False), 0.0, EPS,
      unit_axes={"W": axis}))(p, g, optax_state(m, v, 2, 0.0))
  stepped = numpy_adam(p, g, m, v, 2, 1e-3, False, 0.0)
  w = stepped["W"][0]
  norm = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=axis, keepdims=True))
  np.testing.assert_allclose(new_p["W"], w / norm.astype(np.float32),
                             rtol=2.5e-7)
  np.testing.assert_allclose(np.linalg.norm(new_p["W"], axis=axis), 1.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(new_p["b"], stepped["b"][0])  # not asked


@pytest.mark.parametrize("axis", [None, 0])
def test_vmapped_members_each_get_their_own_step(kernel, axis):
  """Under vmap (a sweep) each member uses its own lr, count and frozen
  flag, and (axis 0) its own column norms, exactly as when run alone."""
  n = 3
  keys = jax.random.split(jax.random.key(1), 4)
  stack = lambda t: {k: np.stack([x * (i + 1) for i in range(n)])  # noqa: E731
                     for k, x in t.items()}
  p, g = stack(random_tree(keys[0])), stack(random_tree(keys[1]))
  m = stack(random_tree(keys[2], 0.1))
  v = stack(random_tree(keys[3], 0.1, positive=True))
  counts = jnp.array([1, 5, 9], jnp.int32)
  lrs = jnp.array([1e-3, 3e-3, 1e-2], jnp.float32)
  frozen = jnp.array([False, True, False])

  def one(p, g, m, v, count, lr, frozen):
    # No clip: the global norm is XLA's reduction, whose summation order
    # under vmap is its own; the kernel's part is what is compared.
    state = (optax.ScaleByAdamState(count, m, v),)
    return fused_adam.update(g, state, p, lr, frozen, 0.0, EPS,
                             unit_axes={"W": axis})

  batched = jax.jit(jax.vmap(one))(p, g, m, v, counts, lrs, frozen)
  for i in range(n):
    take = lambda t: jax.tree.map(lambda x: x[i], t)  # noqa: E731
    alone = jax.jit(one)(*take((p, g, m, v, counts, lrs, frozen)))
    for got, want in zip(jax.tree.leaves(take(batched)),
                         jax.tree.leaves(alone)):
      np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("preset", ["reference", "arch=topk"])
def test_training_with_the_kernel_follows_optax(kernel, preset):
  """Five steps (the reference's column renormalisation and factored
  gradients; TopK's rows, with the clip): fused and optax agree to float32
  rounding (XLA's own loops differ from the formula in the last bit)."""
  config = get_config(preset)
  config.model.d_in, config.model.d_sae = 32, 128
  x = jax.random.normal(jax.random.key(2), (5, 16, 32)) * 0.1
  hp = core.hparams_from_config(config)
  finals = {}
  for choice in ("fused", "optax"):
    config.train.adam_kernel = choice
    spec = core.static_spec_from_config(config, 70)
    assert spec.fused_adam == (choice == "fused")
    # the reference's ReLU+L1 at batch 16 takes its gradients as factors
    assert spec.factored_grads == (spec.fused_adam and preset == "reference")
    state = core.init_state(spec, jax.random.PRNGKey(0))
    finals[choice], _ = jax.jit(lambda s, xs, spec=spec: jax.lax.scan(
        lambda s, xb: core.train_step(spec, hp, s, xb), s, xs))(state, x)
  for a, b in zip(jax.tree.leaves(finals["fused"].params),
                  jax.tree.leaves(finals["optax"].params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(finals["fused"].opt_state),
                  jax.tree.leaves(finals["optax"].opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)


def test_kernel_builds_where_a_compiler_exists(tmp_path):
  """A source that stops compiling must fail here, not fall back to optax
  with a warning and skip the kernel's tests."""
  if fused_adam._compiler() is None:
    pytest.skip("no C++ compiler here")
  assert fused_adam.build(tmp_path).exists()


def test_kernel_choice_and_validation(monkeypatch, tmp_path):
  """auto: fused on a one-device CPU process when the kernel builds; a
  missing compiler is a clear error from build(), optax under auto, and a
  refusal of train.adam_kernel='fused' before training."""
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
    fused_adam.build(tmp_path)
  assert not list(tmp_path.glob("*.so"))
  assert not core.use_fused_adam("optax")
  monkeypatch.setattr(fused_adam, "available", lambda: False)
  assert not core.use_fused_adam("auto")
  config = get_config("arch=relu_l1")
  config.train.adam_kernel = "fused"
  with pytest.raises(ValueError, match="could not be built"):
    train_run.validate_config(config)
  config.train.adam_kernel = "numba"
  with pytest.raises(ValueError, match="adam_kernel='numba'"):
    train_run.validate_config(config)
  monkeypatch.setattr(fused_adam, "available", lambda: True)
  assert core.use_fused_adam("auto") == (jax.local_device_count() == 1)


def small_reference_spec(batch=16, **train):
  config = get_config("reference")
  config.model.d_in, config.model.d_sae = 32, 128
  config.train.batch_size = batch
  config.train.update(train)
  return config, core.static_spec_from_config(config, 70)


def test_factored_grads_only_where_they_hold():
  """Factored weight gradients: the kernel's, at small batch, for ReLU+L1
  whose weights enter the loss only through the affine maps."""
  fused = fused_adam.available()
  assert small_reference_spec()[1].factored_grads == fused
  assert not small_reference_spec(batch=128)[1].factored_grads
  assert not small_reference_spec(adam_kernel="optax")[1].factored_grads
  for preset in ("arch=relu_l1", "arch=topk"):  # weighted L1; a gather
    config = get_config(preset)
    config.train.batch_size = 16
    assert not core.static_spec_from_config(config, 70).factored_grads
  with pytest.raises(ValueError, match="needs fused_adam"):
    core.StaticSpec(**{**vars(small_reference_spec()[1]),
                       "fused_adam": False, "factored_grads": True})


def test_factors_are_the_weight_gradients():
  """With FACTOR_TAPS the taps' gradients are (a, b) with a^T b autodiff's
  gradient of W_enc and of W_dec (without taps), and W_enc and W_dec get
  none of their own; the other gradients do not change."""
  from emosae_jax import saes
  config, spec = small_reference_spec()
  spec = dataclasses.replace(spec, fused_adam=True, factored_grads=True)
  params = core.init_state(spec, jax.random.PRNGKey(0)).params
  params["b_dec"] = params["b_dec"] + 0.05  # a pre-bias that matters
  x = np.asarray(jax.random.normal(jax.random.key(4), (16, 32)), np.float32)
  hp = core.hparams_from_config(config)

  def grads(p):
    loss = lambda p: core._loss_fn(spec, hp, 1.0, jnp.zeros(128, bool),  # noqa
                                   p, x)[0]
    return jax.jit(jax.grad(loss))(p)

  want = grads(params)
  got = grads(dict(params, **{saes.base.FACTOR_TAPS: saes.base.factor_taps(
      spec.sae, 16)}))
  for name in ("W_enc", "W_dec"):
    a, b = got[saes.base.FACTOR_TAPS][name]
    np.testing.assert_allclose(np.asarray(a, np.float64).T @ np.asarray(b),
                               want[name], rtol=1e-5, atol=1e-9)
    assert not np.any(got[name])
  for name in ("b_enc", "b_dec"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("max_norm,frozen", [(0.0, False), (0.05, False),
                                             (0.05, True)])
def test_kernel_on_factors_is_the_kernel_on_their_product(kernel, max_norm,
                                                          frozen):
  """factors={W: (a, b)}: the same step as the plain kernel given a^T b (to
  the product's rounding), rows of zero gradient included, the clip's
  global norm from Gram matrices, and a frozen member with non-finite
  factors left as it was."""
  keys = jax.random.split(jax.random.key(5), 6)
  p, m = random_tree(keys[0]), random_tree(keys[1], 0.1)
  v = random_tree(keys[2], 0.1, positive=True)
  # 50 rows: blocks of 4 and a remainder of 2; 80 columns: 32, 32 and 16
  for tree in (p, m, v):
    tree["W"] = np.concatenate([tree["W"], np.abs(tree["W"][:2])])
  a = np.asarray(jax.random.normal(keys[3], (16, 50)), np.float32) * 0.1
  b = np.asarray(jax.random.normal(keys[4], (16, 80)), np.float32) * 0.1
  a[:, 6:15] = 0.0  # rows of W with no gradient (latents that never fired)
  g = {"W": (a.astype(np.float64).T @ b).astype(np.float32),
       "b": np.asarray(jax.random.normal(keys[5], (80,)), np.float32)}
  if frozen:
    a[3, 5] = np.nan
  state = optax_state(m, v, 4, max_norm)
  lr = 0.0 if frozen else 1e-3
  step = jax.jit(lambda g, factors: fused_adam.update(
      g, state, p, jnp.float32(lr), jnp.asarray(frozen), max_norm, EPS,
      unit_axes={"W": 0}, factors=factors))
  got = step({"b": g["b"]}, {"W": (a, b)})
  want = step(g, None)
  if max_norm:  # the clip is triggered
    assert float(fused_adam.global_norm(g, {}, p)) > max_norm
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-8)
  if frozen:
    np.testing.assert_array_equal(got[0]["W"], want[0]["W"])
    np.testing.assert_allclose(np.linalg.norm(got[0]["W"], axis=0), 1.0,
                               rtol=1e-6)  # renormalised all the same


def test_vmapped_members_on_factors(kernel):
  """Under vmap each member's factors make its own gradient, exactly as
  when run alone."""
  n = 3
  keys = jax.random.split(jax.random.key(6), 5)
  draw = lambda k, s, scale=0.1: np.asarray(  # noqa: E731
      jax.random.normal(k, (n, *s)) * scale, np.float32)
  p, m = draw(keys[0], (48, 80), 1.0), draw(keys[1], (48, 80))
  v = np.abs(draw(keys[2], (48, 80)))
  a, b = draw(keys[3], (6, 48)), draw(keys[4], (6, 80))
  lrs = jnp.array([1e-3, 3e-3, 1e-2], jnp.float32)

  def one(p, m, v, a, b, lr):
    state = (optax.ScaleByAdamState(jnp.int32(2), {"W": m}, {"W": v}),)
    return fused_adam.update({}, state, {"W": p}, lr, jnp.asarray(False),
                             0.0, EPS, factors={"W": (a, b)})

  batched = jax.jit(jax.vmap(one))(p, m, v, a, b, lrs)
  for i in range(n):
    alone = jax.jit(one)(p[i], m[i], v[i], a[i], b[i], lrs[i])
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
      np.testing.assert_array_equal(got[i] if got.ndim else got, want)


def test_vmapped_sweep_with_factored_grads_equals_its_members(kernel):
  """Sweep members (vmap over states and hparams) on the factored path: the
  taps' gradients come out per member, so each member trains as alone (to
  float32 rounding: vmap batches the other matmuls)."""
  config, spec = small_reference_spec()
  assert spec.factored_grads
  hp = core.hparams_from_config(config)
  x = jnp.asarray(np.random.default_rng(0).normal(scale=0.1, size=(86, 32)),
                  jnp.float32)
  states = [core.init_state(spec, jax.random.PRNGKey(i)) for i in range(2)]
  hps = [dict(hp, lr=jnp.float32(lr)) for lr in (1e-3, 3e-3)]
  epochs = lambda s, h: core.train_epochs(spec, 3, s, h, x[:70], x[70:], 0)  # noqa: E731
  stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
  swept, _ = jax.jit(jax.vmap(epochs))(stack(states), stack(hps))
  for i in range(2):
    alone, _ = jax.jit(epochs)(states[i], hps[i])
    for got, want in zip(jax.tree.leaves(swept.params),
                         jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
