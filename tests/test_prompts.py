"""Prompt corpus, held-out template split, neutral prompts, caption import."""

import collections
import dataclasses
import json

import pytest

from conftest import last_line, run_script
from emosae_jax import prompts


@pytest.fixture(scope="session")
def tax():
  return prompts.load_taxonomy()


@pytest.fixture(scope="session")
def corpus():
  return prompts.generate_prompts()  # the default corpus


def test_default_corpus_size_emotions_balance_templates(corpus, tax):
  texts = [r["text"] for r in corpus]
  assert len(corpus) >= 2000
  assert len(set(t.lower() for t in texts)) == len(corpus)
  counts = collections.Counter(r["emotion"] for r in corpus)
  assert len(counts) >= 8
  assert {"happy", "sad", "calm", "energetic"} <= set(counts)
  assert max(counts.values()) <= 1.05 * min(counts.values())
  assert len({r["template"] for r in corpus}) >= 20
  assert len({r["shape"] for r in corpus}) >= 3  # tags ... captions
  for r in corpus:
    assert {"text", "emotion", "template", "split", "slots"} <= set(r)


def test_taxonomy_has_coordinates_and_unique_words(tax):
  owner = {}
  for name, e in tax.emotions.items():
    assert -1 <= e["valence"] <= 1 and -1 <= e["arousal"] <= 1
    assert len(e["descriptors"]) >= 5
    for w in tax.words(name):
      assert owner.setdefault(w, name) == name, w
  for slot in ("genre", "instrument", "tempo", "production", "setting"):
    assert tax.slots[slot]


def test_each_prompt_reads_as_its_own_emotion_only(corpus, tax):
  # Slots carry no emotion words, so the label comes from the emotion words.
  for r in corpus:
    assert set(prompts.label_text(r["text"], tax)) == {r["emotion"]}, r


def test_heldout_split_is_by_whole_template(corpus):
  splits = collections.defaultdict(set)
  for r in corpus:
    splits[r["template"]].add(r["split"])
  assert all(len(s) == 1 for s in splits.values())
  test_templates = {t for t, s in splits.items() if s == {"test"}}
  assert 2 <= len(test_templates) <= len(splits) // 2
  shapes = {r["shape"] for r in corpus if r["split"] == "test"}
  assert len(shapes) >= 3
  per_emotion = collections.Counter(r["emotion"] for r in corpus
                                    if r["split"] == "test")
  assert max(per_emotion.values()) <= 1.1 * min(per_emotion.values())


def test_generator_is_deterministic_and_seeded(tax):
  a = prompts.generate_prompts(300, seed=3, taxonomy=tax)
  b = prompts.generate_prompts(300, seed=3, taxonomy=tax)
  c = prompts.generate_prompts(300, seed=4, taxonomy=tax)
  assert a == b
  assert [r["text"] for r in a] != [r["text"] for r in c]


def test_emotion_subset_and_errors(tax):
  r = prompts.generate_prompts(100, emotions=["happy", "sad"], taxonomy=tax)
  assert collections.Counter(x["emotion"] for x in r) == {"happy": 50,
                                                          "sad": 50}
  with pytest.raises(prompts.PromptError, match="unknown emotion"):
    prompts.generate_prompts(100, emotions=["glad"], taxonomy=tax)
  small = dataclasses.replace(
      tax, slots=dict(tax.slots, genre=["jazz", "rock"]),
      templates=[{"id": "t0", "shape": "tag", "text": "{adj} {genre}"}])
  with pytest.raises(prompts.PromptError, match="unique"):
    prompts.generate_prompts(9 * 40, taxonomy=small)  # > 2 x 10 adjectives


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
  for r in corpus[:200]:
    words = prompts.emotion_words(r)
    assert words and set(words) <= set(tax.words(r["emotion"]))
    assert all(w in r["text"].lower() for w in words)


def test_label_arrays(tax):
  records = (prompts.generate_prompts(90, taxonomy=tax)
             + prompts.neutral_prompts(10, taxonomy=tax))
  names, labels, groups, heldout = prompts.label_arrays(records, tax)
  assert names == tax.emotion_names  # taxonomy order
  assert labels.count(-1) == 10
  assert all(names[l] == r["emotion"] for l, r in zip(labels, records)
             if l >= 0)
  assert set(heldout) == {r["template"] for r in records
                          if r["split"] == "test"}


def test_make_prompts_script(tmp_path):
  out = tmp_path / "prompts.jsonl"
  proc = run_script("make_prompts.py", f"--out={out}", "--n=180", "--seed=2")
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 180
  assert {"text", "emotion", "template", "split"} <= set(rows[0])
  proc = run_script("make_prompts.py", f"--out={tmp_path / 'n.jsonl'}",
                    "--neutral", "--n=50")
  assert proc.returncode == 0
  proc = run_script("make_prompts.py", f"--out={out}", "--emotions=glad")
  assert proc.returncode != 0
  assert last_line(proc.stderr).startswith("error: unknown emotion")
  assert "Traceback" not in proc.stderr
