"""The training step's fast forward pass (saes.train_terms: sparse TopK
decoding, batch-threshold BatchTopK, fused counts) computes the same loss,
gradients and firing counts as the plain formula (forward + loss_terms);
the small-batch backward passes are autodiff's (the decoder's gradient bit
for bit) and leave XLA no reason to copy the decoder every step."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.sae import get_config
from emosae_jax import saes
from emosae_jax import train_core as core
from emosae_jax import train_run
from emosae_jax.saes import base, batchtopk

HP = {"sparsity_coeff": 1.0}


def _setup(arch, decoder_norm="unit", **spec_kw):
  spec = saes.SAESpec(arch, 16, 64, k=4, k_aux=8, decoder_norm=decoder_norm,
                      bandwidth=0.3, threshold_init=0.2, **spec_kw)
  keys = jax.random.split(jax.random.key(0), 4)
  params = saes.init_params(spec, keys[0])
  # Unequal biases and decoder norms, so every term has something to do.
  params["b_enc"] = 0.3 * jax.random.normal(keys[1], (64,))
  params["W_dec"] = params["W_dec"] * jax.random.uniform(
      keys[2], (64, 1), minval=0.5, maxval=2.0)
  x = jax.random.normal(keys[3], (32, 16)) * jnp.linspace(0.5, 2.0, 32)[:, None]
  return spec, params, x


def _losses(spec, dead_mask):
  arch = saes.get_arch(spec.arch)

  def plain(params, x):  # always by XLA's top-k
    by_top_k = dataclasses.replace(spec, top_k_method="top_k")
    x_hat, acts, pre = saes.forward(by_top_k, params, x, train=True)
    t = arch.loss_terms(by_top_k, params, x, x_hat, pre, acts, dead_mask, HP)
    return t["mse"] + 0.7 * t["sparsity"] + 0.3 * t["aux"], jnp.sum(
        acts != 0, axis=0)

  def fast(params, x):
    t, counts, _ = saes.train_terms(spec, params, x, dead_mask, HP)
    return t["mse"] + 0.7 * t["sparsity"] + 0.3 * t["aux"], counts

  return plain, fast


@pytest.mark.parametrize("arch, kw", [
    ("relu_l1", {}), ("relu_l1", {"decoder_norm": "weighted"}),
    ("relu_l1", {"sparsity_over_latents": "mean"}),
    ("relu_l1", {"learn_pre_bias": False}),
    ("topk", {}), ("batchtopk", {}), ("jumprelu", {}),
    ("topk", {"top_k_method": "count"}),
    ("batchtopk", {"top_k_method": "count"})])
@pytest.mark.parametrize("some_dead", [False, True])
def test_train_terms_equal_the_plain_formula(arch, kw, some_dead):
  spec, params, x = _setup(arch, **kw)
  dead = (jnp.arange(64) % 3 == 0) if some_dead else jnp.zeros(64, bool)
  plain, fast = _losses(spec, dead)
  (want, want_counts), want_grads = jax.value_and_grad(plain, has_aux=True)(
      params, x)
  (got, got_counts), got_grads = jax.value_and_grad(fast, has_aux=True)(
      params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_array_equal(got_counts, want_counts)
  for name in want_grads:
    np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-4,
                               atol=1e-6, err_msg=name)


def test_batch_threshold_is_the_batch_topk_value_when_rows_are_uneven():
  """Rows of very different norms keep very different numbers of latents;
  the candidate threshold must still equal the full top-k's, including
  when a row keeps more than its candidates (the exact fallback)."""
  pre = jax.random.normal(jax.random.key(1), (256, 400))
  for scale in (jnp.ones(256), jnp.linspace(0.5, 1.5, 256),
                jnp.ones(256).at[3].set(50.0)):
    p = pre * scale[:, None]
    want = jax.lax.top_k(jax.nn.relu(p).reshape(-1), 256 * 5)[0][-1]
    for counting in (False, True):
      got = jax.jit(functools.partial(batchtopk.batch_threshold, k=5,
                                      counting=counting))(p)
      assert float(got) == float(want), counting


def test_small_batch_backward_is_autodiffs():
  """At batch <= base.SMALL_BATCH the decoder's and encoder's backward
  passes are arranged by hand (so that XLA need not copy W_dec every step,
  and faster matmul kernels run). W_dec's gradient is autodiff's bit for
  bit; the gradient into the latents sums over d_in in another order, so
  the encoder's gradients match autodiff's to rounding, and both match a
  float64 computation as closely as autodiff's do."""
  # The `reference` preset's shapes: at toy sizes XLA picks other kernels.
  spec = saes.SAESpec("relu_l1", 768, 6144, decoder_norm="inputs",
                      init="reference")
  keys = jax.random.split(jax.random.key(0), 3)
  params = saes.init_params(spec, keys[0])
  params["b_enc"] = 0.01 * jax.random.normal(keys[1], (6144,))
  x = jax.random.normal(keys[2], (16, 768))
  assert x.shape[0] <= base.SMALL_BATCH

  def arranged(params):
    acts = base.relu(base.pre_activation(params, x))
    return jnp.sum(jnp.square(base.decode(params, acts) - x))

  def plain(params):
    acts = jax.nn.relu((x - params["b_dec"]) @ params["W_enc"]
                       + params["b_enc"])
    return jnp.sum(jnp.square(acts @ params["W_dec"] + params["b_dec"] - x))

  got = jax.jit(jax.grad(arranged))(params)
  want = jax.jit(jax.grad(plain))(params)
  np.testing.assert_array_equal(got["W_dec"], want["W_dec"])
  exact = _float64_grads(params, np.asarray(x, np.float64))
  for name in ("W_enc", "b_enc", "b_dec"):
    scale = np.max(np.abs(exact[name]))
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5,
                               atol=1e-6 * scale, err_msg=name)
    err_got = np.max(np.abs(got[name] - exact[name]))
    err_want = np.max(np.abs(want[name] - exact[name]))
    assert err_got <= 2 * err_want + 1e-7 * scale, name


def _float64_grads(params, x):
  """The plain formula's gradients in float64 numpy: the known answer."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
  acts = np.maximum(pre, 0)
  d_out = 2 * (acts @ p["W_dec"] + p["b_dec"] - x)
  d_pre = (d_out @ p["W_dec"].T) * (pre > 0)
  return {"W_enc": (x - p["b_dec"]).T @ d_pre, "b_enc": d_pre.sum(0),
          "b_dec": d_out.sum(0) - p["W_enc"] @ d_pre.sum(0)}


def test_reference_step_does_not_copy_the_decoder():
  """The compiled steps update W_dec in place: no full copy of it per step
  (two passes over the largest array, about 10% of a `reference` step)."""
  config = get_config("reference")
  config.model.d_in, config.model.d_sae = 64, 256
  spec = core.static_spec_from_config(config, 70)
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(0))
  steps = jax.jit(lambda s, xs: jax.lax.scan(
      lambda s, xb: core.train_step(spec, hp, s, xb), s, xs), donate_argnums=0)
  text = steps.lower(state, jnp.zeros((3, 16, 64))).compile().as_text()
  copies = [line for line in text.splitlines()
            if " copy(" in line and "f32[256,64]" in line.split("copy(")[0]]
  assert not copies, copies


@pytest.mark.parametrize("preset", ["reference", "arch=topk"])
def test_matmul_precision_reaches_every_matmul_of_the_step(preset):
  """train.matmul_precision is applied where the step is traced: with
  "highest" every dot of the step (forward, hand-arranged backward, AuxK,
  evaluation) asks for float32; with "default" none does (so GPUs keep
  their TF32 default)."""
  config = get_config(preset)
  config.model.d_in, config.model.d_sae = 16, 64
  config.model.k = min(config.model.k, 8)
  # XLA's dots, as on an accelerator: the CPU kernel's factored weight
  # gradients (fused_adam) are products in float32 outside XLA
  config.train.adam_kernel = "optax"

  def dots(precision):
    config.train.matmul_precision = precision
    spec = core.static_spec_from_config(config, 70)
    hp = core.hparams_from_config(config)
    state = core.init_state(spec, jax.random.PRNGKey(0))
    run = jax.jit(lambda s, x: (core.train_step(spec, hp, s, x[:16]),
                                core.evaluate(spec, hp, s.params, x)))
    text = run.lower(state, jnp.zeros((70, 16))).as_text()
    return [line for line in text.splitlines() if "dot_general" in line]

  highest, default = dots("highest"), dots("default")
  assert len(highest) == len(default) >= 6
  assert all("precision = [HIGHEST, HIGHEST]" in d for d in highest)
  assert not any("HIGHEST" in d for d in default)


@pytest.mark.parametrize("case", ["gaussian", "ties", "zeros", "few_positive"])
def test_kth_largest_is_the_sorted_value(case):
  """The bisection over bit patterns gives jnp.sort(values)[-n] exactly:
  on ties at the answer, with zeros, and with fewer than n positive
  entries (then 0.0), negative entries counting as below everything."""
  rng = np.random.default_rng(3)
  values = rng.normal(size=5000).astype(np.float32)
  if case == "ties":
    values = np.round(values * 4) / 4  # a few distinct values, many ties
  if case in ("zeros", "few_positive"):
    values = np.maximum(values, 0)  # half zeros
  if case == "few_positive":
    values[100:] = np.minimum(values[100:], 0)  # 100 positive, n > 100
  for n in (1, 7, 100, 1000, 2500, 5000):
    want = np.sort(values)[-n] if n <= np.sum(values >= 0) else None
    for ways in (2, 4, 16):
      got = float(jax.jit(base.kth_largest, static_argnums=2)(
          jnp.asarray(values), n, ways))
      if want is not None:
        assert got == max(float(want), 0.0), (case, n, ways)


def test_kth_largest_works_along_rows():
  """Over the last axis, one answer per row, including rows with fewer
  than n non-negative entries (0.0) and a row of ties."""
  rng = np.random.default_rng(4)
  values = rng.normal(size=(6, 300)).astype(np.float32)
  values[1] = np.round(values[1])  # ties
  values[2, 5:] = -np.abs(values[2, 5:])  # 5 or fewer non-negative
  for ways in (2, 16):
    got = np.asarray(jax.jit(base.kth_largest, static_argnums=2)(
        jnp.asarray(values), 20, ways))
    want = np.maximum(np.sort(values, axis=-1)[:, -20], 0.0)
    np.testing.assert_array_equal(got, want)


def _plain_aux_terms(spec, params, x, dead_mask):
  """batchtopk.train_terms' loss as plain autodiff sees it: main path plus
  base.aux_k_loss, no custom VJP around them."""
  pre = base.pre_activation(params, x)
  threshold = jax.lax.stop_gradient(batchtopk.batch_threshold(pre, spec.k,
                                                              False))
  acts = base.relu(jnp.where(pre >= threshold, pre, 0.0))
  x_hat = base.decode(params, acts)
  return (base.reconstruction_mse(x, x_hat)
          + 0.3 * base.aux_k_loss(spec, params, x, x_hat, pre, dead_mask))


@pytest.mark.parametrize("some_dead", [False, True])
def test_with_aux_k_is_autodiffs_bit_for_bit(some_dead):
  """base.with_aux_k (the AuxK branch behind a custom VJP) gives the loss
  and gradients of plain autodiff through lax.cond, bit for bit."""
  spec, params, x = _setup("batchtopk")
  dead = (jnp.arange(64) % 3 == 0) if some_dead else jnp.zeros(64, bool)

  def fast(params):
    t, _, _ = batchtopk.train_terms(spec, params, x, dead, HP)
    return t["mse"] + 0.3 * t["aux"]

  want, want_grads = jax.jit(jax.value_and_grad(
      lambda p: _plain_aux_terms(spec, p, x, dead)))(params)
  got, got_grads = jax.jit(jax.value_and_grad(fast))(params)
  assert float(got) == float(want)
  assert some_dead == (float(want) != float(_plain_aux_terms(
      spec, params, x, jnp.zeros(64, bool))))  # AuxK did something
  for name in want_grads:
    np.testing.assert_array_equal(got_grads[name], want_grads[name],
                                  err_msg=name)


def _branches(hlo_text):
  """{name: body} of every computation a conditional branches to."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r"^%(\S+) [^\n]*\{\n(.*?)\n\}$", hlo_text, re.M | re.S)}
  names = re.findall(r"branch_computations=\{([^}]*)\}", hlo_text)
  return {n.strip().lstrip("%"): bodies[n.strip().lstrip("%")]
          for group in names for n in group.split(",")}


def test_batchtopk_step_writes_no_zeros_for_the_aux_branch():
  """While no latent is dead the compiled BatchTopK step neither sorts
  (the batch threshold) nor runs a branch that only writes zero [batch,
  d_sae] arrays (autodiff of the AuxK lax.cond did: the residuals and
  gradients of the branch not taken, 8% of a 4096 x 6144 step)."""
  config = get_config("arch=batchtopk")
  config.model.d_in, config.model.d_sae, config.model.k = 64, 256, 4
  spec = core.static_spec_from_config(config, 128)
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, xb: core.train_step(spec, hp, s, xb))
  text = step.lower(state, jnp.zeros((128, 64))).compile().as_text()
  one_d_sorts = [line for line in text.splitlines() if "]{0} sort(" in line]
  assert not one_d_sorts, one_d_sorts
  zero_branches = [name for name, body in _branches(text).items()
                   if re.search(r"= f32\[128,256\]\S* (broadcast|fusion)"
                                r"\(%constant", body)
                   and not re.search(r" (dot|custom-call|sort|scatter)\(",
                                     body)]
  assert not zero_branches, zero_branches


def test_adam_eps_reaches_the_step():
  """train.adam_eps is Adam's epsilon: Adam's first (bias-corrected) update
  is lr * g / (|g| + eps), so with eps 0 every weight with a gradient moves
  by exactly lr, and with an eps far above the gradients by far less."""
  config = get_config("arch=relu_l1")
  config.model.d_in, config.model.d_sae = 16, 64
  config.train.max_grad_norm = 0.0  # the clip would rescale g, not |update|
  x = jax.random.normal(jax.random.key(1), (32, 16))

  def first_update(eps):
    config.train.adam_eps = eps
    spec = core.static_spec_from_config(config, 32)
    hp = core.hparams_from_config(config)
    state = core.init_state(spec, jax.random.PRNGKey(0))
    new, _ = jax.jit(lambda s: core.train_step(spec, hp, s, x))(state)
    return np.abs(np.asarray(new.params["W_enc"] - state.params["W_enc"]))

  lr = config.train.lr
  moved = first_update(0.0)
  moved = moved[moved > 0]
  assert moved.size > 100
  np.testing.assert_allclose(moved, lr, rtol=1e-3)
  assert first_update(1e3).max() < 1e-3 * lr


def test_top_k_method_choice_and_validation(monkeypatch):
  """auto keeps XLA's top-k on CPU (faster there, with TopK's sparse
  decode) and counts on accelerators, except TopK under float32 matmuls;
  count and top_k are taken as asked; anything else is refused before
  training."""
  spec = saes.SAESpec("topk", 16, 64, k=4)
  batch_spec = dataclasses.replace(spec, arch="batchtopk")
  assert jax.default_backend() == "cpu"
  assert not base.uses_counting(spec)
  assert not base.uses_counting(batch_spec)
  with monkeypatch.context() as patch:  # the rule as a GPU would see it
    patch.setattr(jax, "default_backend", lambda: "gpu")
    assert base.uses_counting(spec) and base.uses_counting(batch_spec)
    with jax.default_matmul_precision("highest"):
      assert not base.uses_counting(spec)
      assert base.uses_counting(batch_spec)
  assert base.uses_counting(dataclasses.replace(spec, top_k_method="count"))
  assert not base.uses_counting(dataclasses.replace(spec,
                                                    top_k_method="top_k"))
  config = get_config("arch=topk")
  config.model.top_k_method = "sorted"
  with pytest.raises(ValueError, match="model.top_k_method='sorted'"):
    train_run.validate_config(config)
