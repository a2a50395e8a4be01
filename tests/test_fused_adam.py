"""The one-pass CPU Adam kernel (emosae_jax/fused_adam.py): the same
arithmetic as optax's chain, member by member, and used where it should be."""

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
  """Five steps (the reference's column renormalisation; TopK's rows, with
  the clip): fused and optax agree to float32 rounding (XLA's own loops
  differ from the formula in the last bit)."""
  config = get_config(preset)
  config.model.d_in, config.model.d_sae = 32, 128
  x = jax.random.normal(jax.random.key(2), (5, 16, 32)) * 0.1
  hp = core.hparams_from_config(config)
  finals = {}
  for choice in ("fused", "optax"):
    config.train.adam_kernel = choice
    spec = core.static_spec_from_config(config, 70)
    assert spec.fused_adam == (choice == "fused")
    state = core.init_state(spec, jax.random.PRNGKey(0))
    finals[choice], _ = jax.jit(lambda s, xs, spec=spec: jax.lax.scan(
        lambda s, xb: core.train_step(spec, hp, s, xb), s, xs))(state, x)
  for a, b in zip(jax.tree.leaves(finals["fused"].params),
                  jax.tree.leaves(finals["optax"].params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(finals["fused"].opt_state),
                  jax.tree.leaves(finals["optax"].opt_state)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)


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
