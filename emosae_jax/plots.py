"""Training figures (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emosae_jax.data import atomic_write_bytes  # noqa: E402
from emosae_jax.runs import summary_metric  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  atomic_write_bytes(path, buf.getvalue())


def training_curves(rows: list[dict], path: str | Path) -> None:
  """Loss, FVU, L0 and dead fraction against epoch, from metrics.jsonl rows."""
  epochs = [r["epoch"] for r in rows]
  ev = "heldout" if "heldout_fvu" in rows[0] else "train"
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
  panels = [("loss", ["step_loss", f"{ev}_loss"], True),
            (f"FVU ({'held out' if ev == 'heldout' else 'training set'})",
             [f"{ev}_fvu"], True),
            ("L0", ["step_l0", f"{ev}_l0"], False),
            ("dead (unfired for dead_window steps)",
             ["dead_window_fraction"], False)]
  for ax, (title, keys, log) in zip(axes, panels):
    for k in keys:
      ax.plot(epochs, [r[k] for r in rows], label=k)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    if log:
      ax.set_yscale("log")
    ax.legend(fontsize=8)
  save_figure(fig, path)


def density_histogram(hist: dict, path: str | Path) -> None:
  fig, ax = plt.subplots(figsize=(6, 3.5))
  edges = hist["log10_rate_edges"]
  ax.stairs(hist["counts"], edges)
  ax.set_xlabel("log10 firing rate (training set)")
  ax.set_ylabel("latents")
  ax.set_title(f"latent density ({hist['dead']} dead)")
  save_figure(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
  """Indices of points not dominated in (lower L0, lower FVU)."""
  front = []
  for i, (l0, fvu) in enumerate(points):
    if not any((l2 <= l0 and f2 <= fvu) and (l2 < l0 or f2 < fvu)
               for j, (l2, f2) in enumerate(points) if j != i):
      front.append(i)
  return front


def pareto(members: list[dict], path: Path) -> None:
  """L0 against held-out FVU of a sweep's ok members, the front marked."""
  ok = [m for m in members if m.get("status") == "ok"]
  if not ok:
    return
  points = [(summary_metric(m, "l0"), summary_metric(m, "fvu")) for m in ok]
  front = sorted(pareto_front(points), key=lambda i: points[i][0])
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(*zip(*points), c="tab:blue", label="member")
  ax.plot([points[i][0] for i in front], [points[i][1] for i in front],
          "o-", c="tab:red", label="Pareto front")
  for m, (x, y) in zip(ok, points):
    ax.annotate(str(m["index"]), (x, y), fontsize=7, alpha=0.7)
  ax.set_xlabel("L0 (mean active latents)")
  ax.set_ylabel("FVU (held out)")
  ax.set_xscale("log")
  ax.legend()
  ax.set_title(f"{len(ok)} members")
  save_figure(fig, path)
