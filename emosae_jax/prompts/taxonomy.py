"""Taxonomy (emotions, valence/arousal, caption-import words), slot filling
and the emotion-free neutral prompts used for steering.

The taxonomy (`prompt_data/taxonomy.json`) lists emotions with descriptor
words and valence/arousal, slot vocabularies and templates. Its emotion words
label imported captions (`files.import_captions`); its neutral templates make
the steering prompts. The emotion corpus itself is built by `corpus.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

from emosae_jax.errors import UserError

DATA_DIR = Path(__file__).resolve().parents[1] / "prompt_data"
TAXONOMY_FILE = DATA_DIR / "taxonomy.json"
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


