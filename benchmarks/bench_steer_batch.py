r"""Several steering strengths in one generate call vs one call per strength.

  python benchmarks/bench_steer_batch.py [--size=tiny|small]
      [--backend=transformers|audiocraft] [--strengths=0,1,2,4]
      [--duration=1.0] [--device=cpu] [--repeats=3] [--threads=N]

Generates one prompt at every strength (greedy, guidance 3), once as a
batch of len(strengths) rows steered row by row, once as separate calls,
and prints both wall times, their ratio, and whether the codes match.
--size=small is a random-weight model with musicgen-small's architecture
(T5-base encoder, 24 x 1024 decoder, 4 x 2048 codes, 32 kHz Encodec), for
either backend: the real model's cost without its weights. tiny is
bridge.tiny's test model.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bridge import steering, tiny  # noqa: E402
from bridge.generate import (AudiocraftBackend, Settings,  # noqa: E402
                             TransformersBackend)

PROMPT = "a piano piece with soft strings"


def small_musicgen():
  """Random MusicgenForConditionalGeneration shaped like musicgen-small."""
  from transformers import (EncodecConfig, MusicgenConfig,
                            MusicgenDecoderConfig,
                            MusicgenForConditionalGeneration, T5Config)
  t5 = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072,
                num_layers=12, num_heads=12)
  audio = EncodecConfig(
      sampling_rate=32000, audio_channels=1, num_filters=64,
      upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, hidden_size=128,
      target_bandwidths=[2.2], num_lstm_layers=2)
  decoder = MusicgenDecoderConfig(
      vocab_size=2048, hidden_size=1024, num_hidden_layers=24,
      num_attention_heads=16, ffn_dim=4096, num_codebooks=4,
      max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048)
  config = MusicgenConfig(text_encoder=t5.to_dict(),
                          audio_encoder=audio.to_dict(),
                          decoder=decoder.to_dict())
  torch.manual_seed(0)
  model = MusicgenForConditionalGeneration(config).eval()
  model.generation_config.decoder_start_token_id = 2048
  model.generation_config.pad_token_id = 2048
  return model


def small_audiocraft_musicgen():
  """Random audiocraft MusicGen shaped like musicgen-small: the LM of
  audiocraft's config/model/lm/musicgen_lm.yaml at model_scale small (24 x
  1024, 16 heads, 4 x 2048 codes, memory-efficient attention, no biases),
  the 32 kHz Encodec of encodec_large_nq4_s640.yaml (SEANet 64 filters,
  ratios 8-5-4-4, 2 LSTM layers, 128 dims), a random T5-base encoder. The
  tokenizer is bridge.tiny's (no T5 vocabulary offline): it splits words
  it lacks into letters, so prompts run longer than with t5-base's."""
  from unittest import mock
  import omegaconf
  from audiocraft.models import MusicGen, builders
  from audiocraft.modules import conditioners
  from transformers import T5Config, T5EncoderModel
  cfg = tiny.tiny_audiocraft_config(dict(
      tiny.MUSICGEN_LM_LAYOUT, n_q=4, card=2048, dim=1024, num_heads=16,
      num_layers=24, hidden_scale=4, bias_proj=False))
  cfg["codebooks_pattern"]["delay"]["delays"] = [0, 1, 2, 3]
  cfg["encodec"].update(sample_rate=32000)
  cfg["seanet"].update(dimension=128, n_filters=64, ratios=[8, 5, 4, 4],
                       lstm=2)
  cfg["rvq"].update(n_q=4, bins=2048)
  cfg = omegaconf.OmegaConf.create(cfg)
  torch.manual_seed(0)
  t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=768, d_kv=64,
                               d_ff=3072, num_layers=12,
                               num_heads=12)).eval()
  with mock.patch.object(conditioners.T5EncoderModel, "from_pretrained",
                         lambda *a, **k: t5), \
       mock.patch.object(conditioners.T5Tokenizer, "from_pretrained",
                         lambda *a, **k: tiny.tiny_t5_tokenizer()):
    lm = builders.get_lm_model(cfg).eval()
  compression = builders.get_compression_model(cfg).eval()
  lm.cfg = cfg
  return MusicGen("small-random", compression, lm)


def build(size, backend_name, device):
  """A backend object around a random model (no weights are loaded)."""
  if backend_name == "audiocraft":
    backend = AudiocraftBackend.__new__(AudiocraftBackend)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      backend.model = tiny.tiny_audiocraft_musicgen() if size == "tiny" \
          else small_audiocraft_musicgen()
    backend.model.lm.to(device)
    backend.model.compression_model.to(device)
    backend.model_id, backend.device = f"{size}-random", device
    return backend
  backend = TransformersBackend.__new__(TransformersBackend)
  model, backend.processor = tiny.tiny_musicgen()
  if size == "small":
    model = small_musicgen()
  backend.model, backend.device = model.to(device), device
  return backend


def codes(backend, prompts, strengths, direction, settings):
  """Codes [B, K, T] of one steered generate call (greedy), audio decoded
  as usual (its cost is part of the timing)."""
  seen = []
  model = backend.model
  codec = model.audio_encoder if hasattr(model, "audio_encoder") else \
      model.compression_model
  decode = codec.decode

  def spy(codes_in, *args, **kwargs):
    seen.append(codes_in[0] if codes_in.ndim == 4 else codes_in)
    return decode(codes_in, *args, **kwargs)

  codec.decode = spy
  try:
    with steering.steer(model, direction, strengths):
      backend.generate(prompts, settings)
  finally:
    del codec.decode  # back to the class method
  return seen[0].cpu()


def timed(fn, repeats, device):
  out = fn()  # warm-up
  sync = torch.cuda.synchronize if device.startswith("cuda") else (
      lambda: None)
  sync()
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  sync()
  return (time.perf_counter() - start) / repeats, out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=["tiny", "small"], default="tiny")
  p.add_argument("--backend", choices=["transformers", "audiocraft"],
                 default="transformers")
  p.add_argument("--strengths", default="0,1,2,4")
  p.add_argument("--duration", type=float, default=1.0)
  p.add_argument("--device", default="cpu")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=None)
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  strengths = [float(s) for s in args.strengths.split(",")]
  backend = build(args.size, args.backend, args.device)
  d_model = steering.encoder_d_model(steering.find_t5_encoder(
      backend.model)[0])
  direction = torch.randn(d_model, generator=torch.Generator().manual_seed(0))
  direction = direction / direction.norm() * 5.0
  settings = Settings(duration=args.duration, sampling=False)

  batched_s, batched = timed(lambda: codes(
      backend, [PROMPT] * len(strengths), strengths, direction, settings),
      args.repeats, args.device)
  separate_s, separate = timed(lambda: [codes(
      backend, [PROMPT], s, direction, settings)[0] for s in strengths],
      args.repeats, args.device)
  same = all(torch.equal(batched[i], separate[i])
             for i in range(len(strengths)))
  print(f"{args.backend} {args.size} on {args.device} "
        f"(threads {torch.get_num_threads()}), {len(strengths)} strengths, "
        f"{args.duration:g} s of audio, greedy, guidance 3:")
  print(f"  one batched call : {batched_s:8.3f} s")
  print(f"  separate calls   : {separate_s:8.3f} s")
  print(f"  ratio separate/batched: {separate_s / batched_s:.2f}x; "
        f"identical codes: {bool(same)}")


if __name__ == "__main__":
  main()
