r"""Finds emotion-selective SAE features and tests them against chance.

  python scripts/analyze.py --workdir=runs/seed
  python scripts/analyze.py --workdir=runs/sweep --data=PATH \
      --permutations=1000 --fdr=0.05 --min_support=5 --out=runs/sweep/analysis
  python scripts/analyze.py --workdir=runs/sweep/g0 \
      --validation=data/heldout,data/captions
Works on a training run or a sweep workdir (all members that finished).
Writes analysis.json, analysis_arrays.safetensors, heatmap.png,
selectivity_null.png, dose_response.png and report.html into --out. With
--validation, every feature is also tested on each other labelled set, and
the report leads with the corpus-significant features that hold there.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run or sweep.",
                               required=True)
_DATA = flags.DEFINE_string("data", None, "Embedding-set folder (default: the "
                            "data the run was trained on).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: workdir).")
_PERMUTATIONS = flags.DEFINE_integer("permutations", 1000,
                                     "Label shuffles in the permutation test.")
_FDR = flags.DEFINE_float("fdr", 0.05, "Benjamini-Hochberg level.")
_MIN_SUPPORT = flags.DEFINE_integer(
    "min_support", 5, "A feature must fire on this many prompts of its "
    "emotion to count as significant.")
_BROAD_SUPPORT = flags.DEFINE_float(
    "broad_support", 0.2, "Breadth tier: a significant feature is broad "
    "when it fires on at least this fraction of its emotion's examples, "
    "else narrow (reported apart; changes no test). Keep it above "
    "--min_support_fraction, or every significant feature is broad.")
_MIN_SUPPORT_FRACTION = flags.DEFINE_float(
    "min_support_fraction", 0.15, "Part of the test: a significant feature "
    "must also fire on at least this fraction of its emotion's examples "
    "(shuffled labels go through the same rule; BH-only counts are "
    "reported beside). 0: off.")
_SELECT_ON = flags.DEFINE_string(
    "select_on", None, "One of --validation (not the test split): choose "
    "the configuration and member by the share of significant features "
    "holding there and reappearing across seeds.")
_WITHIN_GROUPS = flags.DEFINE_boolean(
    "within_groups", True, "Shuffle labels within template groups.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the shuffles.")
_STABILITY = flags.DEFINE_float("stability_threshold", 0.7,
                                "Decoder cosine at which a feature reappears.")
_VALIDATION = flags.DEFINE_list(
    "validation", [], "Other labelled embedding sets (comma-separated "
    "folders): which corpus-significant features hold there.")
_MEMBER_BATCH = flags.DEFINE_integer(
    "member_batch", 0, "Sweep members computed at once (0: by memory).")


def _pct(x) -> str:
  return "-" if x is None else f"{x:.0%}"


def main(argv):
  del argv
  from emosae_jax import analysis
  settings = analysis.Settings(
      permutations=_PERMUTATIONS.value, fdr=_FDR.value,
      min_support=_MIN_SUPPORT.value,
      min_support_fraction=_MIN_SUPPORT_FRACTION.value,
      broad_support=_BROAD_SUPPORT.value,
      within_groups=_WITHIN_GROUPS.value,
      seed=_SEED.value, stability_threshold=_STABILITY.value,
      member_batch=_MEMBER_BATCH.value)
  result = analysis.analyze(_WORKDIR.value, _DATA.value, settings,
                            progress=True, validation=_VALIDATION.value,
                            select_on=_SELECT_ON.value)
  path = analysis.write(result, _OUT.value or _WORKDIR.value)
  for member in result.summary["members"]:
    counts = "; ".join(
        f"{c['name']}={c['real']} (shuffled {c['shuffled']['mean']:.1f}, "
        f"{c['shuffled']['min']}-{c['shuffled']['max']})"
        for c in member["counts"] if "/" not in c["name"])
    print(f"member {member['index']}: {counts}")
    tiers = member["breadth"]
    print("  significant by breadth: " + "; ".join(
        f"{name} {t['n']} (reappearing in >= half the other seeds: "
        f"{_pct(t['share_reappear'])})" for name, t in tiers.items()))
    for v in member["validation"]:
      hold, null = v["hold"], v["hold"]["shuffled"]
      print(f"  holds on {v['path']}: {hold['real']} of {v['testable']} "
            f"testable (shuffled {null['mean']:.1f}, {null['min']}-"
            f"{null['max']})")
      print("    by breadth: " + "; ".join(
          f"{name} {t['hold']['real']} of {t['testable']} "
          f"({_pct(t['share_hold'])}, shuffled "
          f"{_pct(t['share_hold_shuffled']['mean'])})"
          for name, t in v["by_breadth"].items()))
  sel = result.summary.get("selection")
  if sel:
    for c in sel["configurations"]:
      print(f"selection on {sel['set']}: {c['overrides']} score "
            f"{c['score']:.3f} (hold {_pct(c['share_hold'])}, reappear "
            f"{_pct(c['share_reappear'])}, FVU {c['fvu']})")
    print(f"chosen: member {sel['chosen']['member']} "
          f"{sel['chosen']['overrides']}")
  for group in result.summary["directions"]["groups"]:
    for name, r in group["emotions"].items():
      if r and r["consensus"] and r["comparison"]["consensus"][
          "auroc_validation"]:
        c = r["comparison"]
        print(f"{name} {group['overrides']}: validation AUROC consensus "
              f"{c['consensus']['auroc_validation'][0]:.3f}, best feature "
              f"{c['best_feature']['auroc_validation'][0]:.3f}, class mean "
              f"{c['class_mean']['auroc_validation'][0]:.3f}")
  for verdict in analysis.class_mean_verdicts(result.summary):
    print(verdict["text"])
  print(f"wrote {path} and {path.parent / 'report.html'}")


if __name__ == "__main__":
  cli.run(main)
