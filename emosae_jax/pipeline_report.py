"""The pipeline's report.html: run summary, phase 0, sweep, analysis and
steering on one self-contained page (sections from emosae_jax.report)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from emosae_jax import report as r
from emosae_jax import runs

_MAX_AUDIO_CLIPS = 40  # keeps the page a reasonable size


def _json(path: Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def run_section(ctx) -> r.Section:
  m = ctx.models
  rows = [("preset", m.preset), ("text model", m.text),
          ("MusicGen", m.music or "none"), ("CLAP", m.clap or "none")]
  body = "".join(f'<p class="note"><b>Note:</b> {r.esc(n)}</p>'
                 for n in m.notes)
  body += r.table(["setting", "value"], [[r.cell(k), r.cell(v)]
                                         for k, v in rows], sortable=False)
  stages = [[r.cell(name), r.cell(_status(rec.get("record", {}))),
             r.cell(rec.get("seconds"))]
            for name, rec in ctx.state["stages"].items()]
  body += r.table(["stage", "status", "seconds"], stages, sortable=False)
  return r.Section("Run", body, id="run")


def _reason(text: str) -> str:
  """A skip reason without its own "<stage> skipped: " lead, for places
  that already say "Skipped"."""
  return re.sub(r"^\w+ skipped:\s*", "", text)


def _status(record: dict) -> str:
  if "skipped" in record:
    return "skipped: " + _reason(record["skipped"])
  return "ok" + (f" ({record['note']})" if "note" in record else "")


def holds_section(ctx) -> r.Section | None:
  """What holds beyond the corpus, first: per validation set (the held-out
  split first) the broad tier's and the narrow tier's holding and
  reappearing (broad first), then the share of all corpus-significant
  features that hold beside its shuffled null, the share reappearing in
  other seeds, the corpus probe's balanced accuracy there; then the
  class-mean verdicts."""
  from emosae_jax.analysis.report_sections import breadth_note, breadth_table
  from emosae_jax.analysis.summary import class_mean_verdicts
  summary = _json(ctx.path("analysis", "analysis.json"))
  split = ctx.state["stages"].get("split", {}).get("record", {})
  parts = [f"<p>{r.esc(_split_line(split))}</p>"]
  if summary is None:
    return r.Section("What holds", "".join(parts), id="holds")
  parts.append(_chosen_line(ctx, summary))
  for j, info in enumerate(summary.get("validation") or []):
    probe = info["corpus_probe"]
    parts.append(
        f"<h3>{r.esc(_set_name(ctx, info['path']))}</h3><p>"
        f"{info['n_labelled']} labelled examples; the probe trained on the "
        "corpus reaches balanced accuracy <b>"
        f"{r.fmt(probe['balanced_accuracy'])}</b> here (chance "
        f"{r.fmt(probe['chance'])}).</p>")
    tiers = breadth_table(summary["members"], j)
    if tiers:
      parts.append(f'<p class="note">{breadth_note(summary["settings"])}'
                   "</p>" + tiers + "<p>All corpus-significant features:</p>")
    parts.append(r.table(
        ["member", "corpus-significant", "hold",
         "share holding", "share holding, shuffled labels (mean)",
         "share reappearing in >= half the other seeds",
         "BH-only: significant", "BH-only: share holding (shuffled)"],
        [_holds_row(m, j) for m in summary["members"]], sortable=False))
  verdicts = class_mean_verdicts(summary)
  if verdicts:
    parts.append("<p>Best SAE-derived direction vs the class-mean direction"
                 " (AUROC):</p><ul>" + "".join(
                     f"<li>{r.esc(_named(ctx, v['text']))}</li>"
                     for v in verdicts)
                 + "</ul>")
  return r.Section("What holds", "".join(parts), id="holds")


def _holds_row(member: dict, j: int) -> list:
  v = member["validation"][j]
  bh = v.get("bh") or {}
  n_bh = next((c["real"] for c in member["counts"]
               if c["name"] == "bh_significant"), None)
  return [r.cell(member["index"]), r.cell(v["corpus_significant"]),
          r.Cell(r.count_html(v["hold"]), v["hold"]["real"]),
          r.Cell(r.esc(_pct(v["share_hold"]))),
          r.Cell(r.esc(_pct(v["share_hold_shuffled"]["mean"]))),
          r.Cell(r.esc(_pct(member.get("fraction_reappearing")))),
          r.cell(n_bh),
          r.Cell(r.esc(f"{_pct(bh.get('share_hold'))} ("
                       f"{_pct((bh.get('share_hold_shuffled') or {}).get('mean'))})"
                       if bh else "–"))]


def _chosen_line(ctx, summary: dict) -> str:
  """One paragraph: the SAE chosen on the val split and, on each other
  validation set, the share of its significant features that hold (beside
  shuffled labels) and reappear; empty without a selection."""
  from emosae_jax.analysis.report_sections import overrides_text
  sel = summary.get("selection")
  if not sel:
    return ""
  c = sel["chosen"]
  m = next(m for m in summary["members"] if m["index"] == c["member"])
  config = overrides_text(c["overrides"])
  s = summary["settings"]
  sig = next(x for x in m["counts"] if x["name"] == "significant")
  rule = (f"BH q &le; {s['fdr']:g}, support &ge; {s['min_support']}"
          + (f" and &ge; {s['min_support_fraction']:.0%} of the emotion's "
             "examples" if s.get("min_support_fraction") else ""))
  held = [f"on the {r.esc(_set_name(ctx, v['path']))} <b>"
          f"{_pct(v['share_hold'])}</b> hold ({v['hold']['real']} of "
          f"{v['testable']}, {_interval(v['hold']['real'], v['testable'])};"
          f" shuffled labels {_pct(v['share_hold_shuffled']['mean'])})"
          for j, v in enumerate(m["validation"]) if j != sel["set_index"]]
  reappear = m.get("fraction_reappearing")
  reappear_ci = ("" if reappear is None else " (" + _interval(
      round(reappear * sig["real"]), sig["real"]) + ")")
  return (f"<p><b>Chosen SAE: member {c['member']}</b> ({r.esc(config)}, "
          f"seed {c['seed']}), chosen on the "
          f"{r.esc(_set_name(ctx, sel['set']))} by the share of its "
          "significant features that hold there and reappear in other seeds"
          f" (score {r.fmt(c['score'])}). It has <b>{sig['real']}</b> "
          f"significant features ({rule}; shuffled labels "
          f"{sig['shuffled']['mean']:.1f}); "
          + "; ".join(held) + f"; <b>{_pct(reappear)}</b>{reappear_ci} "
          "reappear in at least half of the other seeds.</p>")


def _pct(x) -> str:
  return "–" if x is None else f"{x:.0%}"


def _interval(k: int, n: int) -> str:
  """'95% CI 19-81%' (Wilson) for k of n."""
  from emosae_jax.metrics import wilson_interval
  low, high = wilson_interval(k, n)
  return f"95% CI {low:.0%}-{high:.0%}"


def _split_line(split: dict) -> str:
  if "skipped" in split:
    return "No held-out split: " + _reason(split["skipped"])
  if "heldout" not in split:
    return "No held-out split (the split stage has not run)."
  val = (f"; val split (the SAE is chosen there): {split['val']} prompts "
         "with templates and emotion words of its own" if "val" in split
         else "")
  return (f"SAEs trained on the train split ({split['train']} prompts)"
          f"{val}; held-out split: {split['heldout']} prompts, a held-out "
          f"share of {split['heldout_share']:.0%} (templates, emotion words "
          "and a caption style not seen in training nor in val); it only "
          "reports.")


def _named(ctx, text: str) -> str:
  for path in (ctx.path("embeddings_heldout"), ctx.path("embeddings_captions"),
               ctx.path("embeddings_val")):
    text = text.replace(str(path), _set_name(ctx, str(path)))
  return text


def _set_name(ctx, path: str) -> str:
  names = {str(ctx.path("embeddings_heldout")): "held-out split",
           str(ctx.path("embeddings_val")): "val split (selection set)",
           str(ctx.path("embeddings_captions")): "validation captions ("
           + str(ctx.config.validation_captions) + ")"}
  return names.get(path, path)


def phase0_section(ctx) -> r.Section | None:
  result = _json(ctx.path("phase0", "phase0.json"))
  if result is None:
    return None
  held, kfold = result["probe_heldout"], result["probe_kfold"]
  cos = result["cosine"]
  rows = [("probe accuracy, held-out templates", held["accuracy"],
           held["chance"]),
          ("probe accuracy, k-fold (folds share templates)",
           kfold["accuracy"], kfold["chance"])]
  words = result.get("probe_heldout_words")
  if words:
    rows.append(("probe accuracy, held-out emotion words",
                 words["accuracy"], words["chance"]))
  rows += _val_chosen_rows(result)
  body = r.table(["measure", "value", "chance"],
                 [[r.cell(a), r.cell(b), r.cell(c)] for a, b, c in rows],
                 sortable=False)
  body += (f'<p>Cosine similarity within emotions {r.fmt(cos.get("within"))}'
           f' vs between {r.fmt(cos.get("between"))} (permutation p = '
           f'{r.fmt(cos.get("p_value"))}).</p>')
  for name in result.get("plots", []):
    png = ctx.path("phase0", name)
    if png.exists():
      body += r.img_tag(png, name)
  return r.Section("Phase 0: are emotions in the embeddings?", body,
                   id="phase0")


def _val_chosen_rows(result: dict) -> list[tuple]:
  """The val-chosen probe's balanced accuracy on val and test, beside the
  shuffled-label probe's (its chance), and the older train+val figure."""
  rows = []
  style = result.get("probe_heldout_style")
  if style:
    part = style["heldout_split"]
    rows.append(("balanced accuracy, held-out split (probe fit on train + "
                 "val, C by template-grouped CV)", part["balanced_accuracy"],
                 part["shuffled_label_balanced_accuracy"]))
  chosen = result.get("probe_val_chosen")
  if chosen and "skipped" not in chosen:
    how = (f"C={chosen['C']}, {chosen['content_directions']} content "
           "directions removed, both chosen on val")
    for part, name in (("val", "val split"), ("test", "held-out split")):
      rows.append((f"balanced accuracy, {name} (probe fit on train; {how}; "
                   "chance: shuffled-label probe)",
                   chosen[part]["balanced_accuracy"],
                   chosen[part]["shuffled_label_balanced_accuracy"]))
  return rows


def sweep_section(ctx) -> r.Section | None:
  result = _json(ctx.path("sweep", runs.SWEEP_FILE))
  if result is None:
    return None
  rows = [[r.cell(m["index"]), r.cell(json.dumps(m["overrides"])),
           r.cell(m["status"]), r.cell(runs.summary_metric(m, "fvu")),
           r.cell(runs.summary_metric(m, "l0")),
           r.cell(m.get("never_fires_fraction"))]
          for m in result["members"]]
  body = r.table(["member", "overrides", "status", "FVU (held out)", "L0",
                  "dead fraction"], rows)
  if ctx.path("sweep", "pareto.png").exists():
    body += r.img_tag(ctx.path("sweep", "pareto.png"), "L0 vs FVU")
  return r.Section("SAE sweep", body, id="sweep")


def analysis_sections(ctx) -> list[r.Section]:
  summary = _json(ctx.path("analysis", "analysis.json"))
  if summary is None:
    return []
  figures = {k: ctx.path("analysis", v)
             for k, v in summary.get("figures", {}).items()}
  return r.analysis_sections(summary, figures)


def steering_section(ctx) -> r.Section:
  record = ctx.state["stages"].get("steer", {}).get("record", {})
  run = _json(ctx.path("steering", "steering.json"))
  if run is None:
    reason = _reason(record.get("skipped", "the steer stage has not run"))
    return r.Section("Steering", f"<p><b>Skipped:</b> {r.esc(reason)}</p>",
                     id="steering")
  evaluation = _json(ctx.path("steering", "evaluation.json"))
  body = ""
  if evaluation:
    body += _effects_table(evaluation)
    plot = ctx.path("steering", "dose_response.png")
    if plot.exists():
      body += r.img_tag(plot, "dose-response")
  else:
    reason = ctx.state["stages"].get("evaluate", {}).get("record", {}).get(
        "skipped", "not evaluated")
    body += f"<p><b>Evaluation skipped:</b> {r.esc(_reason(reason))}</p>"
  body += _clips_table(ctx, run["clips"])
  return r.Section("Steering", body, id="steering")


def _slope(entry: dict) -> str:
  slope, err = entry.get("slope"), entry.get("stderr")
  return "n/a" if slope is None else (
      f"{slope:+.4f}" + (f" ± {err:.4f}" if err is not None else ""))


def _effects_table(evaluation: dict) -> str:
  rows = []
  for f in evaluation["features"]:
    rows.append([r.cell(f["feature"]), r.cell(f["emotion"]),
                 r.cell(_slope(f["steer"]["valence"])),
                 r.cell(_slope(f["random"]["valence"])),
                 r.cell(f["prompt_edit"]["valence"]["effect"]),
                 r.cell(_slope(f["steer"]["target"])),
                 r.cell(_slope(f["random"]["target"])),
                 r.cell(f["prompt_edit"]["target"]["effect"])])
  return ("<p>Dose-response slopes per unit strength (CLAP zero-shot), "
          "each beside a random direction of the same norm and the plain "
          "prompt edit.</p>" + r.table(
              ["feature", "emotion", "valence slope", "random valence slope",
               "prompt-edit valence", "P(emotion) slope",
               "random P(emotion) slope", "prompt-edit P(emotion)"], rows))


def _clips_table(ctx, clips: list[dict]) -> str:
  rows = []
  for clip in clips[:_MAX_AUDIO_CLIPS]:
    wav = ctx.path("steering", clip["path"])
    player = r.audio_tag(wav, clip["path"]) if wav.exists() else "missing"
    rows.append([r.cell(clip.get("kind")), r.cell(clip.get("feature")),
                 r.cell(clip.get("emotion")), r.cell(clip.get("strength")),
                 r.cell(clip.get("prompt")), r.Cell(player)])
  more = len(clips) - len(rows)
  note = f"<p class='note'>{more} more clips in steering/clips.</p>" if (
      more > 0) else ""
  return r.table(["kind", "feature", "emotion", "strength", "prompt",
                  "audio"], rows) + note


def write(ctx) -> Path:
  sections = [holds_section(ctx), run_section(ctx)]
  for extra in (phase0_section(ctx), sweep_section(ctx)):
    if extra is not None:
      sections.append(extra)
  sections += analysis_sections(ctx)
  sections.append(steering_section(ctx))
  from emosae_jax import pipeline_residual  # layer scan, side by side
  sections += pipeline_residual.report_sections(ctx)
  title = f"emosae: emotion features in {ctx.models.text} ({ctx.models.preset})"
  return r.write_report(ctx.path("report.html"), title, sections)
