"""The pipeline's residual stages: MusicGen's decoder, beside T5's output.

With --config.residual (on in the real and tiny presets; off offline,
where there is no MusicGen, and in `auto`, whose CPU runs it would make
hours longer), after the T5 stages:

  extract_residual  decoder states per layer (bridge)   residual/layer_LL
  layer_scan        per site (T5 output, each layer):    layer_scan/
                    held-out probe and significant SAE
                    features, each beside shuffled labels
  residual_sweep    the SAE grid on the best layer's     residual_sweep/
                    train split                          residual_train/,
                                                         residual_heldout/
  residual_analysis analysis, validated on its held-out  residual_analysis/
  residual_export   directions at that layer             residual_directions/
  residual_steer    steering there (transformers), same  residual_steering/
                    prompts and strengths as `steer`
  side_by_side      T5 steering vs the layer vs prompt   side_by_side/
                    edit vs random directions (CLAP)

The best layer is the decoder layer standing furthest above its nulls
(emosae_jax.layer_scan.best_layer). Like pipeline.py, never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from emosae_jax import data
from emosae_jax import pipeline as core
from emosae_jax import report as r


def off_reason(ctx) -> str | None:
  """Why the residual stages do not run, or None when they do."""
  if not ctx.config.residual:
    return ("residual stages off (MusicGen's decoder; "
            "--config.residual=True turns them on)")
  if ctx.models.music is None:
    return "residual stages skipped: no MusicGen model (offline preset)"
  return None


def _record(ctx, stage: str) -> dict:
  return ctx.state["stages"].get(stage, {}).get("record", {})


def _blocked(ctx, after: str | None = None) -> dict | None:
  """A skip record when the stages are off or `after` was skipped."""
  reason = off_reason(ctx)
  if reason is None and after is not None:
    done = _record(ctx, after)
    reason = done.get("skipped") or (None if done else
                                     f"the {after} stage has not run")
  return {"skipped": reason} if reason else None


def stage_extract_residual(ctx) -> dict:
  if (skip := _blocked(ctx)):
    return skip
  d = ctx.config.decoder
  layers = [f"--layers={d.layers}"] if d.layers else []
  core._run_bridge(ctx.config, [  # pylint: disable=protected-access
      core._script("extract_residual.py"),  # pylint: disable=protected-access
      f"--prompts={ctx.path('prompts.jsonl')}", f"--model={ctx.models.music}",
      f"--out={ctx.path('residual')}", f"--max_new_tokens={d.max_new_tokens}",
      f"--batch_size={d.batch_size}", f"--device={ctx.config.device}",
      *layers], "residual extraction")
  manifest = json.loads(ctx.path("residual", "residual.json").read_text())
  return {"layers": manifest["layers"], "sets": manifest["sets"]}


def scan_settings(config):
  from emosae_jax import layer_scan
  d, s, a = config.decoder, config.sweep, config.analysis
  return layer_scan.ScanSettings(
      shuffles=d.scan_shuffles, arch=s.arch, expansion=d.scan_expansion,
      k=s.k, epochs=d.scan_epochs, batch_size=s.batch_size,
      lr=float(s.learning_rates.split(",")[0]),
      permutations=d.scan_permutations, fdr=a.fdr, min_support=a.min_support,
      min_support_fraction=a.min_support_fraction)


def stage_layer_scan(ctx) -> dict:
  if (skip := _blocked(ctx, "extract_residual")):
    return skip
  from emosae_jax import layer_scan
  result = layer_scan.scan([ctx.path("embeddings"), ctx.path("residual")],
                           ctx.path("layer_scan"), scan_settings(ctx.config))
  return {"sites": len(result["rows"]), "best": result["best"]}


def stage_residual_sweep(ctx) -> dict:
  """The best layer's set split like the T5 set (train / held out by the
  prompts' split); the SAE grid trains on the train part."""
  if (skip := _blocked(ctx, "layer_scan")):
    return skip
  from emosae_jax import prompts, splits
  best = _record(ctx, "layer_scan")["best"]
  if best is None:
    return {"skipped": "no decoder layer was scanned"}
  es = data.load_embedding_set(best["path"])
  sets = splits.split_by_prompts(es, prompts.read_prompts(
      ctx.path("prompts.jsonl")))
  train = Path(best["path"])
  if not isinstance(sets, str):
    for name, subset in sets.items():
      data.save_embedding_set(subset, ctx.path(f"residual_{name}"))
    train = ctx.path("residual_train")
  record = core.sae_sweep(ctx, train, ctx.path("residual_sweep"))
  return record | {"layer": best["layer"], "set": best["path"]}


def stage_residual_analysis(ctx) -> dict:
  if (skip := _blocked(ctx, "residual_sweep")):
    return skip
  held = ctx.path("residual_heldout")
  validation = [str(held)] if (held / data.SIDECAR_FILE).exists() else []
  val = core.selection_set(ctx, "residual_val")
  return core.sae_analysis(ctx, core.first_group(ctx, "residual_sweep"),
                           ctx.path("residual_analysis"),
                           validation + ([val] if val else []), val)


def stage_residual_export(ctx) -> dict:
  if (skip := _blocked(ctx, "residual_analysis")):
    return skip
  record = core.export_directions(
      ctx, core.first_group(ctx, "residual_sweep"),
      ctx.path("residual_analysis"), ctx.path("residual_directions"))
  site = json.loads(ctx.path("residual_directions", "directions.json")
                    .read_text()).get("site")
  return record | {"site": site}


def stage_residual_steer(ctx) -> dict:
  """The transformers backend: bridge.residual_steering's hooks."""
  if (skip := _blocked(ctx, "residual_export")):
    return skip
  return core.steer_clips(ctx, "residual_export", "residual_directions",
                          "residual_steering", "transformers")


def stage_side_by_side(ctx) -> dict:
  if (skip := _blocked(ctx, "residual_steer")):
    return skip
  if ctx.models.clap is None:
    return {"skipped": "no CLAP model to score the clips"}
  runs = [ctx.path(d) for d in ("steering", "residual_steering")
          if ctx.path(d, "steering.json").exists()]
  if not runs:
    return {"skipped": "no steering clips to compare"}
  core._run_bridge(ctx.config, [  # pylint: disable=protected-access
      core._script("side_by_side.py"),  # pylint: disable=protected-access
      f"--steering={','.join(map(str, runs))}",
      f"--out={ctx.path('side_by_side')}", f"--clap={ctx.models.clap}",
      f"--device={ctx.config.device}"], "side-by-side evaluation")
  table = json.loads(ctx.path("side_by_side", "side_by_side.json")
                     .read_text())
  return {"rows": len(table["rows"]), "runs": [str(p) for p in runs]}


# --------------------------------------------------------------------------
# Report sections


def report_sections(ctx) -> list[r.Section]:
  """The layer scan and the side-by-side table, when the stages ran."""
  out = []
  scan = ctx.path("layer_scan", "layer_scan.json")
  if scan.exists():
    out.append(scan_section(ctx, json.loads(scan.read_text())))
  table = ctx.path("side_by_side", "side_by_side.json")
  if table.exists():
    out.append(side_by_side_section(json.loads(table.read_text())))
  return out


def scan_section(ctx, result: dict) -> r.Section:
  from emosae_jax import layer_scan
  s, best = result["settings"], result["best"]
  body = (
      "<p>Per site, a probe trained on some templates and tested on held-out"
      f" ones, beside {s['shuffles']} probes trained on shuffled labels; and"
      f" the significant features of a small SAE ({s['arch']}, "
      f"{s['expansion']}x, {s['epochs']} epochs) trained on the site's set "
      f"(permutation test, BH q &le; {s['fdr']:g}, support &ge; "
      f"{s['min_support']} and &ge; {s.get('min_support_fraction', 0):g} of "
      "the emotion's examples), beside the same count under each of "
      f"{s['permutations']} label shuffles. A reading counts only as far as "
      "it stands above its null.</p>")
  if best:
    body += (f"<p>Best decoder layer: <b>{r.esc(best['site'])}</b> (probe "
             f"{best['probe_excess']:+.3f} over its null, "
             f"{best['feature_excess']:+.1f} features over its null); the "
             "residual SAEs and steering below use it.</p>")
  rows = [[r.cell(v) for v in row] for row in layer_scan.table_rows(result)]
  body += r.table(layer_scan.TABLE_COLUMNS, rows, sortable=False)
  png = ctx.path("layer_scan", layer_scan.PLOT_FILE)
  if png.exists():
    body += r.img_tag(png, "layer scan")
  return r.Section("Where does emotion live? Layer scan", body,
                   id="layer-scan")


def side_by_side_section(table: dict) -> r.Section:
  rows = [[r.cell(x["strength"]), r.cell(x["method"]), r.cell(x["n"]),
           r.cell(", ".join(x["emotions"])), r.cell(x["target_change"]),
           r.cell(x["target_change_sem"]), r.cell(x["valence_change"])]
          for x in table["rows"]]
  body = ("<p>On the same prompts and strengths: each run's directions at "
          "their site, random directions of the same norm, and the emotion "
          "word written into the prompt (no strength: the same clips at "
          f"every strength). Each value: {r.esc(table['measure'])}.</p>"
          + r.table(["strength", "method", "clips", "emotions",
                     "change in P(emotion)", "± s.e.", "change in valence"],
                    rows, sortable=False))
  return r.Section("Steering side by side", body, id="side-by-side")
