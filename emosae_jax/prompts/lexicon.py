"""The corpus vocabulary (prompt_data/corpus.json) and its held-out split.

`load_corpus` reads and checks the lexicon (word families by intensity,
phrases, implied scenes), frames, neutral slots and caption-style
templates; `make_split` chooses what the "test" split holds out and
`make_val_split` what a "val" split takes from the rest (for choosing
settings without looking at the test split).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from pathlib import Path
from typing import Iterable

from emosae_jax.prompts.taxonomy import (DATA_DIR, PromptError, Taxonomy,
                                         load_taxonomy)

CORPUS_FILE = DATA_DIR / "corpus.json"
DEFAULT_HELDOUT_STYLE = "brief"
LEVELS = ("mild", "moderate", "strong")
EMOTION_SLOTS = ("adj", "noun", "mood", "tag")
SLOT = re.compile(r"\{(\w+)\}")
OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


@dataclasses.dataclass(frozen=True)
class Family:
  """Forms of one emotion word: adjectives and nouns, one intensity level."""
  emotion: str
  level: str
  adjs: tuple[str, ...]
  nouns: tuple[str, ...]

  @property
  def forms(self) -> tuple[str, ...]:
    return self.adjs + self.nouns


@dataclasses.dataclass(frozen=True)
class Corpus:
  families: dict[str, list[Family]]  # emotion -> families
  phrases: dict[str, list[str]]  # emotion -> verb phrases ("makes you ...")
  implied: dict[str, list[str]]  # emotion -> scenes that imply it
  modifiers: dict[str, dict[str, list[str]]]  # level -> adj/noun -> words
  frames: dict[str, list[str]]
  slots: dict[str, list[str]]
  styles: dict[str, list[dict]]  # style -> templates {"id", "text", "sep"?}
  style_weights: dict[str, float]

  def templates(self) -> list[dict]:
    return [dict(t, style=s) for s, ts in self.styles.items() for t in ts]


def load_corpus(path: str | os.PathLike | None = None,
                taxonomy: Taxonomy | None = None) -> Corpus:
  """Reads corpus.json (the packaged one by default) and checks it."""
  raw = json.loads(Path(path or CORPUS_FILE).read_text())
  families = {}
  for e, lex in raw["lexicon"].items():
    families[e] = []
    for level in LEVELS:
      for entry in lex[level]:
        adjs, nouns = (tuple(w for w in part.split(",") if w)
                       for part in entry.split("|"))
        families[e].append(Family(e, level, adjs, nouns))
  corpus = Corpus(families, {e: v["phrases"] for e, v in raw["lexicon"].items()},
                  {e: v["implied"] for e, v in raw["lexicon"].items()},
                  raw["modifiers"], raw["frames"], raw["slots"], raw["styles"],
                  raw["style_weights"])
  check_corpus(corpus, taxonomy or load_taxonomy())
  return corpus


def word_pattern(words: Iterable[str]) -> re.Pattern:
  """Whole-word, case-insensitive match of any of `words`."""
  words = sorted(set(words), key=len, reverse=True)
  return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, words))
                    + r")(?![\w-])", re.IGNORECASE)


def check_corpus(corpus: Corpus, tax: Taxonomy) -> None:
  """Each emotion word has one owner; no other vocabulary holds one."""
  owner: dict[str, str] = {}
  for e, fams in corpus.families.items():
    if e not in tax.emotions:
      raise PromptError(f"corpus emotion {e!r} is not in the taxonomy")
    for w in (w.lower() for f in fams for w in f.forms):
      if owner.setdefault(w, e) != e:
        raise PromptError(f"corpus word {w!r} belongs to {owner[w]!r} and "
                          f"{e!r}")
  for w, e in owner.items():
    # "fun-loving" (happy) holds "loving" (tender): the caption import, which
    # matches whole words between hyphens, would read it as tender.
    for part in re.split(r"[\s-]+", w):
      if owner.get(part, e) != e:
        raise PromptError(f"corpus word {w!r} ({e}) holds {part!r}, a word "
                          f"of {owner[part]!r}")
  for e in tax.emotion_names:  # caption import and corpus must agree
    for w in tax.words(e):
      if owner.get(w.lower()) != e:
        raise PromptError(f"taxonomy word {w!r} ({e}) is not a corpus word "
                          f"of {e!r}")
  pat = word_pattern(owner)
  neutral = [v for vs in corpus.slots.values() for v in vs]
  neutral += [m for lv in corpus.modifiers.values() for ms in lv.values()
              for m in ms]
  neutral += [f for fs in corpus.frames.values() for f in fs]
  neutral += [t["text"] for t in corpus.templates()]
  for e in corpus.families:
    neutral += corpus.phrases[e] + corpus.implied[e]
  for text in neutral:
    if pat.search(text):
      raise PromptError(f"{text!r} holds the emotion word "
                        f"{pat.search(text).group(0)!r}")
  for t in corpus.templates():
    if not set(bases(t["text"])) & set(EMOTION_SLOTS):
      raise PromptError(f"template {t['id']} has no emotion slot")
    for opt in OPTIONAL.findall(t["text"]):
      if set(bases(opt)) & set(EMOTION_SLOTS):
        raise PromptError(f"template {t['id']}: emotion slot in [optional]")
    for b in set(bases(t["text"])) - set(EMOTION_SLOTS):
      if b not in corpus.slots:
        raise PromptError(f"template {t['id']} uses unknown slot {b!r}")


def bases(text: str) -> list[str]:
  """Slot bases in order: '{Instrument2}' -> 'instrument'."""
  return [s.lower().rstrip("0123456789") for s in SLOT.findall(text)]


# --------------------------------------------------------------------------
# The split


@dataclasses.dataclass(frozen=True)
class Split:
  """What is held out: templates, word families, phrases, scenes, frames."""
  heldout_style: str
  templates: frozenset[str]
  families: frozenset[Family]
  phrases: frozenset[str]
  implied: frozenset[str]
  frames: frozenset[tuple[str, str]]  # (kind, frame)

  def heldout_words(self) -> set[str]:
    """Every held-out word form, phrase and scene (lower case)."""
    return ({w.lower() for f in self.families for w in f.forms}
            | {p.lower() for p in self.phrases | self.implied})


def make_val_split(corpus: Corpus, test: Split, seed: int = 0,
                   fraction: float = 0.2) -> Split:
  """The "val" parts: `fraction` of every pool the test split left to
  training (templates of every style but the held-out one, each emotion's
  word families per intensity, phrases, scenes, frames), so that val shares
  no wording with train nor test. It holds out no whole style (the test
  split took the one spare). Deterministic in (corpus, test, seed,
  fraction); its own random stream, so the test split is unchanged."""
  if not 0 < fraction < 1:
    raise PromptError(f"val fraction must be in (0, 1), got {fraction}")
  rng = random.Random(f"val:{seed}")
  templates = set()
  for style in sorted(corpus.styles):
    if style != test.heldout_style:
      templates.update(_holdout([t["id"] for t in corpus.styles[style]
                                 if t["id"] not in test.templates],
                                fraction, rng))
  families, phrases, implied = set(), set(), set()
  for e in sorted(corpus.families):
    for level in LEVELS:
      families.update(_holdout([f for f in corpus.families[e]
                                if f.level == level
                                and f not in test.families], fraction, rng))
    phrases.update(_holdout([p for p in corpus.phrases[e]
                             if p not in test.phrases], fraction, rng))
    implied.update(_holdout([p for p in corpus.implied[e]
                             if p not in test.implied], fraction, rng))
  frames = set()
  for kind in sorted(corpus.frames):
    frames.update((kind, f) for f in _holdout(
        [f for f in corpus.frames[kind] if (kind, f) not in test.frames],
        fraction, rng))
  return Split("", frozenset(templates), frozenset(families),
               frozenset(phrases), frozenset(implied), frozenset(frames))


def _holdout(items: list, fraction: float, rng: random.Random) -> list:
  """`fraction` of items (>= 1, and >= 1 left) in a seeded order."""
  if len(items) < 2:
    return []
  items = list(items)
  rng.shuffle(items)
  return items[:min(len(items) - 1, max(1, round(fraction * len(items))))]


def make_split(corpus: Corpus, seed: int = 0, fraction: float = 0.2,
               heldout_style: str = DEFAULT_HELDOUT_STYLE) -> Split:
  """The held-out parts, deterministic in (corpus, seed, fraction, style)."""
  if not 0 < fraction < 1:
    raise PromptError(f"heldout fraction must be in (0, 1), got {fraction}")
  if heldout_style not in corpus.styles:
    raise PromptError(f"unknown heldout style {heldout_style!r}; styles: "
                      f"{', '.join(corpus.styles)}")
  rng = random.Random(f"heldout:{seed}")
  templates = {t["id"] for t in corpus.styles[heldout_style]}
  for style in sorted(corpus.styles):
    if style != heldout_style:
      templates.update(_holdout([t["id"] for t in corpus.styles[style]],
                                fraction, rng))
  families, phrases, implied = set(), set(), set()
  for e in sorted(corpus.families):
    for level in LEVELS:
      families.update(_holdout([f for f in corpus.families[e]
                                if f.level == level], fraction, rng))
    phrases.update(_holdout(corpus.phrases[e], fraction, rng))
    implied.update(_holdout(corpus.implied[e], fraction, rng))
  frames = set()
  for kind in sorted(corpus.frames):
    frames.update((kind, f) for f in _holdout(corpus.frames[kind], fraction,
                                              rng))
  return Split(heldout_style, frozenset(templates), frozenset(families),
               frozenset(phrases), frozenset(implied), frozenset(frames))
