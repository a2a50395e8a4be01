"""Figures of the feature analysis (matplotlib Agg, atomic PNG writes).

  heatmap.png          significant features x emotion (activation rate,
                       scaled per feature), the top of every emotion
  selectivity_null.png real vs shuffled-label distributions of the reference
                       selectivity and of the max-AUROC statistic, and the
                       selective counts of every member beside their nulls
  dose_response.png    the probe's P(target emotion) against steering
                       strength, feature direction vs random directions
  validation.png       (with validation sets) corpus AUROC vs AUROC on each
                       validation set of every significant feature
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emosae_jax.plots import plt, save_figure


def _primary(summary: dict) -> int:
  """The member shown in single-member figures: most significant features."""
  counts = [len(m["features"]) for m in summary["members"]]
  return int(np.argmax(counts)) if counts else 0


def heatmap_rows(member: dict, names: list[str],
                 max_features: int = 120) -> list[dict]:
  """The features the heatmap shows: the top (by AUROC) of every emotion,
  an equal share each (a share one emotion leaves unused goes to the
  others), grouped by emotion."""
  by_emotion = {n: sorted((r for r in member["features"]
                           if r["emotion"] == n), key=lambda r: -r["auroc"])
                for n in names}
  shown = {n: 0 for n in names}
  left = max_features
  while left > 0:
    open_ = [n for n in names if shown[n] < len(by_emotion[n])]
    if not open_:
      break
    share = max(left // len(open_), 1)
    for n in open_:
      take = min(share, len(by_emotion[n]) - shown[n], left)
      shown[n] += take
      left -= take
  return [r for n in names for r in by_emotion[n][:shown[n]]]


def heatmap(summary: dict, path: Path, max_features: int = 120) -> None:
  i = _primary(summary)
  member = summary["members"][i]
  names = summary["data"]["label_names"]
  feats = heatmap_rows(member, names, max_features)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names),
                                  1.5 + 0.12 * max(len(feats), 8)))
  if feats:
    rates = np.array([[r["rate"][n] for n in names] for r in feats])
    scaled = rates / np.maximum(rates.max(1, keepdims=True), 1e-12)
    im = ax.imshow(scaled, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest")
    ax.set_yticks(range(len(feats)))
    ax.set_yticklabels([f"{r['feature']} ({r['emotion']})" for r in feats],
                       fontsize=6)
    fig.colorbar(im, ax=ax, label="activation rate / feature's max rate")
  else:
    ax.text(0.5, 0.5, "no significant features", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_yticks([])
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=45, ha="right")
  cut = len(member["features"]) - len(feats)
  ax.set_title(f"significant features, member {member['index']}"
               + (f" (top {len(feats)}, every emotion; {cut} more in "
                  "analysis.json)" if cut else ""))
  save_figure(fig, path)


def _count(member: dict, name: str) -> dict:
  return next(c for c in member["counts"] if c["name"] == name)


def selectivity_null(summary: dict, path: Path) -> None:
  i = _primary(summary)
  hist = summary["histograms"]
  h = hist["members"][i]
  fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
  for ax, key, edges, label in (
      (axes[0], "selectivity", hist["selectivity_edges"],
       "reference selectivity (max rate / mean rate)"),
      (axes[1], "statistic", hist["statistic_edges"],
       "max over emotions of one-vs-rest AUROC")):
    ax.stairs(h[f"{key}_hist"], edges, label="real labels")
    ax.stairs(h[f"null_{key}_hist"], edges, label="shuffled (mean)",
              linestyle="--")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel(label)
    ax.set_ylabel("live features")
    ax.legend(fontsize=8)
  for t in summary["settings"]["selectivity_thresholds"]:
    axes[0].axvline(t, color="grey", lw=0.8)
  axes[0].set_title(f"member {summary['members'][i]['index']}")
  ax = axes[2]
  names = [c["name"] for c in summary["members"][0]["counts"]
           if "/" not in c["name"]]
  width = 0.8 / len(names)
  for n_i, name in enumerate(names):
    xs = np.arange(len(summary["members"])) + n_i * width
    cs = [_count(m, name) for m in summary["members"]]
    ax.bar(xs, [c["real"] for c in cs], width, label=f"{name} (real)")
    lo = [c["shuffled"]["min"] for c in cs]
    hi = [c["shuffled"]["max"] for c in cs]
    mean = [c["shuffled"]["mean"] for c in cs]
    ax.errorbar(xs, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)],
                fmt="k_", capsize=3, label="shuffled mean, range" if n_i == 0
                else None)
  ax.set_xticks(np.arange(len(summary["members"])) + 0.4 - width / 2)
  ax.set_xticklabels([m["index"] for m in summary["members"]])
  ax.set_xlabel("member")
  ax.set_ylabel("features")
  ax.set_title("selective counts vs shuffled labels")
  ax.legend(fontsize=7)
  save_figure(fig, path)


def dose_response(summary: dict, path: Path, n_curves: int = 8) -> None:
  i = _primary(summary)
  strengths = summary["settings"]["strengths"]
  feats = [r for r in summary["members"][i]["features"] if r["causal"]]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  ax = axes[0]
  best = sorted(feats, key=lambda r: -r["causal"]["slope"])[:n_curves]
  for r in best:
    line, = ax.plot(strengths, r["causal"]["dose"], marker="o",
                    label=f"{r['feature']} ({r['emotion']})")
    ax.plot(strengths, r["causal"]["dose_random"], linestyle="--",
            color=line.get_color())
  ax.set_xlabel("strength (x typical activation)")
  ax.set_ylabel("probe P(feature's emotion), other emotions' prompts")
  ax.set_title("dose-response (dashed: random directions, same norm)")
  if best:
    ax.legend(fontsize=7)
  ax = axes[1]
  if feats:
    dose = np.array([r["causal"]["dose"] for r in feats])
    rand = np.array([r["causal"]["dose_random"] for r in feats])
    for arr, label, style in ((dose, "feature directions", "-"),
                              (rand, "random directions", "--")):
      mean = arr.mean(0)
      ax.plot(strengths, mean, style, marker="o", label=label)
      ax.fill_between(strengths, np.percentile(arr, 10, 0),
                      np.percentile(arr, 90, 0), alpha=0.2)
    ax.legend(fontsize=8)
  ax.set_xlabel("strength (x typical activation)")
  ax.set_title("all significant features: mean, 10-90%")
  save_figure(fig, path)


def validation_scatter(summary: dict, path: Path) -> None:
  """Corpus AUROC against AUROC on each validation set (same emotion) of
  every member's significant features; those that hold marked."""
  sets = summary["validation"]
  fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.5),
                           squeeze=False)
  for j, (ax, info) in enumerate(zip(axes[0], sets)):
    points = [(r["auroc"], r["validation"][j]["auroc"],
               r["validation"][j]["holds"])
              for m in summary["members"] for r in m["features"]
              if r["validation"][j]["auroc"] is not None]
    for holds, label, style in ((False, "does not hold", "o"),
                                (True, "holds", "*")):
      xy = np.array([(a, b) for a, b, h in points if h == holds]).reshape(
          -1, 2)
      ax.scatter(xy[:, 0], xy[:, 1], s=14 if style == "o" else 40,
                 marker=style, alpha=0.6, label=f"{label} ({len(xy)})")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.plot([0.5, 1], [0.5, 1], color="grey", lw=0.8, linestyle="--")
    ax.set_xlabel("AUROC on the corpus")
    ax.set_ylabel("AUROC on the validation set (same emotion)")
    ax.set_title(Path(info["path"]).name, fontsize=9)
    ax.legend(fontsize=8)
  save_figure(fig, path)


def write_all(result, out: Path) -> dict[str, Path]:
  """Writes every figure of `result` (an analysis.Result) into out/."""
  paths = {"heatmap": out / "heatmap.png",
           "selectivity_null": out / "selectivity_null.png",
           "dose_response": out / "dose_response.png"}
  heatmap(result.summary, paths["heatmap"])
  selectivity_null(result.summary, paths["selectivity_null"])
  dose_response(result.summary, paths["dose_response"])
  if result.summary.get("validation"):
    paths["validation"] = out / "validation.png"
    validation_scatter(result.summary, paths["validation"])
  return paths
