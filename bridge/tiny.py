"""Tiny random models built from configs, for tests and offline smoke runs.

No model hub is needed: the tokenizer is a small unigram vocabulary built in
memory (every letter is a piece, so any lowercase text tokenizes), and the
models are random-initialised from tiny configs with a fixed torch seed.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import T5Config, T5EncoderModel, T5Tokenizer

# Whole-word pieces for the words prompts use most; anything else falls back
# to single characters.
_WORDS = (
    "a an the and with of in on for to by at music song track piece tune "
    "sad happy calm energetic angry tender tense fearful nostalgic "
    "triumphant joyful melancholic peaceful upbeat dark bright slow fast "
    "soft loud gentle heavy piano guitar strings drums synth violin bass "
    "cello flute choir orchestra ballad beat rock jazz pop ambient "
    "electronic classical folk lofi hip hop metal cinematic score "
    "background instrumental melody rhythm tempo"
).split()


def tiny_t5_tokenizer(extra_words: tuple[str, ...] = ()) -> T5Tokenizer:
  """A T5 (sentencepiece unigram) tokenizer with a ~150-piece vocabulary."""
  vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
  seen = set()
  for w in list(_WORDS) + list(extra_words):
    if w not in seen:
      seen.add(w)
      vocab.append(("\u2581" + w, -2.0))
  chars = string.ascii_lowercase + string.ascii_uppercase + string.digits
  vocab += [(c, -8.0) for c in chars + ",.;:'!?-()/&"]
  vocab += [("\u2581" + c, -7.0) for c in string.ascii_lowercase]
  vocab.append(("\u2581", -6.0))
  return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_t5_config(vocab_size: int, d_model: int = 32) -> T5Config:
  return T5Config(
      vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
      relative_attention_max_distance=16, dropout_rate=0.0,
      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def tiny_t5_encoder(d_model: int = 32, seed: int = 0):
  """(T5EncoderModel, T5Tokenizer), random weights, eval mode."""
  tokenizer = tiny_t5_tokenizer()
  torch.manual_seed(seed)
  model = T5EncoderModel(tiny_t5_config(len(tokenizer), d_model)).eval()
  return model, tokenizer


def save_tiny_t5(path: str | Path, d_model: int = 32, seed: int = 0) -> Path:
  """Saves a tiny T5 encoder + tokenizer folder loadable by from_pretrained."""
  model, tokenizer = tiny_t5_encoder(d_model, seed)
  path = Path(path)
  model.save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path
