"""Report sections of the analysis's newer parts: the SAE chosen on the
selection set, validation on other labelled sets (leading with the features
that hold), stability across seeds, robust directions.
`report.analysis_sections` places them."""

from __future__ import annotations

from emosae_jax.analysis.summary import class_mean_verdicts
from emosae_jax.report import (Cell, Section, cell, count_html, esc, fmt,
                               p_cell, table)


def _pct(x) -> str:
  return "–" if x is None else f"{x:.0%}"


def _prompts(prompts: list[dict]) -> str:
  items = "".join(f"<li>{esc(p['text'])} <span class=\"meta\">"
                  f"[{esc(p['emotion'])}, {p['activation']:.2f}]</span></li>"
                  for p in prompts)
  return f'<ol class="prompts">{items}</ol>'


def overrides_text(overrides: dict) -> str:
  """'train.lr=0.003, ...': a configuration's overrides, for a report."""
  return ", ".join(f"{k}={v}" for k, v in overrides.items())


def selection_section(summary: dict) -> Section | None:
  """Which configuration and member were chosen on the selection set, each
  configuration's scores beside its FVU, and what FVU alone would pick."""
  sel = summary.get("selection")
  if not sel:
    return None
  chosen = sel["chosen"]
  rows = []
  for g, c in enumerate(sel["configurations"]):
    config = overrides_text(c["overrides"]) or "–"
    mark = " (chosen)" if g == chosen["configuration"] else ""
    rows.append([Cell(esc(config + mark)), cell(c["score"]),
                 Cell(esc(_pct(c["share_hold"])), c["share_hold"]),
                 Cell(esc(_pct(c["share_reappear"])), c["share_reappear"]),
                 cell(c["n_significant"]), cell(c["fvu"]),
                 Cell(esc(", ".join(
                     f"{s['member']}: {s['share_robust']:.0%}"
                     for s in c["members"])))])
  fvu = sel.get("fvu_choice")
  fvu_line = ("" if fvu is None else
              " FVU alone would choose "
              + esc(overrides_text(fvu["overrides"]) or "it")
              + (" too." if fvu["same_as_chosen"] else
                 ", a different configuration."))
  lead = (f"<p>Chosen SAE: <b>member {chosen['member']}</b> (seed "
          f"{chosen['seed']}; "
          + esc(overrides_text(chosen["overrides"])
                or "the only configuration")
          + f"), chosen on {esc(sel['set'])}, score "
          f"{fmt(chosen['score'])}.{fvu_line} The export steers with it; "
          "the other sets only report.</p>"
          f'<p class="note">{esc(sel["definition"])}</p>')
  return Section("Chosen SAE (by validation agreement)", lead + table(
      ["configuration", "score (share robust)", "share holding there",
       "share reappearing", "significant per seed", "FVU (held out)",
       "member: share robust"], rows, sortable=False), "selection")


def validation_section(summary: dict, max_rows: int = 300) -> Section | None:
  """Per validation set: the share of corpus-significant features that hold
  (beside shuffled validation labels), then the features, holding first."""
  sets = summary.get("validation") or []
  if not sets:
    return None
  n_perm = summary["settings"]["permutations"]
  parts = ['<p class="note">A corpus-significant feature <b>holds</b> when '
           "the same test (permutation p-value, BH q &le; "
           f"{summary['settings']['fdr']}, support &ge; "
           f"{summary['settings']['min_support']}) finds it significant on "
           "the other set for the same emotion. Shuffled: the same count "
           "under each shuffle of the other set's labels. "
           + breadth_note(summary["settings"]) + "</p>"]
  for j, info in enumerate(sets):
    parts.append(f"<h3>{esc(info['path'])}</h3>")
    lines = [f"{info['n_labelled']} labelled examples ("
             + ", ".join(f"{k}: {v}" for k, v in
                         info["examples_per_emotion"].items()) + ")"]
    if info["left_out"]:
      lines.append("left out: " + "; ".join(
          f"{k} ({v})" for k, v in info["left_out"].items()))
    probe = info["corpus_probe"]
    lines.append(f"corpus probe on this set: balanced accuracy "
                 f"{fmt(probe['balanced_accuracy'])} (chance "
                 f"{fmt(probe['chance'])}); a probe fit on this set: "
                 f"{fmt(info['probe_own_cv'])} cross-validated")
    parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in lines)
                 + "</ul>")
    parts.append(breadth_table(summary["members"], j))
    rows = []
    for m in summary["members"]:
      v = m["validation"][j]
      rows.append([cell(m["index"]), cell(v["corpus_significant"]),
                   cell(v["testable"]), Cell(count_html(v["hold"]),
                                             v["hold"]["real"]),
                   Cell(esc(_pct(v["share_hold"])), v["share_hold"]),
                   Cell(esc(_pct(v["share_hold_shuffled"]["mean"]))),
                   Cell(count_html(v["significant_on_validation"]),
                        v["significant_on_validation"]["real"])])
    parts.append(table(["member", "corpus-significant", "testable", "hold",
                        "share holding", "share, shuffled (mean)",
                        "significant on this set"], rows))
    parts.append(_bands_table(summary["members"], j))
    feats = [(m, r) for m in summary["members"] for r in m["features"]]
    feats.sort(key=lambda mr: (not mr[1]["validation"][j]["holds"],
                               mr[1].get("tier") != "broad",
                               -(mr[1]["validation"][j]["auroc"] or 0)))
    rows = []
    for m, r in feats[:max_rows]:
      v = r["validation"][j]
      rows.append([
          cell(m["index"]), cell(r["feature"]), Cell(esc(r["emotion"])),
          Cell(esc(r.get("tier") or "–")), cell(r["support"]),
          Cell("yes" if v["holds"] else "no", int(v["holds"])),
          cell(r["auroc"]), p_cell(r["p_value"], n_perm), cell(v["auroc"]),
          Cell(esc(v["emotion"])), p_cell(v["p_value"], n_perm),
          cell(v["q_value"]), cell(r.get("reappears_in")),
          Cell(_prompts(v["top_prompts"]))])
    parts.append(
        f'<p class="note">Corpus-significant features, those that hold '
        f"first (then broad before narrow, then by AUROC on this set){'; the first ' + str(max_rows) if len(feats) > max_rows else ''}."
        " AUROC on this set is for the corpus emotion; its p and q are for"
        " the emotion the feature is most selective for here.</p>")
    parts.append(table(
        ["member", "feature", "emotion", "tier",
         "corpus examples of its emotion it fires on", "holds",
         "corpus AUROC", "corpus p",
         "AUROC here", "emotion here", "p here", "q here",
         "other seeds it reappears in", "top prompts here"], rows))
  return Section("What holds on other labelled sets", "\n".join(parts),
                 "validation")


def breadth_note(settings: dict) -> str:
  """One sentence: what broad and narrow mean (HTML)."""
  share = settings.get("broad_support")
  if share is None:
    return ""
  fraction = settings.get("min_support_fraction") or 0.0
  every = (f" With min_support_fraction={fraction:g} &ge; broad_support "
           "every significant feature is broad (the test itself asks for "
           "breadth now)." if fraction >= share else "")
  return (f"A significant feature is <b>broad</b> when it fires on &ge; "
          f"{share:.0%} of its emotion's corpus examples (broad_support="
          f"{share:g}), else <b>narrow</b>: a narrow feature follows a few "
          "of the emotion's words and cannot hold where the words are new."
          + every)


def breadth_table(members: list[dict], j: int) -> str:
  """Per member and breadth tier (broad first): significant features, how
  many hold on validation set j beside shuffled labels, how many reappear
  in other seeds. Empty for an analysis written before tiers existed."""
  rows = []
  for tier in ("broad", "narrow"):
    if not any(((m.get("breadth") or {}).get(tier) or {}).get("n")
               for m in members):
      continue  # e.g. no narrow feature passes min_support_fraction
    for m in members:
      v = (m["validation"][j].get("by_breadth") or {}).get(tier)
      b = (m.get("breadth") or {}).get(tier)
      if v is None or b is None:
        continue
      rows.append([cell(m["index"]), Cell(esc(tier)), cell(b["n"]),
                   cell(v["testable"]),
                   Cell(count_html(v["hold"]), v["hold"]["real"]),
                   Cell(esc(_pct(v["share_hold"])), v["share_hold"]),
                   Cell(esc(_pct(v["share_hold_shuffled"]["mean"]))),
                   Cell(esc(_pct(b["share_reappear"])), b["share_reappear"]),
                   Cell(esc(_pct(b["share_reappear_any"])),
                        b["share_reappear_any"])])
  if not rows:
    return ""
  return table(["member", "tier", "significant", "testable", "hold",
                "share holding", "share holding, shuffled labels (mean)",
                "share reappearing in >= half the other seeds",
                "share reappearing in >= 1 other seed"], rows,
               sortable=False)


def _bands_table(members: list[dict], j: int) -> str:
  """Corpus-significant features of all members by corpus AUROC band: how
  many hold on validation set j and reappear in another seed."""
  bands: dict[str, list[int]] = {}
  for m in members:
    for b in m["validation"][j].get("by_corpus_auroc") or []:
      tot = bands.setdefault(b["band"], [0, 0, 0])
      tot[0] += b["n"]
      tot[1] += b["hold"]
      tot[2] += b["reappear"]
  if not bands:
    return ""
  rows = [[Cell(esc(band)), cell(n), cell(hold),
           Cell(esc(_pct(hold / n if n else None))),
           Cell(esc(_pct(re / n if n else None)))]
          for band, (n, hold, re) in bands.items()]
  return ('<p class="note">By corpus AUROC (all members together): a '
          "feature that fires for only a few of an emotion's words has an "
          "AUROC near 0.5 and cannot hold where the words are new.</p>"
          + table(["corpus AUROC", "corpus-significant", "hold",
                   "share holding", "share reappearing in another seed"],
                  rows))


def directions_section(summary: dict) -> Section | None:
  """Per configuration and emotion: the consensus direction of robust
  features beside the best single feature, the class mean and random."""
  dirs = summary.get("directions")
  if not dirs or not dirs["groups"]:
    return None
  sets = [v["path"] for v in summary.get("validation") or []]
  columns = (["configuration", "emotion", "direction", "seeds / spread",
              "probe slope", "AUROC corpus"]
             + [f"AUROC {p}" for p in sets])
  rows = []
  for g in dirs["groups"]:
    config = ", ".join(f"{k}={v}" for k, v in g["overrides"].items()) or "–"
    for name, r in g["emotions"].items():
      if r is None:
        rows.append([Cell(esc(config)), Cell(esc(name)),
                     Cell("no significant feature")] + [cell(None)] * (
                         len(columns) - 3))
        continue
      for kind, c in r["comparison"].items():
        if kind == "consensus":
          what = (f"{r['consensus']['n_seeds']} seeds, spread "
                  f"{r['consensus']['spread']:.3f}, of "
                  f"{r['consensus'].get('tier') or '?'} robust features")
        elif kind == "best_feature":
          what = (f"member {r['best_feature']['member']}, feature "
                  f"{r['best_feature']['feature']}")
        else:
          what = ""
        rows.append([Cell(esc(config)), Cell(esc(name)), Cell(esc(kind)),
                     Cell(esc(what)), cell(c["slope"]),
                     cell(c["auroc_corpus"])]
                    + [cell(a) for a in c["auroc_validation"]])
  note = (f'<p class="note">{esc(dirs["definition"])}. Random: the mean over'
          " random unit directions. Emotions without robust features have "
          "no consensus row. The consensus clusters all robust features "
          "and is chosen among the clusters containing a broad feature "
          "where any do (its row says which tier).</p>")
  verdicts = "".join(f"<li>{esc(v['text'])}</li>"
                     for v in class_mean_verdicts(summary))
  lead = ("<p>Does the best SAE-derived direction reach the class-mean "
          f"baseline?</p><ul>{verdicts}</ul>" if verdicts else "")
  return Section("Robust directions vs baselines",
                 lead + note + table(columns, rows), "directions")
