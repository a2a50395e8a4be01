"""Prompt files: writing and reading prompts.jsonl, caption import, labels.

A caption file (CSV/TSV/JSONL) is labelled by the taxonomy's emotion words:
a caption naming words of exactly one emotion gets that emotion; others are
dropped and counted. Standard library only (see the package docstring).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from emosae_jax.prompts.taxonomy import (PromptError, Taxonomy,
                                         check_emotions, load_taxonomy)

# --------------------------------------------------------------------------
# Files


def write_prompts(records: list[dict], path: str | os.PathLike) -> Path:
  """Writes records as JSON lines, atomically."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)
  return path


def _read_rows(path: Path) -> list[dict]:
  """Rows of a CSV/TSV, JSON-lines or JSON-array file, as dicts."""
  if not path.is_file():
    raise PromptError(f"no such file: {path}")
  text = path.read_text(encoding="utf-8-sig")
  if not text.strip():
    raise PromptError(f"{path} is empty: no prompts to read")
  if path.suffix.lower() in (".csv", ".tsv"):
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    return list(csv.DictReader(text.splitlines(), delimiter=delim))
  if text.lstrip().startswith("["):
    rows = json.loads(text)
  else:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise PromptError(f"{path}:{i}: not valid JSON ({e.msg})") from None
  if not all(isinstance(r, dict) for r in rows):
    raise PromptError(f"{path}: every line must be a JSON object")
  return rows


def read_prompts(path: str | os.PathLike) -> list[dict]:
  """Reads a prompts.jsonl written by `write_prompts` (needs a "text" field)."""
  rows = _read_rows(Path(path))
  bad = [i for i, r in enumerate(rows, 1) if not str(r.get("text", "")).strip()]
  if bad:
    raise PromptError(f"{path}: {len(bad)} rows lack a 'text' field (first: "
                      f"row {bad[0]}); for a caption file pass --text_column")
  return rows


# --------------------------------------------------------------------------
# Caption import


def _emotion_patterns(tax: Taxonomy) -> dict[str, re.Pattern]:
  pats = {}
  for e in tax.emotion_names:
    words = sorted(tax.words(e), key=len, reverse=True)
    pats[e] = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b",
                         re.IGNORECASE)
  return pats


def label_text(text: str, tax: Taxonomy,
               patterns: dict[str, re.Pattern] | None = None
               ) -> dict[str, list[str]]:
  """{emotion: matched words} for every emotion whose words occur in `text`.

  Matching is whole-word and case-insensitive ("sadness" matches "sadness",
  "sad" does not match "saddle").
  """
  patterns = patterns or _emotion_patterns(tax)
  hits = {}
  for e, pat in patterns.items():
    found = pat.findall(text)
    if found:
      hits[e] = sorted({w.lower() for w in found})
  return hits


@dataclasses.dataclass
class CaptionImport:
  records: list[dict]  # prompt records, split "caption", template ""
  counts: dict[str, Any]  # total, empty, no_match, conflict, kept, ...


def import_captions(path: str | os.PathLike, text_column: str = "caption",
                    taxonomy: Taxonomy | None = None) -> CaptionImport:
  """Labels each caption in a CSV/JSONL by the taxonomy's words.

  Captions matching no emotion, or words of several emotions, are dropped;
  `counts` says how many of each, and how many were kept per emotion.
  """
  tax = taxonomy or load_taxonomy()
  path = Path(path)
  rows = _read_rows(path)
  if not rows:
    raise PromptError(f"{path} has no rows")
  columns = sorted({k for r in rows for k in r if k is not None})
  if text_column not in columns:
    raise PromptError(f"{path} has no column {text_column!r}; columns are: "
                      f"{', '.join(columns)} (set --text_column)")
  patterns = _emotion_patterns(tax)
  counts = dict(total=len(rows), empty=0, no_match=0, conflict=0, kept=0)
  records = []
  for i, row in enumerate(rows):
    text = " ".join(str(row.get(text_column) or "").split())
    hits = label_text(text, tax, patterns) if text else {}
    if not text:
      counts["empty"] += 1
    elif not hits:
      counts["no_match"] += 1
    elif len(hits) > 1:
      counts["conflict"] += 1
    else:
      (e, words), = hits.items()
      records.append(dict(id=f"c{i:06d}", text=text, emotion=e, template="",
                          shape="caption", split="caption",
                          slots={"matched": words},
                          valence=tax.emotions[e]["valence"],
                          arousal=tax.emotions[e]["arousal"]))
  counts["kept"] = len(records)
  counts["per_emotion"] = {e: sum(r["emotion"] == e for r in records)
                           for e in tax.emotion_names}
  return CaptionImport(records, counts)


def load_prompt_file(path: str | os.PathLike, text_column: str | None = None,
                     emotion_filter: Iterable[str] = (),
                     taxonomy: Taxonomy | None = None
                     ) -> tuple[list[dict], dict[str, Any]]:
  """Prompts from a prompts.jsonl, or captions labelled by the taxonomy.

  A CSV/TSV, or any file when `text_column` is given, is read as captions.
  `emotion_filter` keeps only those emotions ("neutral" = no emotion).
  Returns (records, counts); raises PromptError on bad or empty input.
  """
  tax = taxonomy or load_taxonomy()
  path = Path(path)
  if text_column or path.suffix.lower() in (".csv", ".tsv"):
    imp = import_captions(path, text_column or "caption", tax)
    records, counts = imp.records, imp.counts
  else:
    records = read_prompts(path)
    counts = dict(total=len(records))
  present = {r.get("emotion") for r in records} - {None}
  keep = check_emotions(emotion_filter, tax, extra=present)
  if keep:
    records = [r for r in records if (r.get("emotion") or "neutral") in keep]
  if not records:
    raise PromptError(f"{path}: no prompts left to embed (counts: {counts})")
  counts["selected"] = len(records)
  return records, counts


def emotion_words(record: dict) -> list[str]:
  """The emotion words a prompt was written with (lower case, sorted).

  Corpus prompts: their `emotion_words` field (words, phrases or implied
  scenes); older prompt files: their adj/adj2/noun slots; captions: the
  words matched.
  """
  if record.get("emotion_words") is not None:
    return sorted({str(w).lower() for w in record["emotion_words"]})
  slots = record.get("slots") or {}
  words = [slots[k] for k in ("adj", "adj2", "noun") if k in slots]
  words += list(slots.get("matched", []))
  return sorted({str(w).lower() for w in words})


def label_arrays(records: list[dict], taxonomy: Taxonomy | None = None
                 ) -> tuple[list[str], list[int], list[str], list[str]]:
  """(label_names, labels, groups, heldout_groups) for an embedding set.

  label_names are the emotions present, in taxonomy order (others after,
  sorted); label -1 marks prompts without one emotion (neutral, mixed,
  negated). groups are template ids; heldout_groups the templates whose
  split is "test".
  """
  tax = taxonomy or load_taxonomy()
  present = {r.get("emotion") for r in records} - {None}
  order = [e for e in tax.emotion_names if e in present]
  names = order + sorted(present - set(order))
  index = {e: i for i, e in enumerate(names)}
  labels = [index.get(r.get("emotion"), -1) for r in records]
  groups = [str(r.get("template") or "") for r in records]
  heldout = sorted({g for r, g in zip(records, groups)
                    if r.get("split") == "test" and g})
  return names, labels, groups, heldout
