"""Metrics are named for what they measured (issue 11 defects 6-7, issue 12
item 5), and FVU stays defined when its denominator is zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from emosae_jax import metrics, runs, train_run
from emosae_jax import train_core as core


@pytest.mark.parametrize("val_fraction, name", [(0.0, "train"),
                                                (0.2, "heldout")])
def test_evaluation_metrics_name_their_set(tmp_path, val_fraction, name):
  """With val_fraction=0 the per-epoch evaluation runs on the training rows:
  it must not be called held-out (or "val"); the two dead-latent measures
  have their own names."""
  config = tiny_config(train__epochs=2, data__val_fraction=val_fraction)
  summary = train_run.train_and_evaluate(config, tmp_path, progress=False)
  other = "heldout" if name == "train" else "train"
  assert summary["eval_set"] == name
  assert {f"{name}_fvu", f"{name}_l0", f"{name}_mse",
          "never_fires_fraction"} <= set(summary)
  assert not any(k.startswith(("val_", f"{other}_")) for k in summary)
  assert "dead_fraction" not in summary
  assert runs.summary_metric(summary, "fvu") == summary[f"{name}_fvu"]
  row = train_run.read_metrics(tmp_path / "metrics.jsonl")[-1]
  assert {f"{name}_fvu", f"{name}_loss", "step_loss", "step_l0",
          "dead_window_fraction"} <= set(row)
  assert not any(k.startswith(("val_", f"{other}_")) for k in row)


def test_fvu_with_zero_variance_is_finite_and_heldout_fvu_refuses():
  """All rows equal: the training-set FVU's denominator is floored (finite);
  the cross-library held-out FVU says it is undefined."""
  config = tiny_config(train__epochs=1)
  spec = core.static_spec_from_config(config, 64)
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(0))
  x = jnp.ones((64, 32))
  assert np.isfinite(float(core.evaluate(spec, hp, state.params, x)["fvu"]))
  assert np.isfinite(float(metrics.fvu(x, x * 0.5)))
  with pytest.raises(ValueError, match="undefined"):
    metrics.heldout_fvu(np.ones((4, 3)), np.zeros((4, 3)), np.ones(3))


def test_heldout_fvu_known_values():
  """Predicting the training mean scores 1; a perfect reconstruction 0."""
  rng = np.random.default_rng(0)
  x_test, mean = rng.normal(size=(20, 5)), rng.normal(size=5)
  assert metrics.heldout_fvu(x_test, np.broadcast_to(mean, x_test.shape),
                             mean) == pytest.approx(1.0)
  assert metrics.heldout_fvu(x_test, x_test, mean) == 0.0


def test_pca_reconstruction_known_answers():
  """bench_quality's dense baseline: rank-3 data off the origin (held-out
  rows from the same subspace) is reproduced at k = 3 but not at k = 2, and
  k = 0 is the training mean (held-out FVU exactly 1)."""
  rng = np.random.default_rng(0)
  basis, offset = rng.normal(size=(3, 8)), 5 * rng.normal(size=8)
  x_train = offset + rng.normal(size=(40, 3)) @ basis
  x_test = offset + rng.normal(size=(10, 3)) @ basis
  mean = x_train.mean(0)
  fvu = {k: metrics.heldout_fvu(
      x_test, metrics.pca_reconstruction(x_train, x_test, k), mean)
         for k in (0, 2, 3)}
  assert fvu[0] == pytest.approx(1.0)
  assert fvu[2] > 0.01 and fvu[3] < 1e-20


def test_auxk_is_a_real_branch():
  """AuxK is skipped, not masked, while no latent is dead: the compiled
  single-run step holds a conditional around it."""
  config = tiny_config("topk")
  spec = core.static_spec_from_config(config, 256)
  hp = core.hparams_from_config(config)
  state = core.init_state(spec, jax.random.PRNGKey(0))
  jaxpr = jax.make_jaxpr(lambda s, x: core.train_step(spec, hp, s, x))(
      state, jnp.ones((256, 32)))
  assert "cond[" in str(jaxpr)


def test_wilson_interval_known_values():
  """3 of 6: centred on 1/2 with half-width 0.312 (the textbook formula);
  0 of n never goes below 0, n of n never above 1; no data: (0, 1)."""
  np.testing.assert_allclose(metrics.wilson_interval(3, 6), (0.1876, 0.8124),
                             atol=1e-4)
  low, high = metrics.wilson_interval(0, 10)
  assert low == 0.0 and 0.27 < high < 0.28
  low, high = metrics.wilson_interval(10, 10)
  assert high == 1.0 and 0.72 < low < 0.73
  assert metrics.wilson_interval(0, 0) == (0.0, 1.0)
