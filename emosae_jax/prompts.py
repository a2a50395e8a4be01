"""Emotion-labelled music prompts: taxonomy, generator, splits, caption import.

The taxonomy (`prompt_data/taxonomy.json`) lists emotions with descriptor
words and valence/arousal, slot vocabularies (genre, instrument, tempo,
production, setting) and sentence templates of several shapes (short tags to
caption-like sentences). `generate_prompts` fills templates into N unique
prompts balanced across emotions; whole templates are held out as the "test"
split, so a probe scored on them cannot lean on template memorisation.

Standard library only (no numpy, no jax): the torch side (`bridge`,
`scripts/extract.py`) imports this module in environments without jax.

A prompt record is a dict:
  {"id", "text", "emotion" (None for neutral), "template", "shape",
   "split" ("train" | "test" | "neutral" | "caption"), "slots",
   "valence", "arousal"}
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

from emosae_jax.errors import UserError

TAXONOMY_FILE = Path(__file__).parent / "prompt_data" / "taxonomy.json"
DEFAULT_N = 2700  # 300 per emotion with the packaged nine emotions
_SLOT = re.compile(r"\{(\w+)\}")


class PromptError(UserError, ValueError):
  """Bad prompt or caption input; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Taxonomy:
  emotions: dict[str, dict[str, Any]]  # name -> valence, arousal, words
  slots: dict[str, list[str]]
  templates: list[dict[str, str]]  # {"id", "shape", "text"}
  neutral_templates: list[dict[str, str]]

  @property
  def emotion_names(self) -> list[str]:
    return list(self.emotions)

  def words(self, emotion: str) -> list[str]:
    """All words that label `emotion`: descriptors then nouns."""
    e = self.emotions[emotion]
    return list(e["descriptors"]) + list(e.get("nouns", []))


def load_taxonomy(path: str | os.PathLike | None = None) -> Taxonomy:
  """Reads a taxonomy JSON (the packaged one by default) and checks it."""
  raw = json.loads(Path(path or TAXONOMY_FILE).read_text())
  tax = Taxonomy(raw["emotions"], raw["slots"], raw["templates"],
                 raw.get("neutral_templates", []))
  _check_taxonomy(tax)
  return tax


def _check_taxonomy(tax: Taxonomy) -> None:
  owner: dict[str, str] = {}
  for name in tax.emotions:
    for w in tax.words(name):
      w = w.lower()
      if owner.setdefault(w, name) != name:
        raise PromptError(f"taxonomy word {w!r} belongs to both "
                          f"{owner[w]!r} and {name!r}")
  for t in tax.templates + tax.neutral_templates:
    for slot in _SLOT.findall(t["text"]):
      base = _slot_base(slot)
      if base not in tax.slots and base not in ("adj", "noun"):
        raise PromptError(f"template {t['id']} uses unknown slot {slot!r}")


# --------------------------------------------------------------------------
# Generation


def _slot_base(slot: str) -> str:
  """'Instrument2' -> 'instrument' (capital = capitalise, digit = another)."""
  return slot.lower().rstrip("0123456789")


def _fill(template: str, values: dict[str, str]) -> str:
  def sub(m):
    slot = m.group(1)
    v = values[slot.lower()]
    return v[:1].upper() + v[1:] if slot[0].isupper() else v
  text = _SLOT.sub(sub, template)
  # "a energetic" -> "an energetic"; the templates are written with "a".
  text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
  return text[:1].upper() + text[1:] if template[:1].isupper() else text


def _draw_slots(rng: random.Random, tax: Taxonomy, template: str,
                emotion: str | None) -> dict[str, str]:
  """Draws one value per slot in `template`; repeated bases differ.

  Slots are drawn independently of the emotion so that only the emotion
  words carry the label (a "slow" feature must not pass for a "sad" one).
  """
  values: dict[str, str] = {}
  for slot in dict.fromkeys(s.lower() for s in _SLOT.findall(template)):
    base = _slot_base(slot)
    if base == "adj":
      pool = tax.emotions[emotion]["descriptors"]
    elif base == "noun":
      pool = tax.emotions[emotion]["nouns"]
    else:
      pool = tax.slots[base]
    taken = {v for k, v in values.items() if _slot_base(k) == base}
    values[slot] = rng.choice([v for v in pool if v not in taken])
  return values


def heldout_templates(templates: list[dict[str, str]], fraction: float,
                      seed: int) -> set[str]:
  """Template ids held out for testing: `fraction` of each shape, >= 1 each.

  Holding out per shape keeps both tags and captions in the test split.
  """
  if not 0 < fraction < 1:
    raise PromptError(f"heldout fraction must be in (0, 1), got {fraction}")
  rng = random.Random(f"heldout:{seed}")
  by_shape: dict[str, list[str]] = {}
  for t in templates:
    by_shape.setdefault(t.get("shape", ""), []).append(t["id"])
  held = set()
  for shape in sorted(by_shape):
    ids = sorted(by_shape[shape])
    rng.shuffle(ids)
    k = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    held.update(ids[:k])
  return held


def _balanced_counts(n: int, names: list[str]) -> dict[str, int]:
  return {e: n // len(names) + (i < n % len(names))
          for i, e in enumerate(names)}


def _generate(n_by_key: dict, templates: list[dict[str, str]], tax: Taxonomy,
              seed: int, tries: int = 50) -> list[tuple]:
  """Unique (key, template, slots, text) tuples, templates used round-robin.

  Raises PromptError when the vocabularies cannot yield that many.
  """
  out, seen = [], set()
  for key, n in n_by_key.items():
    rng = random.Random(f"{seed}:{key}")
    order = list(templates)
    rng.shuffle(order)
    exhausted: set[str] = set()
    made, i = 0, 0
    while made < n:
      if len(exhausted) == len(order):
        raise PromptError(f"cannot make {n} unique prompts for {key!r} "
                          f"(made {made}); enlarge the slot vocabularies")
      t = order[i % len(order)]
      i += 1
      if t["id"] in exhausted:
        continue
      for _ in range(tries):
        slots = _draw_slots(rng, tax, t["text"], key)
        text = _fill(t["text"], slots)
        if text.lower() not in seen:
          seen.add(text.lower())
          out.append((key, t, slots, text))
          made += 1
          break
      else:
        exhausted.add(t["id"])
  return out


def generate_prompts(n: int = DEFAULT_N, seed: int = 0,
                     emotions: Iterable[str] | None = None,
                     heldout_fraction: float = 0.2,
                     taxonomy: Taxonomy | None = None) -> list[dict]:
  """N unique emotion prompts, balanced across emotions (counts differ <= 1).

  Each emotion cycles through the templates in a seeded order, so templates
  (and hence the held-out "test" split) are balanced within every emotion.
  Deterministic in (n, seed, emotions, heldout_fraction, taxonomy).
  """
  tax = taxonomy or load_taxonomy()
  names = check_emotions(emotions, tax) if emotions else tax.emotion_names
  if "neutral" in names:
    raise PromptError("'neutral' is not an emotion here; use neutral_prompts")
  if n < len(names):
    raise PromptError(f"n={n} is fewer than the {len(names)} emotions")
  held = heldout_templates(tax.templates, heldout_fraction, seed)
  rows = _generate(_balanced_counts(n, names), tax.templates, tax, seed)
  random.Random(f"order:{seed}").shuffle(rows)
  return [dict(id=f"p{i:05d}", text=text, emotion=e, template=t["id"],
               shape=t.get("shape", ""),
               split="test" if t["id"] in held else "train", slots=slots,
               valence=tax.emotions[e]["valence"],
               arousal=tax.emotions[e]["arousal"])
          for i, (e, t, slots, text) in enumerate(rows)]


def neutral_prompts(n: int, seed: int = 0,
                    taxonomy: Taxonomy | None = None) -> list[dict]:
  """N unique emotion-free prompts (emotion None), for steering experiments."""
  tax = taxonomy or load_taxonomy()
  if not tax.neutral_templates:
    raise PromptError("the taxonomy has no neutral_templates")
  rows = _generate({None: n}, tax.neutral_templates, tax, seed)
  random.Random(f"order:{seed}").shuffle(rows)
  return [dict(id=f"n{i:05d}", text=text, emotion=None, template=t["id"],
               shape=t.get("shape", ""), split="neutral", slots=slots,
               valence=None, arousal=None)
          for i, (_, t, slots, text) in enumerate(rows)]


def check_emotions(names: Iterable[str], tax: Taxonomy,
                   extra: Iterable[str] = ()) -> list[str]:
  """Returns `names` if all are known (taxonomy, `extra`, "neutral")."""
  names = [str(x).strip().lower() for x in names if str(x).strip()]
  known = set(tax.emotion_names) | set(extra) | {"neutral"}
  unknown = [x for x in names if x not in known]
  if unknown:
    raise PromptError(f"unknown emotion(s) {', '.join(unknown)}; known: "
                      f"{', '.join(sorted(known))}")
  return names


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

  Generated prompts: their adj/adj2/noun slots; captions: the words matched.
  """
  slots = record.get("slots") or {}
  words = [slots[k] for k in ("adj", "adj2", "noun") if k in slots]
  words += list(slots.get("matched", []))
  return sorted({str(w).lower() for w in words})


def label_arrays(records: list[dict], taxonomy: Taxonomy | None = None
                 ) -> tuple[list[str], list[int], list[str], list[str]]:
  """(label_names, labels, groups, heldout_groups) for an embedding set.

  label_names are the emotions present, in taxonomy order (others after,
  sorted); label -1 marks neutral prompts. groups are template ids;
  heldout_groups the templates whose split is "test".
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
