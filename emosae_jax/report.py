"""report.html: one self-contained page (inline PNGs and JS, no network).

A report is a list of `Section`s rendered by `render_report`; each part of
the pipeline contributes sections through its own function, so a later stage
(e.g. steering: audio players, dose-response from the bridge) appends
sections without touching these:

  sections = analysis_sections(summary, figures)
  sections.append(Section("Steering", body_html, id="steering"))
  write_report(path, "emosae analysis", sections)

Helpers build the pieces safely: `esc` (html.escape), `img_tag` and
`audio_tag` (base64 data URIs), `table` (sortable by clicking a header).
Counts of selective features are only ever rendered by `count_html`, which
always puts the shuffled-label baseline beside the count.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from emosae_jax.data import atomic_write_bytes


@dataclasses.dataclass
class Section:
  title: str
  body: str  # HTML, already escaped where it holds text
  id: str = ""


def esc(value: Any) -> str:
  return html.escape(str(value), quote=True)


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def img_tag(png: bytes | str | Path, alt: str) -> str:
  """An <img> holding the PNG inline (bytes or a path to a PNG)."""
  if not isinstance(png, bytes):
    png = Path(png).read_bytes()
  data = base64.b64encode(png).decode("ascii")
  return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def audio_tag(wav: bytes | str | Path, label: str = "") -> str:
  """An inline <audio> player for a WAV file (for steering sections)."""
  if not isinstance(wav, bytes):
    wav = Path(wav).read_bytes()
  data = base64.b64encode(wav).decode("ascii")
  return (f'<audio controls title="{esc(label)}" '
          f'src="data:audio/wav;base64,{data}"></audio>')


def fmt(value: Any, digits: int = 3) -> str:
  if value is None:
    return "–"
  if isinstance(value, float):
    if value != value:
      return "–"
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e5):
      return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
  return str(value)


@dataclasses.dataclass
class Cell:
  """A table cell: `html` is shown, `key` (number or text) sorts it."""

  html: str
  key: Any = None


def cell(value: Any, digits: int = 3) -> Cell:
  """A cell for a plain value, escaped, sorting by the value itself."""
  key = value if isinstance(value, (int, float)) and value == value else None
  return Cell(esc(fmt(value, digits)), key)


def table(columns: Sequence[str], rows: Iterable[Sequence[Cell]],
          sortable: bool = True, css_class: str = "") -> str:
  """An HTML table; with sortable, clicking a header sorts by that column."""
  cls = " ".join(c for c in ("sortable" if sortable else "", css_class) if c)
  head = "".join(f"<th>{esc(c)}</th>" for c in columns)
  body = []
  for row in rows:
    tds = []
    for c in row:
      key = "" if c.key is None else f' data-key="{esc(c.key)}"'
      tds.append(f"<td{key}>{c.html}</td>")
    body.append("<tr>" + "".join(tds) + "</tr>")
  return (f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>'
          + "\n".join(body) + "</tbody></table>")


def p_cell(p: float, permutations: int) -> Cell:
  """A permutation p-value; at the floor 1/(P+1) it reads "< 1/(P+1)" (e.g.
  "< 0.001"): no shuffle reached the real statistic, so p is only bounded."""
  floor = 1.0 / (permutations + 1)
  if p <= floor * (1 + 1e-6):
    return Cell(esc(f"< {floor:.2g}"), p)
  return cell(p)


def count_html(entry: dict) -> str:
  """A selective-feature count with its shuffled-label baseline beside it."""
  s = entry["shuffled"]
  return (f'<span class="count">{entry["real"]}</span> '
          f'<span class="baseline">(shuffled labels: mean {s["mean"]:.1f}, '
          f'range {s["min"]}–{s["max"]}, {s["n_shuffles"]} shuffles)</span>')


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;
 padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3}table.sortable th{cursor:pointer}
table.sortable th.asc:after{content:" \\25B2"}
table.sortable th.desc:after{content:" \\25BC"}
.baseline,.meta{color:#666;font-size:.9em}.count{font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.prompts{max-width:40em;font-size:.9em}.note{color:#555;font-size:.9em}
nav a{margin-right:1em}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){
  th.addEventListener('click',function(){
   var asc=!th.classList.contains('asc');
   t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});
   th.classList.add(asc?'asc':'desc');
   var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
   function key(r){var c=r.cells[i];if(!c)return '';
    var k=c.getAttribute('data-key');if(k===null)k=c.textContent;
    var n=parseFloat(k);return isNaN(n)||!/^\\s*[-+0-9.eE]+\\s*$/.test(k)?k:n}
   rows.sort(function(a,b){var x=key(a),y=key(b);
    if(typeof x!==typeof y){x=String(x);y=String(y)}
    return (x<y?-1:x>y?1:0)*(asc?1:-1)});
   rows.forEach(function(r){body.appendChild(r)});
  });
 });
});
"""


def render_report(title: str, sections: Sequence[Section]) -> str:
  """The whole page: title, a contents line, then each section."""
  nav = " ".join(f'<a href="#{esc(s.id or slug(s.title))}">{esc(s.title)}'
                 "</a>" for s in sections)
  parts = [f'<section id="{esc(s.id or slug(s.title))}"><h2>{esc(s.title)}'
           f"</h2>\n{s.body}\n</section>" for s in sections]
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
          f"<h1>{esc(title)}</h1><nav>{nav}</nav>\n" + "\n".join(parts)
          + f"<script>{_SCRIPT}</script></body></html>\n")


def write_report(path: str | Path, title: str,
                 sections: Sequence[Section]) -> Path:
  path = Path(path)
  atomic_write_bytes(path, render_report(title, sections).encode("utf-8"))
  return path


# --------------------------------------------------------------------------
# Analysis sections


def summary_section(summary: dict) -> Section:
  src, d, s = summary["source"], summary["data"], summary["settings"]
  probe, perm = summary["probe"], summary["permutation"]
  rows = [
      ("workdir", src["workdir"]),
      ("SAE", f"{src['arch']}, d_in={src['d_in']}, d_sae={src['d_sae']}, "
              f"{len(summary['members'])} member(s)"
              + (" of a sweep" if src["is_sweep"] else "")),
      ("data", f"{src['data_path'] or '(from the run config)'} "
               f"(hash {src['data_hash']}"
               + ("" if src["same_data_as_training"]
                  else ", not the training data") + ")"),
      ("encoder", src.get("encoder")),
      ("labelled examples", f"{d['n_labelled']} "
       + ", ".join(f"{k}: {v}" for k, v in d["examples_per_emotion"].items())
       + f"; {d['n_unlabelled']} unlabelled left out"),
      ("permutation test", f"{s['permutations']} label shuffles, "
       f"{perm['scheme']} ({perm['n_groups']} group(s), "
       f"{perm['labels_moved_fraction']:.0%} of labels move per shuffle); "
       f"statistic: max one-vs-rest AUROC; BH at q <= {s['fdr']}; "
       f"min support {s['min_support']}"
       + (f" and >= {s['min_support_fraction']:g} of the emotion's examples"
          " (min_support_fraction; BH-only counts beside)"
          if s.get("min_support_fraction") else "")),
      ("breadth tiers", "broad: a significant feature firing on >= "
       f"{s['broad_support']:g} of its emotion's examples; narrow: the rest"
       if "broad_support" in s else "not computed (older analysis)"),
      ("emotion probe", f"logistic regression, accuracy "
       f"{fmt(probe['accuracy_cv'])} ({probe['cv']}), "
       f"{fmt(probe['accuracy_train'])} on its training data"),
  ]
  stable = [(m["index"], m["fraction_reappearing"])
            for m in summary["members"]
            if m.get("fraction_reappearing") is not None]
  if stable:
    rows.append(("stability across seeds", "; ".join(
        f"member {i}: {f:.0%}" for i, f in stable) + " of significant "
        "features reappear (Hungarian one-to-one decoder matching, cosine >= "
        f"{s['stability_threshold']}) in at least half of the other seeds of "
        "the same configuration (members whose overrides differ only in "
        "seed)"))
  else:
    rows.append(("stability across seeds", "not measured: no member has "
                 "another seed of its configuration"))
  body = table(["", ""], [[Cell(esc(k)), Cell(esc(fmt(v)))] for k, v in rows],
               sortable=False)
  return Section("Run summary", body, "summary")


def counts_section(summary: dict) -> Section:
  """Every count of selective features, each beside its shuffled baseline."""
  rows = []
  for m in summary["members"]:
    for c in m["counts"]:
      rows.append([cell(m["index"]), Cell(esc(c["name"])),
                   Cell(count_html(c), c["real"]),
                   Cell(esc(c["description"]))])
  note = ('<p class="note">The reference rule (selectivity &ge; 2) is met by '
          "many features under shuffled labels; compare every count with its "
          "baseline. Significant = permutation p-value survives "
          "Benjamini-Hochberg and the feature fires on enough prompts of its "
          "emotion (min_support, and min_support_fraction of them); "
          "bh_significant leaves the fraction out (the rule before it), "
          "beside its own shuffled count.</p>")
  return Section("Selective features vs shuffled labels",
                 note + table(["member", "count", "value", "definition"],
                              rows), "counts")


def figures_section(figures: dict[str, Any]) -> Section:
  captions = {
      "heatmap": "Significant features x emotion (activation rate, scaled "
                 "per feature)",
      "selectivity_null": "Real vs shuffled-label distributions and counts",
      "dose_response": "Steering the probe: feature directions vs random "
                       "directions of the same norm",
      "validation": "Corpus AUROC vs AUROC on each validation set (same "
                    "emotion) of every significant feature",
  }
  body = "".join(f"<figure>{img_tag(p, captions.get(k, k))}<figcaption>"
                 f"{esc(captions.get(k, k))}</figcaption></figure>"
                 for k, p in figures.items())
  return Section("Figures", body, "figures")


def _prompts_html(prompts: list[dict], n: int = 5) -> str:
  items = "".join(f"<li>{esc(p['text'])} <span class=\"meta\">"
                  f"[{esc(p['emotion'])}, {p['activation']:.2f}]</span></li>"
                  for p in prompts[:n])
  return f'<ol class="prompts">{items}</ol>'


def features_section(summary: dict, max_per_member: int = 300) -> Section:
  """The sortable table; at most max_per_member rows per member (largest
  AUROC first) keep the page light for wide sweeps; analysis.json has them
  all."""
  n_perm = summary["settings"]["permutations"]
  rows, cut = [], False
  for m in summary["members"]:
    cut |= len(m["features"]) > max_per_member
    for r in m["features"][:max_per_member]:
      c = r["causal"] or {}
      rows.append([
          cell(m["index"]), cell(r["feature"]), Cell(esc(r["emotion"])),
          cell(r["selectivity"]), cell(r["auroc"]), p_cell(r["p_value"], n_perm),
          cell(r["q_value"]), cell(r["support"]),
          cell(r["typical_activation"]),
          Cell(esc(f"{r['reappears_in']} of {r['n_other_seeds']}"
                   if r.get("n_other_seeds") else "–"),
               r.get("reappears_in")),
          cell(c.get("ablation_effect")), cell(c.get("slope")),
          cell(c.get("slope_random")),
          Cell(_prompts_html(r["top_prompts"]))])
  columns = ["member", "feature", "emotion", "selectivity", "AUROC",
             "p-value", "q-value", "support", "typical act.", "reappears in",
             "ablation effect", "steer slope", "random slope", "top prompts"]
  note = ('<p class="note">Click a header to sort. Reappears in: other '
          "seeds of the same configuration with a one-to-one (Hungarian) "
          "decoder match at cosine &ge; "
          f"{summary['settings']['stability_threshold']}. Ablation effect: "
          "drop in the probe's P(emotion) on the emotion's prompts minus the "
          "drop on other prompts. Slopes: P(emotion) per unit strength on "
          "other emotions' prompts, feature direction vs random directions of"
          " the same norm."
          + f" p-value &lt; {1 / (n_perm + 1):.2g}: no one of the {n_perm} "
          "shuffles reached the real AUROC (the test's floor, 1/(P+1))."
          + (f" Showing at most {max_per_member} features per member, largest"
             " AUROC first; analysis.json lists every one." if cut else "")
          + "</p>")
  if not rows:
    return Section("Significant features",
                   note + "<p>No feature is significant.</p>", "features")
  return Section("Significant features", note + table(columns, rows),
                 "features")


def analysis_sections(summary: dict, figures: dict[str, Any]) -> list[Section]:
  """What holds beyond the corpus leads, right after the run summary."""
  from emosae_jax.analysis import report_sections as more
  sections = [summary_section(summary), more.selection_section(summary),
              more.validation_section(summary),
              more.directions_section(summary), counts_section(summary),
              figures_section(figures), features_section(summary)]
  return [s for s in sections if s is not None]


def write_analysis_report(summary: dict, figures: dict[str, Any],
                          path: str | Path,
                          extra: Sequence[Section] = ()) -> Path:
  return write_report(path, "emosae feature analysis",
                      analysis_sections(summary, figures) + list(extra))
