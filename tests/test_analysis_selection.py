"""The support fraction inside the test, and choosing the SAE on a
selection set, with known answers.

Planted data from test_analysis_breadth: per emotion a broad feature (60%
of the emotion's prompts, in both sets) and word-specific narrow features
(about 8% of them on the corpus, at random on the validation set).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from emosae_jax import analysis, runs
from emosae_jax.analysis import kernels, settings as settings_lib
from test_analysis_breadth import N_BROAD, N_NARROW, write_planted_run

BROAD = set(range(N_BROAD))
NARROW = set(range(N_BROAD, N_BROAD + N_NARROW))
SETTINGS = dict(permutations=200, n_causal=8, n_random=2)


@pytest.fixture(scope="module")
def planted():
  """(run of the dictionary SAE, its params, validation folder)."""
  return write_planted_run("selection")


def test_support_fraction_keeps_the_general_feature_drops_the_narrow(
    planted):
  run, _, val = planted
  result = analysis.analyze(run, settings=analysis.Settings(
      min_support_fraction=0.1, **SETTINGS), validation=[str(val)])
  a = result.arrays
  assert set(np.flatnonzero(a["significant"][0])) == BROAD
  # BH alone (the old rule) still finds both kinds; both are reported.
  assert set(np.flatnonzero(a["bh_significant"][0])) == BROAD | NARROW
  member = result.summary["members"][0]
  counts = {c["name"]: c for c in member["counts"]}
  assert counts["significant"]["real"] == N_BROAD
  assert counts["bh_significant"]["real"] == N_BROAD + N_NARROW
  assert counts["significant"]["shuffled"]["max"] <= 1
  assert result.summary["settings"]["min_support_fraction"] == 0.1
  v = member["validation"][0]
  assert v["testable"] == N_BROAD and v["share_hold"] == 1.0
  assert v["bh"]["testable"] == N_BROAD + N_NARROW
  assert v["bh"]["hold"]["real"] == N_BROAD  # the narrow ones never hold


def test_shuffled_labels_go_through_the_same_support_rule():
  """Known answer on the null kernel: every shuffle passes BH
  so only support decides (fdr 1: every p passes). Feature 0 fires on 3 of its emotion's 100
  examples (3% < 5%), feature 1 on 3 of 20 (15%), feature 2 on 10 of 100."""
  spec = settings_lib.DeviceSpec(
      sae=None, n_labels=2, fdr=1.0, min_support=1,
      min_support_fraction=0.05, thresholds=(), n_top=1, strengths=(),
      n_causal=0, hist_bins=4, capacity=8)
  n_perm = 4
  stat = jnp.asarray(np.random.default_rng(0).uniform(0.6, 0.9, (n_perm, 3)),
                     jnp.float32)
  emotion = jnp.tile(jnp.array([0, 1, 0]), (n_perm, 1))
  support = jnp.tile(jnp.array([3.0, 3.0, 10.0]), (n_perm, 1))
  reference = {"significant": jnp.array([True, True, True]),
               "bh_significant": jnp.array([True, True, True]),
               "emotion": jnp.array([0, 1, 0]),
               "broad": jnp.array([False, False, True])}
  out = kernels._null_significance(spec, stat, emotion, support,
                                   jnp.array([100.0, 20.0]),
                                   jnp.ones(3, bool), reference)
  np.testing.assert_array_equal(out["significant"], [2] * n_perm)
  np.testing.assert_array_equal(out["bh_significant"], [3] * n_perm)
  np.testing.assert_array_equal(out["holds"], [2] * n_perm)
  np.testing.assert_array_equal(out["bh_holds"], [3] * n_perm)
  np.testing.assert_array_equal(out["holds_broad"], [1] * n_perm)
  _, real, real_bh = kernels._significance(
      spec, jnp.full(3, 0.001), support[0], jnp.array([100.0, 20.0, 100.0]),
      jnp.ones(3, bool))
  np.testing.assert_array_equal(real, [False, True, True])
  np.testing.assert_array_equal(real_bh, [True, True, True])


def _sweep(tmp_path, run, params):
  """One sweep group of two configurations x two seeds: "train.lr" 1 is
  the dictionary SAE (broad and narrow features); 2 is the same with its
  broad features switched off, and a LOWER recorded FVU. Seed 1 of each
  is seed 0 with its features permuted (every feature reappears)."""
  loaded = runs.load_members(run)
  m = params["W_dec"].shape[0]
  bad = dict(params, b_enc=params["b_enc"].copy())
  bad["b_enc"][sorted(BROAD)] = -1e6  # never fires
  perm = np.random.default_rng(0).permutation(m)

  def permuted(p):
    return dict(p, W_dec=p["W_dec"][perm], W_enc=p["W_enc"][:, perm],
                b_enc=p["b_enc"][perm])
  rows = [params, permuted(params), bad, permuted(bad)]
  overrides = [{"train.lr": lr, "seed": s} for lr in (1, 2) for s in (0, 1)]
  fvu = [0.30, 0.31, 0.10, 0.11]
  top = runs.prepare_workdir(tmp_path / "sweep")
  runs.write_config(top, {"base": loaded.config, "overrides": overrides})
  entries = [{"index": i, "group": 0, "overrides": o, "seed": o["seed"],
              "config": dict(loaded.config, seed=o["seed"]), "status": "ok",
              "eval_set": "heldout", "heldout_fvu": fvu[i]}
             for i, o in enumerate(overrides)]
  gdir = runs.prepare_workdir(runs.group_dir(top, 0))
  stacked = {k: np.stack([r[k] for r in rows]) for k in params}
  entries = runs.write_group(gdir, entries, stacked, loaded.config,
                             loaded.info)
  runs.write_sweep(top, entries, [gdir.name])
  return gdir


def test_selection_picks_the_configuration_whose_features_hold(
    planted, tmp_path):
  """The broad configuration wins on the selection set although FVU alone
  would pick the other; the export then takes the chosen member."""
  from emosae_jax import export
  run, params, val = planted
  gdir = _sweep(tmp_path, run, params)
  result = analysis.analyze(gdir, settings=analysis.Settings(**SETTINGS),
                            validation=[str(val)], select_on=str(val))
  sel = result.summary["selection"]
  good, bad = sel["configurations"]
  assert good["overrides"] == {"train.lr": 1}
  # 3 broad of 9 significant hold (and reappear); none of the narrow do.
  assert good["score"] == pytest.approx(N_BROAD / (N_BROAD + N_NARROW))
  assert good["share_reappear"] == 1.0 and bad["share_reappear"] == 1.0
  assert bad["score"] == 0.0 and bad["n_significant"] == N_NARROW
  assert sel["chosen"]["configuration"] == 0
  assert sel["chosen"]["member"] in (0, 1)
  assert sel["fvu_choice"] == {"configuration": 1,
                               "overrides": {"train.lr": 2},
                               "same_as_chosen": False}
  assert good["fvu"] == pytest.approx(0.305)
  analysis.write(result, tmp_path / "analysis")
  page = (tmp_path / "analysis" / "report.html").read_text()
  assert "Chosen SAE" in page and "a different configuration" in page
  export.export_directions(gdir, tmp_path / "export",
                           member=sel["chosen"]["member"],
                           analysis_dir=tmp_path / "analysis")
  meta = export.load_meta(tmp_path / "export")
  assert meta["source"]["member"] == sel["chosen"]["member"]


def test_select_on_must_be_a_validation_set(planted):
  run, _, val = planted
  with pytest.raises(ValueError, match="select_on"):
    analysis.analyze(run, settings=analysis.Settings(**SETTINGS),
                     validation=[str(val)], select_on="/no/such/set")
