r"""Residual-stream extraction and steering: batching gain, hook overhead, cost.

  python benchmarks/bench_residual.py [--size=tiny|small] [--device=cpu]
      [--backend=transformers|audiocraft] [--clock=wall|process]
      [--prompts=corpus|short] [--n=32] [--batch_size=8] [--frames=16]
      [--duration=1.0] [--repeats=5] [--threads=N]
      [--parts=extraction,overhead]

1. Extraction (bridge.residual.pooled_batch, every layer, sampling, guidance
   3, --frames new tokens): --n prompts in batches of --batch_size (the
   plan extract uses: bridge.residual.batch_plan) against one generate call
   per prompt; seconds per prompt and the speed-up (target >= 5x).
   --prompts=corpus (default): the first --n texts of the project's corpus
   (emosae_jax.prompts.generate_prompts, seed 0, what
   scripts/make_prompts.py writes); short: eight short captions numbered
   (the earlier bench set). audiocraft: the T5 token counts of the set and
   how they fall into batches (extraction masks its padding:
   bridge.audiocraft_batching), and the one-prompt loop once more with
   audiocraft's own computation (that module off): the loop before it.
2. Hook overhead: a plain generate of one --duration clip against the same
   call with the residual steering hook at the middle layer, and against
   the same call with every layer captured (greedy, so all do identical
   work); target <= 5%. Each is the best of --repeats, calls interleaved so
   that drift on a shared machine hits all three alike.
3. Seconds per clip of steered generation (the hooked call above).

--size=small is a random-weight MusicGen with musicgen-small's architecture
(benchmarks/bench_steer_batch.py: T5-base encoder, 24 x 1024 decoder, 4 x
2048 codes, 32 kHz Encodec), built from a hand-written config: the real
model's cost without its weights. tiny is bridge.tiny's test model.
--clock=process times CPU seconds of this process (CPU only): on a machine
shared with other jobs wall-clock best-of-N swung by +-30% between runs,
far more than the hooks cost.
--backend=audiocraft measures audiocraft's MusicGen (concatenated CFG)
through the same hooks; its small is bench_steer_batch's
small_audiocraft_musicgen (musicgen_lm.yaml at model_scale small, random).
Each timing line carries the 1-minute load average read after it.
"""

import argparse
import collections
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_steer_batch import build  # noqa: E402
from bridge import (audiocraft_batching, residual,  # noqa: E402
                    residual_steering)
from bridge.generate import Settings  # noqa: E402
from emosae_jax import prompts as prompt_corpus  # noqa: E402

PROMPTS = ("a piano piece with soft strings", "sad slow violin melody",
           "happy upbeat rock song with drums", "dark ambient synth",
           "calm acoustic guitar", "tense cinematic score with low brass",
           "joyful folk tune", "an electronic track with a steady beat")


def load() -> str:
  """The 1-minute load average (a shared machine: read beside timings)."""
  return f"load {os.getloadavg()[0]:.2f}"


def bench_texts(kind: str, n: int) -> list[str]:
  if kind == "short":
    return [PROMPTS[i % len(PROMPTS)] + f" {i}" for i in range(n)]
  records = prompt_corpus.generate_prompts(max(n, 9), seed=0)
  if len(records) < n:
    raise SystemExit(f"error: the corpus has only {len(records)} prompts")
  return [r["text"] for r in records[:n]]


def _sync(device):
  if device.startswith("cuda"):
    torch.cuda.synchronize()


CLOCK = time.perf_counter  # --clock=process: time.process_time


def timed(fn, device):
  _sync(device)
  start = CLOCK()
  fn()
  _sync(device)
  return CLOCK() - start


class TextEncoderClock:
  """Seconds spent in the text encoder (audiocraft: its condition
  provider, T5 plus projection), summed over calls while entered."""

  def __init__(self, backend, device):
    model = backend.model
    self.module = model.lm.condition_provider \
        if residual.backend_name(backend) == "audiocraft" \
        else model.text_encoder
    self.device, self.seconds, self._start = device, 0.0, None

  def __enter__(self):
    def pre(*_):
      _sync(self.device)
      self._start = CLOCK()

    def post(*_):
      _sync(self.device)
      self.seconds += CLOCK() - self._start
    self.handles = [self.module.register_forward_pre_hook(pre),
                    self.module.register_forward_hook(post)]
    return self

  def __exit__(self, *exc):
    for h in self.handles:
      h.remove()


def extraction(backend, texts, batch_size, frames, device):
  """{batched, looped: seconds for all of `texts`; batched_text,
  looped_text: of which in the text encoder}."""
  layers = list(range(len(residual_steering.decoder_layers(backend.model))))
  kwargs = residual.generate_kwargs(frames, 3.0, True, 250)
  # extract's batches (planned once per run, as extract does).
  plans = {size: residual.batch_plan(backend, texts, size)
           for size in (batch_size, 1)}
  run = lambda size: [residual.pooled_batch(
      backend, [texts[i] for i in rows], layers, kwargs, b)
                      for b, rows in enumerate(plans[size])]
  run(batch_size)  # warm-up
  runs = [("batched", batch_size, contextlib.nullcontext()),
          ("looped", 1, contextlib.nullcontext())]
  if residual.backend_name(backend) == "audiocraft":
    # The loop again with audiocraft's own computation (no padding mask,
    # keys and values projected every step, T5 on the null rows too).
    runs.append(("library", 1, mock.patch.object(
        audiocraft_batching, "batched",
        lambda lm: contextlib.nullcontext())))
  out = {}
  for name, size, patch in runs:
    with patch, TextEncoderClock(backend, device) as text:
      out[name] = timed(lambda: run(size), device)  # pylint: disable=cell-var-from-loop
    out[name + "_text"] = text.seconds
  return out


def overhead(backend, settings, repeats, device):
  """Best-of-repeats seconds: plain, steering hook, all layers captured."""
  model = backend.model
  layers = residual_steering.decoder_layers(model)
  width = residual_steering.decoder_width(model)
  direction = torch.randn(width, generator=torch.Generator().manual_seed(0))
  prompt = [PROMPTS[0]]

  def plain():
    torch.manual_seed(0)
    backend.generate(prompt, settings)

  def steered():
    with residual_steering.steer(model, direction, 0.5, len(layers) // 2):
      plain()

  def captured():
    with residual.capture(model, range(len(layers))):
      plain()

  plain()  # warm-up
  times = {"plain": [], "steered": [], "captured": []}
  for _ in range(repeats):
    for name, fn in (("plain", plain), ("steered", steered),
                     ("captured", captured)):
      times[name].append(timed(fn, device))
  return {k: min(v) for k, v in times.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=["tiny", "small"], default="tiny")
  p.add_argument("--device", default="cpu")
  p.add_argument("--backend", choices=["transformers", "audiocraft"],
                 default="transformers")
  p.add_argument("--prompts", choices=["corpus", "short"], default="corpus")
  p.add_argument("--n", type=int, default=32)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--duration", type=float, default=1.0)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=None)
  p.add_argument("--clock", choices=["wall", "process"], default="wall")
  p.add_argument("--parts", default="extraction,overhead",
                 help="which measurements to run")
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  if args.clock == "process":
    if args.device.startswith("cuda"):
      raise SystemExit("error: --clock=process measures CPU time only")
    global CLOCK
    CLOCK = time.process_time
  if args.device.startswith("cuda") and not torch.cuda.is_available():
    raise SystemExit(f"error: --device={args.device} but torch sees no GPU")
  backend = build(args.size, args.backend, args.device)
  n_layers = len(residual_steering.decoder_layers(backend.model))
  texts = bench_texts(args.prompts, args.n)
  print(f"{args.size} {args.backend} MusicGen ({n_layers} layers x "
        f"{residual_steering.decoder_width(backend.model)}) on {args.device} "
        f"(threads {torch.get_num_threads()}, {args.clock} clock)")

  parts = args.parts.split(",")
  if "extraction" in parts:
    report_extraction(backend, texts, args, n_layers)
  if "overhead" in parts:
    report_overhead(backend, args, n_layers)


def report_extraction(backend, texts, args, n_layers):
  if residual.backend_name(backend) == "audiocraft":
    report_token_counts(backend, texts, args.batch_size)
  t = extraction(backend, texts, args.batch_size, args.frames, args.device)
  print(f"extraction, {args.n} {args.prompts} prompts, {args.frames} "
        f"frames, all {n_layers} layers, guidance 3 ({load()}):")
  calls = len(residual.batch_plan(backend, texts, args.batch_size))
  for name, label in (("batched", f"batched (batch {args.batch_size}, "
                                  f"{calls} calls)"),
                      ("looped", "one prompt per call"),
                      ("library", "the same, audiocraft's own")):
    if name not in t:
      continue
    print(f"  {label:26s}: {t[name] / args.n:8.4f} s per prompt, of which "
          f"text encoder {t[name + '_text'] / args.n:.4f}")
  decoder = (t["looped"] - t["looped_text"]) / (t["batched"] -
                                                t["batched_text"])
  print(f"  speed-up: {t['looped'] / t['batched']:.2f}x (target >= 5x); "
        f"decoder alone: {decoder:.2f}x")
  if "library" in t:
    print(f"  over audiocraft's own one-prompt loop: "
          f"{t['library'] / t['batched']:.2f}x")


def report_token_counts(backend, texts, batch_size):
  """How the prompts' T5 token counts spread, and what batching by exact
  count (the plan before padding was masked) would have made of them."""
  counts = residual.token_counts(backend, texts)
  groups = sorted(collections.Counter(counts).values())
  by_count = sum(-(-g // batch_size) for g in groups)
  plan = residual.batch_plan(backend, texts, batch_size)
  padded = sum(max(counts[i] for i in rows) * len(rows) for rows in plan)
  print(f"T5 token counts (this model's tokenizer): {min(counts)}-"
        f"{max(counts)}, median {statistics.median(counts):g}, "
        f"{len(groups)} distinct; prompts per count: min {groups[0]}, "
        f"median {statistics.median(groups):g}, max {groups[-1]}")
  print(f"  one count per batch would take {by_count} calls "
        f"({len(texts) / by_count:.1f} prompts per call); sorted by count "
        f"and masked: {len(plan)} calls, padding "
        f"{100 * (1 - sum(counts) / padded):.1f}% of the keys")


def report_overhead(backend, args, n_layers):
  settings = Settings(duration=args.duration, sampling=False)
  t = overhead(backend, settings, args.repeats, args.device)
  print(f"one {args.duration:g} s clip, greedy, guidance 3, best of "
        f"{args.repeats} ({load()}):")
  print(f"  plain generate     : {t['plain']:8.3f} s")
  print(f"  steered (layer {n_layers // 2:2d}) : {t['steered']:8.3f} s "
        f"(+{100 * (t['steered'] / t['plain'] - 1):.1f}%, target <= 5%)")
  print(f"  all layers captured: {t['captured']:8.3f} s "
        f"(+{100 * (t['captured'] / t['plain'] - 1):.1f}%)")
  print(f"  steered generation: {t['steered'] / args.duration:.3f} s per "
        f"second of audio")


if __name__ == "__main__":
  main()
