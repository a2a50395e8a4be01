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


# --- tiny MusicGen (transformers), tiny CLAP, tiny audiocraft MusicGen ------
# Sizes are the smallest that keep every code path real: 4 codebooks of 64
# codes at 50 frames/s (like musicgen-small's frame rate), 8 kHz audio.
TINY_CARD = 64
TINY_N_Q = 4
TINY_SAMPLE_RATE = 8000
_TINY_RATIOS = [8, 5, 4]  # hop 160 samples -> 50 frames per second


def random_directions(d_model: int = 32, n: int = 2, seed: int = 0):
  """n random steering directions (at most two: happy, sad) for tests."""
  from bridge.directions import Directions
  gen = torch.Generator().manual_seed(seed)
  return Directions(
      vectors=torch.randn(n, d_model, generator=gen),
      feature_ids=tuple(range(n)), emotions=("happy", "sad")[:n],
      selectivity=(2.0,) * n, p_values=(0.01,) * n,
      typical_activation=torch.tensor([1.5, 0.5][:n]))


def _randomise_codebooks(codec, seed: int) -> None:
  """HF Encodec codebooks start as zeros (all audio equal): fill them."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in codec.quantizer.layers:
      embed = layer.codebook.embed
      embed.copy_(torch.randn(embed.shape, generator=gen))
      layer.codebook.embed_avg.copy_(embed)


def tiny_musicgen(d_model: int = 32, seed: int = 0):
  """(MusicgenForConditionalGeneration, MusicgenProcessor), random, eval.

  Text encoder: the tiny T5 above; audio: a 4-codebook Encodec at 8 kHz,
  50 frames/s, with random codebooks; decoder: 2 layers of width 32.
  Generation defaults follow musicgen-small (sampling, guidance 3).
  """
  from transformers import (EncodecConfig, EncodecFeatureExtractor,
                            GenerationConfig, MusicgenConfig,
                            MusicgenDecoderConfig,
                            MusicgenForConditionalGeneration,
                            MusicgenProcessor)
  tokenizer = tiny_t5_tokenizer()
  frame_rate = TINY_SAMPLE_RATE // (8 * 5 * 4)
  # Encodec picks its codebook count from the bandwidth: bits per second.
  bandwidth = TINY_N_Q * frame_rate * 6 / 1000  # 6 = log2(TINY_CARD)
  audio = EncodecConfig(
      target_bandwidths=[bandwidth], sampling_rate=TINY_SAMPLE_RATE,
      audio_channels=1, num_filters=4, num_residual_layers=1,
      upsampling_ratios=_TINY_RATIOS, codebook_size=TINY_CARD,
      hidden_size=16, codebook_dim=16, num_lstm_layers=1)
  decoder = MusicgenDecoderConfig(
      vocab_size=TINY_CARD, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, ffn_dim=64, num_codebooks=TINY_N_Q,
      max_position_embeddings=512, pad_token_id=TINY_CARD,
      bos_token_id=TINY_CARD, audio_channels=1)
  config = MusicgenConfig(
      text_encoder=tiny_t5_config(len(tokenizer), d_model).to_dict(),
      audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
  torch.manual_seed(seed)
  model = MusicgenForConditionalGeneration(config).eval()
  _randomise_codebooks(model.audio_encoder, seed)
  model.generation_config = GenerationConfig(
      decoder_start_token_id=TINY_CARD, pad_token_id=TINY_CARD,
      bos_token_id=TINY_CARD, do_sample=True, guidance_scale=3.0,
      max_length=256)
  features = EncodecFeatureExtractor(feature_size=1,
                                     sampling_rate=TINY_SAMPLE_RATE)
  processor = MusicgenProcessor(feature_extractor=features,
                                tokenizer=tokenizer)
  return model, processor


def save_tiny_musicgen(path: str | Path, d_model: int = 32,
                       seed: int = 0) -> Path:
  """A tiny MusicGen folder (model + processor) for from_pretrained."""
  model, processor = tiny_musicgen(d_model, seed)
  path = Path(path)
  model.save_pretrained(path)
  processor.save_pretrained(path)
  return path


def _byte_level_roberta_tokenizer():
  """A RoBERTa tokenizer with only the 256 byte symbols and no merges."""
  from tokenizers.pre_tokenizers import ByteLevel
  from transformers import RobertaTokenizer
  specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  symbols = specials + sorted(ByteLevel.alphabet())
  return RobertaTokenizer(vocab={s: i for i, s in enumerate(symbols)},
                          merges=[])


def tiny_clap(seed: int = 0):
  """(ClapModel, ClapProcessor), random, eval; unfused HTSAT like
  laion/clap-htsat-unfused, 48 kHz input, at most 2 s of audio."""
  from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor,
                            ClapModel, ClapProcessor, ClapTextConfig)
  tokenizer = _byte_level_roberta_tokenizer()
  text = ClapTextConfig(
      vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
      num_attention_heads=2, intermediate_size=32,
      max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
      eos_token_id=2)
  audio = ClapAudioConfig(
      spec_size=64, num_mel_bins=16, patch_size=4, patch_stride=[4, 4],
      window_size=4, depths=[1, 1], num_attention_heads=[2, 2],
      patch_embeds_hidden_size=16, hidden_size=32, enable_fusion=False)
  config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                      projection_dim=16)
  torch.manual_seed(seed)
  model = ClapModel(config).eval()
  # 2 s at 100 frames/s = 201 frames: fits spec_size * (spec_size // mels).
  features = ClapFeatureExtractor(
      feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=2,
      fft_window_size=1024, truncation="rand_trunc", padding="repeatpad")
  return model, ClapProcessor(feature_extractor=features, tokenizer=tokenizer)


def save_tiny_clap(path: str | Path, seed: int = 0) -> Path:
  model, processor = tiny_clap(seed)
  path = Path(path)
  model.save_pretrained(path)
  processor.save_pretrained(path)
  return path


# audiocraft's T5Conditioner sizes its projection by the T5 *name*
# (t5-base -> 768), so the tiny T5 behind it is 768 wide (still tiny: 4
# heads of 8, ffn 64).
AUDIOCRAFT_T5_NAME = "t5-base"
AUDIOCRAFT_T5_DIM = 768


# musicgen's LM layout (audiocraft config/model/lm/musicgen_lm.yaml): the
# memory-efficient (custom) attention, no biases. The tiny default keeps
# audiocraft's defaults (torch's nn.MultiheadAttention, biases).
MUSICGEN_LM_LAYOUT = {"memory_efficient": True, "bias_attn": False,
                      "bias_ff": False}


def tiny_audiocraft_config(lm_overrides: dict | None = None) -> dict:
  """The xp.cfg of a tiny audiocraft MusicGen (LM + SEANet/RVQ codec);
  lm_overrides: transformer_lm keys to change (e.g. MUSICGEN_LM_LAYOUT)."""
  seanet = {
      "dimension": 16, "channels": 1, "causal": False, "n_filters": 4,
      "n_residual_layers": 1, "ratios": _TINY_RATIOS, "activation": "ELU",
      "activation_params": {"alpha": 1.0}, "norm": "weight_norm",
      "norm_params": {}, "kernel_size": 7, "last_kernel_size": 7,
      "residual_kernel_size": 3, "dilation_base": 2, "pad_mode": "constant",
      "true_skip": True, "compress": 2, "lstm": 0,
      "disable_norm_outer_blocks": 0, "encoder": {},
      "decoder": {"trim_right_ratio": 1.0, "final_activation": None,
                  "final_activation_params": None}}
  return {
      "device": "cpu", "dtype": "float32", "lm_model": "transformer_lm",
      "transformer_lm": {
          "n_q": TINY_N_Q, "card": TINY_CARD, "dim": 32, "num_heads": 4,
          "num_layers": 2, "hidden_scale": 2, "norm_first": True,
          "causal": True, "cross_attention": True, "bias_proj": False,
          "positional_embedding": "sin", **(lm_overrides or {})},
      "codebooks_pattern": {"modeling": "delay", "delay": {
          "delays": list(range(TINY_N_Q)), "flatten_first": 0,
          "empty_initial": 0}},
      "attribute_dropout": {},
      "classifier_free_guidance": {"training_dropout": 0.0,
                                   "inference_coef": 3.0},
      "fuser": {"cross_attention_pos_emb": False,
                "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                "cross": ["description"], "input_interpolate": []},
      "conditioners": {"description": {"model": "t5", "t5": {
          "name": AUDIOCRAFT_T5_NAME, "finetune": False, "word_dropout": 0.0,
          "normalize_text": False}}},
      "dataset": {"segment_duration": 30.0},
      "compression_model": "encodec",
      "encodec": {"autoencoder": "seanet", "quantizer": "rvq",
                  "sample_rate": TINY_SAMPLE_RATE, "channels": 1,
                  "causal": False, "renormalize": False},
      "seanet": seanet,
      "rvq": {"n_q": TINY_N_Q, "q_dropout": False, "bins": TINY_CARD,
              "decay": 0.99, "kmeans_init": False, "kmeans_iters": 10,
              "threshold_ema_dead_code": 2},
  }


def tiny_audiocraft_musicgen(seed: int = 0, lm_overrides: dict | None = None):
  """An audiocraft MusicGen with random weights, built in memory.

  Its description conditioner wraps tiny_t5_encoder(768): T5Conditioner's
  loaders are pointed at the in-memory T5 while the LM is built, so no hub
  or cache is touched. Needs audiocraft (scripts/install_audiocraft.sh).
  """
  from unittest import mock
  import omegaconf
  from audiocraft.models import MusicGen, builders
  from audiocraft.modules import conditioners
  t5, tokenizer = tiny_t5_encoder(AUDIOCRAFT_T5_DIM, seed)
  cfg = omegaconf.OmegaConf.create(tiny_audiocraft_config(lm_overrides))
  with mock.patch.object(conditioners.T5EncoderModel, "from_pretrained",
                         lambda *a, **k: t5), \
       mock.patch.object(conditioners.T5Tokenizer, "from_pretrained",
                         lambda *a, **k: tokenizer):
    torch.manual_seed(seed)
    lm = builders.get_lm_model(cfg).eval()
  compression = builders.get_compression_model(cfg).eval()
  lm.cfg = cfg
  return MusicGen("tiny", compression, lm)


def save_tiny_audiocraft_musicgen(path: str | Path, hub_cache: str | Path,
                                  seed: int = 0) -> Path:
  """Writes a tiny audiocraft MusicGen folder and its T5 into a hub cache.

  path gets state_dict.bin and compression_state_dict.bin (what
  MusicGen.get_pretrained reads from a local folder); the tiny T5 goes into
  hub_cache as the cached "t5-base", so point HF_HUB_CACHE (or
  HF_HOME=<parent>, with hub_cache=<parent>/hub) there with
  HF_HUB_OFFLINE=1 before loading.
  """
  model = tiny_audiocraft_musicgen(seed)
  cfg = tiny_audiocraft_config()
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  # Plain dicts and tensors only: torch.load defaults to weights_only.
  torch.save({"xp.cfg": cfg, "best_state": model.lm.state_dict()},
             path / "state_dict.bin")
  torch.save({"xp.cfg": cfg,
              "best_state": model.compression_model.state_dict()},
             path / "compression_state_dict.bin")
  save_to_hub_cache(hub_cache, AUDIOCRAFT_T5_NAME,
                    lambda p: save_tiny_t5(p, AUDIOCRAFT_T5_DIM, seed))
  return path


def save_to_hub_cache(hub_cache: str | Path, repo_id: str, write) -> Path:
  """Lays out a Hugging Face hub cache entry so from_pretrained(repo_id)
  finds it offline; write(folder) fills the snapshot folder."""
  repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
  commit = "0" * 40
  snapshot = repo / "snapshots" / commit
  write(snapshot)
  (repo / "refs").mkdir(parents=True, exist_ok=True)
  (repo / "refs" / "main").write_text(commit)
  return snapshot
