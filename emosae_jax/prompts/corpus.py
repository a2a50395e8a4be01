"""The emotion corpus: prompts that look like what people type into MusicGen.

`prompt_data/corpus.json` (read by `lexicon.py`) holds a hand-written lexicon (per emotion: word
families by intensity, multi-word phrases, scenes that only imply the
emotion), sentence frames, neutral slot vocabularies (genre, instrument,
BPM, key, production, use, era, ...) and templates in five caption styles
(legacy short templates, tag lists, one-sentence prompts, MusicCaps-like
captions, producer briefs). Neutral slots are drawn independently of the
emotion, so only the emotion wording carries the label.

The held-out "test" split shares no wording with "train": one whole style,
a fraction of every other style's templates, of every emotion's word
families (all forms of a family go together: "joy"/"joyful"/"joyous"), of
its phrases and implied scenes, and of the sentence frames. A prompt's
split is its template's; its emotion wording is drawn from that split's
part of every pool. Mixed (two emotions) and negated ("not sad at all")
prompts get emotion None (label -1) and say why in `kind`.
"""

from __future__ import annotations

import random
import re
from typing import Any, Iterable

from emosae_jax.prompts.lexicon import (DEFAULT_HELDOUT_STYLE,
                                        EMOTION_SLOTS, OPTIONAL, SLOT, Corpus,
                                        Family, Split, bases, load_corpus,
                                        make_split, make_val_split)
from emosae_jax.prompts.taxonomy import (PromptError, Taxonomy,
                                         check_emotions, load_taxonomy)

DEFAULT_N = 2700  # labelled prompts: 300 per emotion with nine emotions
UNLABELLED_FRACTION = 0.1  # extra mixed/negated prompts, per labelled one
MODE_WEIGHTS = {"word": 0.65, "phrase": 0.17, "implied": 0.18}
# (kind, emotions named): "happy yet wistful"; "not sad at all"; "upbeat,
# not sad at all" (one emotion stated, another negated: still unlabelled).
UNLABELLED_KINDS = (("mixed", 2), ("negated", 1), ("negated", 2))
MIN_WORDS, MAX_WORDS = 5, 60
_WORD = re.compile(r"[\w'-]+")


# --------------------------------------------------------------------------
# Rendering one prompt


def _part(item, pool: str, split: Split, val: Split | None) -> str:
  """"test", "val" or "train": which split's pool `item` belongs to."""
  if item in getattr(split, pool):
    return "test"
  return "val" if val is not None and item in getattr(val, pool) else "train"


class _Writer:
  """Draws the wording of one split's prompts from that split's pools."""

  def __init__(self, corpus: Corpus, split: Split, part: str,
               rng: random.Random, val: Split | None = None):
    self.c, self.rng = corpus, rng

    def mine(item, pool: str) -> bool:
      return _part(item, pool, split, val) == part
    self.families = {e: [f for f in fs if mine(f, "families")]
                     for e, fs in corpus.families.items()}
    self.phrases = {e: [p for p in ps if mine(p, "phrases")]
                    for e, ps in corpus.phrases.items()}
    self.implied = {e: [p for p in ps if mine(p, "implied")]
                    for e, ps in corpus.implied.items()}
    # A frame list too short to give val one of its own (tag_phrase has
    # two: one is test's) lends val the training frames: frames are
    # scaffolding ("the mood is {adj}"), the emotion wording stays val's.
    self.frames = {k: [f for f in fs if mine((k, f), "frames")]
                   or (part == "val" and [f for f in fs if _part(
                       (k, f), "frames", split, val) == "train"]) or []
                   for k, fs in corpus.frames.items()}

  def family(self, emotion: str, need: str, avoid: set) -> Family:
    """A family with an adjective (need='adj') or a noun, not in `avoid`
    if possible; a level at random first, so mild and strong words are as
    common as moderate ones."""
    def fits(f: Family) -> bool:
      return bool(f.adjs if need == "adj" else f.nouns)
    fams = ([f for f in self.families[emotion] if fits(f) and f not in avoid]
            or [f for f in self.families[emotion] if fits(f)]
            or [f for f in self.families[emotion] if f.adjs])
    level = self.rng.choice(sorted({f.level for f in fams}))
    return self.rng.choice([f for f in fams if f.level == level])

  def word(self, emotion: str, kind: str, ctx: dict, modify: bool = True
           ) -> str:
    """An adjective or noun of `emotion`, with an intensity modifier."""
    fam = self.family(emotion, kind, ctx["families"])
    ctx["families"].add(fam)
    ctx.setdefault("intensity", fam.level)
    if kind == "adj" or not fam.nouns:
      w = self.rng.choice(fam.adjs)
      # A noun slot and no noun in this split's part: "a wistful feeling".
      text = w if kind == "adj" else f"a {w} feeling" if modify else (
          f"{w} feeling")
    else:
      w = text = self.rng.choice(fam.nouns)
    ctx["words"].add(w)
    if modify:
      mod = self.rng.choice(self.c.modifiers[fam.level][
          "adj" if kind == "adj" or not fam.nouns else "noun"])
      text = f"{mod} {text}".strip()
    return text

  def frame(self, kind: str, emotion: str, mode: str, ctx: dict) -> str:
    """Fills a frame of `kind` (mood, tag_phrase, ...) for `emotion`."""
    f = self.rng.choice(self.frames[kind])
    negated = mode == "negated"

    def sub(m):
      slot = m.group(1)
      if slot == "phrase":
        p = self.rng.choice(self.phrases[emotion])
      elif slot == "implied":
        p = self.rng.choice(self.implied[emotion])
      else:
        return self.word(emotion, slot, ctx, modify=not negated)
      ctx["words"].add(p)
      return p
    return SLOT.sub(sub, f)

  def emotion_slot(self, base: str, emotion: str, mode: str,
                   ctx: dict) -> str:
    if base in ("adj", "noun"):
      return self.word(emotion, base, ctx)
    suffix = {"word": "", "phrase": "_phrase", "implied": "_implied",
              "negated": "_negated"}[mode]
    return self.frame(base + suffix, emotion, mode, ctx)


def _eligible(template: dict, mode: str) -> bool:
  """Adjective/noun slots only take words; mood/tag slots take any mode."""
  return mode == "word" or not set(bases(template["text"])) & {"adj",
                                                                 "noun"}


def _render(w: _Writer, t: dict, emotion: str, mode: str,
            rng: random.Random) -> tuple[str, dict, dict]:
  """(text, neutral slot values, ctx with the emotion words) of one fill.

  `rng` draws the carrier (optional parts, neutral slots, tag order); the
  writer's own rng draws the emotion wording.
  """
  text = OPTIONAL.sub(lambda m: m.group(1) if rng.random() < 0.5 else "",
                       t["text"])
  values: dict[str, str] = {}
  ctx: dict[str, Any] = dict(words=set(), families=set())

  def sub(m):
    slot = m.group(1)
    base = slot.lower().rstrip("0123456789")
    if base in EMOTION_SLOTS:
      v = w.emotion_slot(base, emotion, mode, ctx)
    else:
      if slot.lower() not in values:
        taken = {v for k, v in values.items() if k.rstrip("0123456789")
                 == base}
        values[slot.lower()] = rng.choice(
            [x for x in w.c.slots[base] if x not in taken])
      v = values[slot.lower()]
    return v[:1].upper() + v[1:] if slot[0].isupper() else v
  text = SLOT.sub(sub, text)
  if t.get("sep"):  # tag lists: any order
    parts = text.split(t["sep"])
    rng.shuffle(parts)
    text = t["sep"].join(parts)
  return text, values, ctx


def _append(text: str, clause: str) -> str:
  """Adds `clause` (", but also ...") before a final full stop."""
  if text.endswith("."):
    return text[:-1] + clause + "."
  return text + clause


def _tidy(text: str, template: str) -> str:
  """Spaces, "a" -> "an" before a vowel, a capital where the template has."""
  text = " ".join(text.split())
  text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])(?!one\b|one-|uni|eu)", r"\1n ",
                text)
  return text[:1].upper() + text[1:] if template[:1].isupper() else text


def n_words(text: str) -> int:
  return len(_WORD.findall(text))


def _one_prompt(w: _Writer, t: dict, kind: str, emotions: list[str],
                mode: str, carrier: random.Random
                ) -> tuple[str, dict, dict] | None:
  """One prompt of `kind` (single, mixed, negated); None if too long/short.

  single: emotions[0] in `mode`. mixed: emotions[0] in words plus a clause
  of emotions[1]. negated: emotions[0] negated, or (two emotions) the first
  stated and the second negated.
  """
  tags = bool(t.get("sep"))
  if kind == "negated" and len(emotions) == 1:
    text, values, ctx = _render(w, t, emotions[0], "negated", carrier)
  else:
    text, values, ctx = _render(w, t, emotions[0], mode, carrier)
  if kind != "single" and len(emotions) == 2:
    frame = ("mix" if kind == "mixed" else "negation") + (
        "_tag" if tags else "")
    clause = w.frame(frame, emotions[1],
                     "word" if kind == "mixed" else "negated", ctx)
    text = _append(text, clause)
  text = _tidy(text, t["text"])
  if not MIN_WORDS <= n_words(text) <= MAX_WORDS:
    return None
  return text, values, ctx


# --------------------------------------------------------------------------
# The corpus


def _plan(corpus: Corpus, n: int, rng: random.Random, modes: dict[str, float]
          ) -> list[tuple[dict, str]]:
  """n (template, mode) draws: styles by weight, then an eligible template."""
  styles = list(corpus.style_weights)
  weights = [corpus.style_weights[s] for s in styles]
  plan = []
  for _ in range(n):
    style = rng.choices(styles, weights)[0]
    mode = rng.choices(list(modes), list(modes.values()))[0]
    ok = [t for t in corpus.styles[style] if _eligible(t, mode)]
    if not ok:
      mode, ok = "word", corpus.styles[style]
    plan.append((dict(rng.choice(ok), style=style), mode))
  return plan


def generate_prompts(n: int = DEFAULT_N, seed: int = 0,
                     emotions: Iterable[str] | None = None,
                     heldout_fraction: float = 0.2,
                     taxonomy: Taxonomy | None = None,
                     heldout_style: str = DEFAULT_HELDOUT_STYLE,
                     unlabelled_fraction: float = UNLABELLED_FRACTION,
                     corpus: Corpus | None = None,
                     val_fraction: float = 0.0) -> list[dict]:
  """n labelled prompts (balanced: every emotion gets the same sequence of
  templates and modes) plus round(unlabelled_fraction * n) mixed/negated
  ones with emotion None. Unique texts; deterministic in the arguments.

  val_fraction > 0 moves that fraction of every pool the test split left
  to training into a "val" split (lexicon.make_val_split) that shares no
  wording with train nor test; the test split stays the same.

  Each record: id, text, emotion, template, shape (= style), style, split
  ("train" | "val" | "test"), kind ("single" | "mixed" | "negated"), cue ("word" |
  "phrase" | "implied" | "negated"), intensity, emotions (all emotions the
  text names), negated (those it negates), emotion_words, slots, valence,
  arousal.
  """
  tax = taxonomy or load_taxonomy()
  corpus = corpus or load_corpus(taxonomy=tax)
  names = (check_emotions(emotions, tax) if emotions
           else [e for e in tax.emotion_names if e in corpus.families])
  if "neutral" in names:
    raise PromptError("'neutral' is not an emotion here; use neutral_prompts")
  if n < len(names):
    raise PromptError(f"n={n} is fewer than the {len(names)} emotions")
  if not 0 <= unlabelled_fraction <= 1:
    raise PromptError(f"unlabelled_fraction must be in [0, 1], got "
                      f"{unlabelled_fraction}")
  split = make_split(corpus, seed, heldout_fraction, heldout_style)
  val = (make_val_split(corpus, split, seed, val_fraction) if val_fraction
         else None)
  per = {e: n // len(names) + (i < n % len(names))
         for i, e in enumerate(names)}
  plan = _plan(corpus, 2 * max(per.values()) + 50,
               random.Random(f"plan:{seed}"), MODE_WEIGHTS)
  rows, seen = [], set()

  def make(writers, key, t, kind, emos, mode) -> bool:
    part = _part(t["id"], "templates", split, val)
    w = writers[part]
    for attempt in range(50):
      carrier = random.Random(f"{seed}:carrier:{key}:{attempt}")
      got = _one_prompt(w, t, kind, emos, mode, carrier)
      if got and got[0].lower() not in seen:
        seen.add(got[0].lower())
        rows.append((t, kind, emos, mode, part, *got))
        return True
    return False

  def writers_for(rng):
    return {part: _Writer(corpus, split, part, rng, val)
            for part in ("train", "test") + (("val",) if val else ())}

  for e in names:
    rng = random.Random(f"{seed}:{e}")
    writers = writers_for(rng)
    # Plan item i has the same carrier (genre, instruments, tag order, ...)
    # for every emotion: minimal pairs, so that no carrier feature can
    # correlate with the label even by chance in a corpus of this size.
    made = sum(make(writers, i, t, "single", [e], mode)
               for i, (t, mode) in enumerate(plan[:per[e]]))
    for i, (t, mode) in enumerate(plan[per[e]:], per[e]):  # rare retries
      if made >= per[e]:
        break
      made += make(writers, i, t, "single", [e], mode)
    if made < per[e]:
      raise PromptError(f"cannot make {per[e]} unique prompts for {e!r}")
  rng = random.Random(f"{seed}:unlabelled")
  writers = writers_for(rng)
  n_unlabelled = round(unlabelled_fraction * n) if len(names) > 1 else 0
  for i, (t, _) in enumerate(_plan(corpus, 3 * n_unlabelled + 20, rng,
                                   {"word": 1.0})):
    if len(rows) >= n + n_unlabelled:
      break
    kind, k = UNLABELLED_KINDS[i % len(UNLABELLED_KINDS)]
    if k == 1 and not _eligible(t, "negated"):
      continue  # "a not sad piano song" is not English; needs a mood slot
    make(writers, f"u{i}", t, kind, rng.sample(names, k), "word")
  random.Random(f"order:{seed}").shuffle(rows)
  return [_record(i, row, tax) for i, row in enumerate(rows)]


def _record(i: int, row: tuple, tax: Taxonomy) -> dict:
  t, kind, emos, mode, part, text, values, ctx = row
  label = emos[0] if kind == "single" else None
  negated = ([] if kind != "negated" else emos[-1:])
  return dict(id=f"p{i:05d}", text=text, emotion=label, template=t["id"],
              shape=t["style"], style=t["style"],
              split=part, kind=kind,
              cue="negated" if kind == "negated" and len(emos) == 1 else mode,
              intensity=ctx.get("intensity"), emotions=list(emos),
              negated=negated, emotion_words=sorted(ctx["words"]),
              slots=values,
              valence=tax.emotions[label]["valence"] if label else None,
              arousal=tax.emotions[label]["arousal"] if label else None)
