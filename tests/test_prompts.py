"""Prompt corpus, held-out split (templates, words, style), mixed/negated
labels, variety, neutral prompts, caption import."""

import collections
import dataclasses
import json
import re

import pytest

from conftest import last_line, run_script
from emosae_jax import prompts


@pytest.fixture(scope="session")
def tax():
  return prompts.load_taxonomy()


@pytest.fixture(scope="session")
def corpus():
  return prompts.generate_prompts()  # the default corpus


@pytest.fixture(scope="session")
def corpus_data(tax):
  return prompts.load_corpus(taxonomy=tax)


@pytest.fixture(scope="session")
def split(corpus_data):
  return prompts.make_split(corpus_data, seed=0, fraction=0.2)


def _lexicon_pattern(corpus_data, emotion):
  return prompts.word_pattern(w for f in corpus_data.families[emotion]
                              for w in f.forms)


def test_default_corpus_size_emotions_balance_templates(corpus, tax):
  texts = [r["text"] for r in corpus]
  assert 2500 <= len(corpus) <= 3500  # the offline pipeline stays minutes
  assert len(set(t.lower() for t in texts)) == len(corpus)
  labelled = [r for r in corpus if r["emotion"]]
  counts = collections.Counter(r["emotion"] for r in labelled)
  assert set(counts) == set(tax.emotion_names)
  assert max(counts.values()) == min(counts.values()) == 300
  assert len({r["template"] for r in corpus}) >= 40
  assert {r["style"] for r in corpus} == {"template", "tags", "prompt",
                                          "caption", "brief"}
  for r in corpus:
    assert {"text", "emotion", "template", "split", "slots", "style",
            "kind", "cue", "emotion_words"} <= set(r)
  # Every emotion gets the same sequence of templates: balanced per group.
  per = collections.Counter((r["template"], r["emotion"]) for r in labelled)
  for t in {r["template"] for r in labelled}:
    assert len({per[t, e] for e in tax.emotion_names}) == 1, t


def test_taxonomy_has_coordinates_and_unique_words(tax, corpus_data):
  owner = {}
  for name, e in tax.emotions.items():
    assert -1 <= e["valence"] <= 1 and -1 <= e["arousal"] <= 1
    assert len(e["descriptors"]) >= 5
    for w in tax.words(name):
      assert owner.setdefault(w, name) == name, w
      assert _lexicon_pattern(corpus_data, name).fullmatch(w), w
  for e, fams in corpus_data.families.items():
    assert len(fams) >= 12 and {f.level for f in fams} == {"mild",
                                                           "moderate",
                                                           "strong"}
    assert len(corpus_data.phrases[e]) >= 5
    assert len(corpus_data.implied[e]) >= 5


def test_corpus_check_rejects_emotion_words_outside_the_lexicon(
    tax, corpus_data):
  bad = dataclasses.replace(corpus_data, slots=dict(
      corpus_data.slots, use=corpus_data.slots["use"] + ["a joyful parade"]))
  with pytest.raises(prompts.PromptError, match="joyful"):
    prompts.check_corpus(bad, tax)
  sad = corpus_data.families["sad"]
  bad = dataclasses.replace(corpus_data, families=dict(
      corpus_data.families, happy=corpus_data.families["happy"] + sad[:1]))
  with pytest.raises(prompts.PromptError, match="belongs to"):
    prompts.check_corpus(bad, tax)
  fun_loving = prompts.Family("happy", "mild", ("fun-loving",), ())
  bad = dataclasses.replace(corpus_data, families=dict(
      corpus_data.families,
      happy=corpus_data.families["happy"] + [fun_loving]))
  with pytest.raises(prompts.PromptError, match="'loving', a word of "
                     "'tender'"):
    prompts.check_corpus(bad, tax)


def test_single_emotion_prompts_name_their_emotion_only(corpus, tax,
                                                        corpus_data):
  pats = {e: _lexicon_pattern(corpus_data, e) for e in tax.emotion_names}
  for r in corpus:
    if r["kind"] != "single":
      continue
    named = {e for e, p in pats.items() if p.search(r["text"])}
    assert named == ({r["emotion"]} if r["cue"] == "word" else set()), r
    # The caption importer would never give it another emotion.
    assert set(prompts.label_text(r["text"], tax)) <= {r["emotion"]}, r
    assert all(w in r["text"].lower() for w in prompts.emotion_words(r))


def test_mixed_and_negated_prompts_are_unlabelled(corpus, tax, corpus_data):
  pats = {e: _lexicon_pattern(corpus_data, e) for e in tax.emotion_names}
  other = [r for r in corpus if r["kind"] != "single"]
  kinds = collections.Counter((r["kind"], len(r["emotions"])) for r in other)
  assert set(kinds) == {("mixed", 2), ("negated", 1), ("negated", 2)}
  assert 0.08 * 2700 <= len(other) <= 0.12 * 2700
  for r in other:
    assert r["emotion"] is None and r["valence"] is None, r
    named = {e for e, p in pats.items() if p.search(r["text"])}
    assert named == set(r["emotions"]), r
    if r["kind"] == "negated":
      assert re.search(r"\b(not|no|never|nothing|zero|without|avoids)\b",
                       r["text"], re.IGNORECASE), r
      assert r["negated"] == r["emotions"][-1:]
  names, labels, _, _ = prompts.label_arrays(corpus, tax)
  assert all((l == -1) == (r["kind"] != "single")
             for l, r in zip(labels, corpus))


def test_heldout_split_shares_no_wording_with_training(corpus, split):
  train = [r for r in corpus if r["split"] == "train"]
  test = [r for r in corpus if r["split"] == "test"]
  assert 0.2 * len(corpus) <= len(test) <= 0.4 * len(corpus)
  assert not ({r["template"] for r in train} & {r["template"] for r in test})
  assert split.heldout_style == "brief"
  assert "brief" not in {r["style"] for r in train}
  assert {r["style"] for r in test} == {"template", "tags", "prompt",
                                        "caption", "brief"}
  held = split.heldout_words()
  assert len(held) >= 9 * 5
  train_text = "\n".join(r["text"] for r in train)
  leaked = prompts.word_pattern(held).findall(train_text)
  assert not leaked, leaked[:5]
  for r in test:
    assert set(prompts.emotion_words(r)) <= held, r
  for r in train:
    assert not set(prompts.emotion_words(r)) & held, r
  per_emotion = collections.Counter(r["emotion"] for r in test
                                    if r["emotion"])
  assert len(set(per_emotion.values())) == 1  # same plan for every emotion


def test_generator_is_deterministic_and_seeded(tax, corpus_data):
  a = prompts.generate_prompts(300, seed=3, taxonomy=tax)
  b = prompts.generate_prompts(300, seed=3, taxonomy=tax)
  c = prompts.generate_prompts(300, seed=4, taxonomy=tax)
  assert a == b
  assert [r["text"] for r in a] != [r["text"] for r in c]
  assert prompts.make_split(corpus_data, 3) == prompts.make_split(
      corpus_data, 3)
  assert prompts.make_split(corpus_data, 3) != prompts.make_split(
      corpus_data, 4)
  d = prompts.generate_prompts(300, seed=3, taxonomy=tax,
                               heldout_style="tags")
  assert {r["style"] for r in d if r["split"] == "train"} == {
      "template", "prompt", "caption", "brief"}


def test_variety_of_length_order_and_vocabulary(corpus):
  lengths = [prompts.n_words(r["text"]) for r in corpus]
  assert min(lengths) >= 5 and max(lengths) <= 60
  assert min(lengths) <= 6 and max(lengths) >= 40
  assert sum(n >= 25 for n in lengths) >= 0.2 * len(corpus)
  # Tag lists come in any order: the emotion tag is first, middle or last.
  where = collections.Counter()
  for r in corpus:
    if r["style"] == "tags" and r["kind"] == "single":
      sep = next(s for s in (" | ", "; ", " / ", ", ") if s in r["text"])
      parts = r["text"].split(sep)
      at = [i for i, p in enumerate(parts)
            if any(w in p.lower() for w in prompts.emotion_words(r))]
      where[("first" if at[0] == 0 else "last" if at[0] == len(parts) - 1
             else "middle")] += 1
  assert min(where.values()) >= 0.1 * sum(where.values()), where
  # Type-token ratio over the first 5000 tokens; the old 24-template
  # corpus scored 0.063 here.
  tokens = [t.lower() for r in corpus for t in re.findall(r"[\w'-]+",
                                                          r["text"])]
  assert len(set(tokens[:5000])) / 5000 >= 0.12
  cues = collections.Counter(r["cue"] for r in corpus)
  assert cues["implied"] >= 0.1 * len(corpus)
  assert cues["phrase"] >= 0.1 * len(corpus)
  levels = collections.Counter(r["intensity"] for r in corpus
                               if r["cue"] == "word")
  assert min(levels.values()) >= 0.25 * sum(levels.values())


def test_emotion_subset_and_errors(tax):
  r = prompts.generate_prompts(100, emotions=["happy", "sad"], taxonomy=tax)
  assert collections.Counter(x["emotion"] for x in r
                             if x["emotion"]) == {"happy": 50, "sad": 50}
  with pytest.raises(prompts.PromptError, match="unknown emotion"):
    prompts.generate_prompts(100, emotions=["glad"], taxonomy=tax)
  with pytest.raises(prompts.PromptError, match="heldout style"):
    prompts.generate_prompts(100, taxonomy=tax, heldout_style="poem")
  with pytest.raises(prompts.PromptError, match="fraction"):
    prompts.generate_prompts(100, taxonomy=tax, heldout_fraction=1.5)


def test_neutral_prompts_have_no_emotion_words(tax):
  neutral = prompts.neutral_prompts(400, seed=1, taxonomy=tax)
  assert len({r["text"] for r in neutral}) == 400
  assert all(r["emotion"] is None and r["split"] == "neutral"
             for r in neutral)
  assert not any(prompts.label_text(r["text"], tax) for r in neutral)


def test_article_agreement(corpus):
  assert not any(" a energetic" in r["text"].lower() or
                 r["text"].startswith("A a") for r in corpus)
  assert any(" an " in r["text"] or r["text"].startswith("An ")
             for r in corpus)


CAPTIONS = [
    "A sad piano ballad with soft strings",  # sad
    "Sadness and grief in a slow cello line",  # sad
    "Upbeat, joyful pop with handclaps",  # happy
    "A man rides a horse with a leather saddle",  # no match: not "sad"
    "Drum loop at 120 bpm",  # no match
    "Happy melody that turns sad at the end",  # conflict
    "",  # empty
    "Epic orchestral score, heroic brass",  # triumphant
]


def _write_csv(path, column="caption"):
  import csv
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["ytid", column])
    for i, c in enumerate(CAPTIONS):
      w.writerow([f"id{i}", c])
  return path


def test_caption_import_csv_counts_and_word_boundaries(tmp_path, tax):
  imp = prompts.import_captions(_write_csv(tmp_path / "c.csv"), "caption",
                                tax)
  c = imp.counts
  assert (c["total"], c["kept"], c["no_match"], c["conflict"],
          c["empty"]) == (8, 4, 2, 1, 1)
  assert c["per_emotion"]["sad"] == 2 and c["per_emotion"]["happy"] == 1
  labels = [r["emotion"] for r in imp.records]
  assert labels == ["sad", "sad", "happy", "triumphant"]


def test_caption_import_jsonl_custom_column(tmp_path, tax):
  path = tmp_path / "c.jsonl"
  path.write_text("".join(json.dumps({"desc": c}) + "\n" for c in CAPTIONS))
  records, counts = prompts.load_prompt_file(path, text_column="desc",
                                             emotion_filter=["sad"],
                                             taxonomy=tax)
  assert [r["emotion"] for r in records] == ["sad", "sad"]
  assert counts["kept"] == 4 and counts["selected"] == 2


def test_caption_and_prompt_file_errors(tmp_path, tax):
  csv_path = _write_csv(tmp_path / "c.csv", column="text")
  with pytest.raises(prompts.PromptError, match="no column 'caption'"):
    prompts.load_prompt_file(csv_path, taxonomy=tax)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(prompts.PromptError, match="empty"):
    prompts.load_prompt_file(empty, taxonomy=tax)
  good = prompts.write_prompts(prompts.generate_prompts(20, taxonomy=tax),
                               tmp_path / "p.jsonl")
  with pytest.raises(prompts.PromptError, match="unknown emotion"):
    prompts.load_prompt_file(good, emotion_filter=["sad", "glad"],
                             taxonomy=tax)


def test_emotion_words(corpus, tax):
  for r in corpus[:300]:
    words = prompts.emotion_words(r)
    assert words and all(w in r["text"].lower() for w in words)
    if r["kind"] == "single" and r["cue"] == "word":
      assert set(words) & set(tax.words(r["emotion"])) or words
  legacy = {"slots": {"adj": "Sad", "noun": "grief"}}
  assert prompts.emotion_words(legacy) == ["grief", "sad"]


def test_label_arrays(tax):
  records = (prompts.generate_prompts(90, taxonomy=tax)
             + prompts.neutral_prompts(10, taxonomy=tax))
  names, labels, groups, heldout = prompts.label_arrays(records, tax)
  assert names == tax.emotion_names  # taxonomy order
  assert labels.count(-1) == 10 + sum(r["emotion"] is None
                                      for r in records[:-10])
  assert all(names[l] == r["emotion"] for l, r in zip(labels, records)
             if l >= 0)
  assert set(heldout) == {r["template"] for r in records
                          if r["split"] == "test"}


def test_make_prompts_script(tmp_path):
  out = tmp_path / "prompts.jsonl"
  proc = run_script("make_prompts.py", f"--out={out}", "--n=180", "--seed=2")
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert rows == prompts.generate_prompts(180, seed=2)
  assert sum(r["emotion"] is not None for r in rows) == 180
  proc = run_script("make_prompts.py", f"--out={out}", "--n=180",
                    "--unlabelled_fraction=0", "--heldout_style=caption")
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 180 and all(r["emotion"] for r in rows)
  assert {r["split"] for r in rows if r["style"] == "caption"} == {"test"}
  proc = run_script("make_prompts.py", f"--out={tmp_path / 'n.jsonl'}",
                    "--neutral", "--n=50")
  assert proc.returncode == 0
  proc = run_script("make_prompts.py", f"--out={out}", "--emotions=glad")
  assert proc.returncode != 0
  assert last_line(proc.stderr).startswith("error: unknown emotion")
  assert "Traceback" not in proc.stderr


def test_val_split_shares_no_wording_and_leaves_test_as_it_was(
    tax, corpus_data, split):
  """val_fraction carves a "val" split from the training pools: no word
  form, phrase, scene or template of val is in train or test, none of
  test's is in val, and the test split holds out the same things."""
  records = prompts.generate_prompts(900, seed=0, taxonomy=tax,
                                     val_fraction=0.2)
  by = {s: [r for r in records if r["split"] == s]
        for s in ("train", "val", "test")}
  assert len(by["val"]) >= 0.05 * len(records)
  val = prompts.make_val_split(corpus_data, split, 0, 0.2)
  val_words = val.heldout_words()
  assert val_words and not val_words & split.heldout_words()
  assert not val.templates & split.templates
  templates = {s: {r["template"] for r in rs} for s, rs in by.items()}
  assert templates["val"] <= val.templates
  assert not templates["val"] & (templates["train"] | templates["test"])
  assert templates["test"] <= split.templates
  for name in ("train", "test"):
    text = "\n".join(r["text"] for r in by[name])
    assert not prompts.word_pattern(val_words).findall(text), name
  val_text = "\n".join(r["text"] for r in by["val"])
  assert not prompts.word_pattern(split.heldout_words()).findall(val_text)
  for r in by["val"]:
    assert set(prompts.emotion_words(r)) <= val_words, r
  # Off by default: the same corpus as before val existed.
  assert prompts.generate_prompts(300, seed=1, taxonomy=tax) == (
      prompts.generate_prompts(300, seed=1, taxonomy=tax, val_fraction=0))
  with pytest.raises(prompts.PromptError, match="val fraction"):
    prompts.make_val_split(corpus_data, split, 0, 1.0)
