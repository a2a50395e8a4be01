"""Emotion-labelled music prompts: corpus, taxonomy, files, caption import.

- `corpus`: the emotion corpus (`generate_prompts`).
- `lexicon`: its vocabulary (prompt_data/corpus.json) and held-out split.
- `taxonomy`: emotions and their caption-import words, neutral prompts.
- `files`: prompts.jsonl I/O, caption import, label arrays.

Standard library only (no numpy, no jax): the torch side (`bridge`,
`scripts/extract.py`) imports this package in environments without jax.

A prompt record is a dict:
  {"id", "text", "emotion" (None: neutral, mixed or negated), "template",
   "shape", "split" ("train" | "val" | "test" | "neutral" | "caption"), "slots",
   "valence", "arousal"} plus, for corpus prompts, "style", "kind", "cue",
   "intensity", "emotions", "negated", "emotion_words".
"""

from emosae_jax.prompts.corpus import DEFAULT_N, generate_prompts, n_words
from emosae_jax.prompts.lexicon import (CORPUS_FILE, DEFAULT_HELDOUT_STYLE,
                                        Corpus, Family, Split, check_corpus,
                                        load_corpus, make_split,
                                        make_val_split, word_pattern)
from emosae_jax.prompts.files import (CaptionImport, emotion_words,
                                      import_captions, label_arrays,
                                      label_text, load_prompt_file,
                                      read_prompts, write_prompts)
from emosae_jax.prompts.taxonomy import (TAXONOMY_FILE, PromptError,
                                         Taxonomy, check_emotions,
                                         heldout_templates, load_taxonomy,
                                         neutral_prompts)
