"""Choosing the SAE configuration (and its member) by validation agreement,
not by reconstruction alone.

The selection set is a labelled set that is NOT the test split (the
pipeline uses the corpus's "val" split: its own templates and emotion
words, shared with neither train nor test). Each member is scored by the
share of its significant features that are usable there:

  share_hold      significant on the selection set for the same emotion
  share_reappear  reappear in >= half of the other seeds of the
                  configuration (stability.py)
  share_robust    both (consensus.py's "robust" on the selection set)

A configuration (members differing only in seed) scores the mean of its
members' share_robust; the highest wins (ties: the mean held-out FVU when
known, lower first, then the earlier configuration). Members without
significant features score 0, so a configuration that finds nothing cannot
win on an empty share. Within the chosen configuration the member with the
highest share_robust is the chosen SAE (ties: the lower FVU, then the first).
The test split is never read here: it only reports.
"""

from __future__ import annotations

import numpy as np

from emosae_jax.analysis.stability import same_config_groups

DEFINITION = (
    "score of a member: the share of its significant features that hold on "
    "the selection set (significant there for the same emotion) AND "
    "reappear in >= half of the other seeds of its configuration (0 when "
    "it has none); a configuration scores the mean over its seeds; the "
    "highest wins, and its member with the highest score is the chosen SAE "
    "(ties: lower held-out FVU). The test split is not used.")


def _member_scores(member: dict, j: int) -> dict:
  """Shares of member's significant features holding on validation set j,
  reappearing, and both."""
  feats = member["features"]
  hold = [bool(r["validation"][j]["holds"]) for r in feats]
  seeded = [r for r in feats if r.get("n_other_seeds")]
  again = [(r.get("reappears_in") or 0) >= r["n_other_seeds"] / 2
           if r.get("n_other_seeds") else False for r in feats]
  n = len(feats)
  share = lambda xs: float(np.mean(xs)) if n else 0.0
  return {"member": member["index"], "seed": member["seed"],
          "n_significant": n, "n_hold": int(sum(hold)),
          "n_reappear": int(sum(again)),
          "n_robust": int(sum(h and a for h, a in zip(hold, again))),
          "share_hold": share(hold),
          "share_reappear": share(again) if seeded or not n else None,
          "share_robust": share([h and a for h, a in zip(hold, again)])}


def _mean(values) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def choose(summary: dict, j: int, fvu: dict[int, float] | None = None
           ) -> dict:
  """The selection record: per configuration its members' scores on
  validation set j (summary["validation"][j]) and their means, the chosen
  configuration and member, and what FVU alone would have chosen."""
  members = summary["members"]
  fvu = fvu or {}
  out = []
  for group in same_config_groups([m["overrides"] for m in members]):
    scores = [_member_scores(members[i], j) | {
        "fvu": fvu.get(members[i]["index"])} for i in group]
    out.append({
        "overrides": {k: v for k, v in members[group[0]]["overrides"].items()
                      if k != "seed"},
        "members": scores,
        "score": _mean([s["share_robust"] for s in scores]),
        "share_hold": _mean([s["share_hold"] for s in scores]),
        "share_reappear": _mean([s["share_reappear"] for s in scores]),
        "n_significant": _mean([s["n_significant"] for s in scores]),
        "fvu": _mean([s["fvu"] for s in scores])})
  lower_fvu = lambda x: -(x if x is not None else np.inf)
  best = max(range(len(out)), key=lambda g: (
      out[g]["score"], lower_fvu(out[g]["fvu"]), -g))
  chosen = max(out[best]["members"], key=lambda s: (
      s["share_robust"], lower_fvu(s["fvu"]), -s["member"]))
  by_fvu = [g for g in range(len(out)) if out[g]["fvu"] is not None]
  fvu_pick = (min(by_fvu, key=lambda g: out[g]["fvu"]) if by_fvu else None)
  return {"set": summary["validation"][j]["path"], "set_index": j,
          "definition": DEFINITION, "configurations": out,
          "chosen": {"configuration": best,
                     "overrides": out[best]["overrides"],
                     "member": chosen["member"], "seed": chosen["seed"],
                     "score": out[best]["score"]},
          "fvu_choice": None if fvu_pick is None else {
              "configuration": fvu_pick,
              "overrides": out[fvu_pick]["overrides"],
              "same_as_chosen": fvu_pick == best}}


def sweep_fvu(workdir) -> dict[int, float]:
  """Held-out FVU per member index from a sweep group's sweep.json (empty
  for a single run or when the members record none)."""
  from emosae_jax import runs
  path = workdir / runs.SWEEP_FILE
  if not path.is_file():
    return {}
  out = {}
  for e in runs.read_json(path)["members"]:
    value = runs.summary_metric(e, "fvu")
    if value is not None:
      out[int(e["index"])] = float(value)
  return out

