r"""How TopK and BatchTopK find their k largest: XLA's top-k against
counting passes over bit patterns (`saes/base.py` kth_largest), alone and
inside whole training steps (model.top_k_method, issue 12).

  python benchmarks/bench_top_k.py [--batch=4096] [--d_in=768]
      [--d_sae=6144] [--k=32] [--steps=50]
      [--precisions=float32,tensorfloat32] [--steps_only]

Prints milliseconds per call for: each row's k-th largest (TopK), the
same for AuxK's k_aux=384 over a third of the latents, and the batch's
(k * batch)-th largest (BatchTopK), by lax.top_k / the CPU-tuned candidate
threshold and by kth_largest at 2, 4, 8 and 16 ways (each checked against
numpy's sort); then this project's whole training steps (d_in -> d_sae)
per architecture, precision and method, in steps/s, with their ratio and
what "auto" picks there.
What `top_k_method="auto"` picks follows from these (see
base.uses_counting). Matmul precisions other than float32 matter on GPUs
only.
"""

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_quality import our_steps_per_s  # noqa: E402
from emosae_jax.saes import base, batchtopk  # noqa: E402

WAYS = (2, 4, 8, 16)


def per_call_ms(fn, *args, reps=20):
  compiled = jax.jit(fn)
  out = jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  for _ in range(reps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / reps * 1e3, out


def selections(batch, d_sae, k):
  pre = jax.random.normal(jax.random.key(0), (batch, d_sae))
  rows_want = np.maximum(np.sort(np.asarray(pre), axis=-1)[:, -k], 0)
  print(f"== each row's {k}-th largest (TopK), {batch} x {d_sae}")
  ms, _ = per_call_ms(lambda p: jax.lax.top_k(p, k), pre)
  print(f"   lax.top_k (values and indices) {ms:8.3f} ms")
  for ways in WAYS:
    ms, got = per_call_ms(functools.partial(base.kth_largest, n=k,
                                            ways=ways), pre)
    assert np.array_equal(np.asarray(got), rows_want), ways
    print(f"   kth_largest, {ways:2d} ways        {ms:8.3f} ms")
  print("== AuxK: each row's 384-th largest over a third of the latents")
  masked = jnp.where((jnp.arange(d_sae) % 3 == 0)[None], pre, -jnp.inf)
  ms, _ = per_call_ms(lambda p: base.topk_relu_rows(p, 384, False), masked)
  print(f"   lax.top_k mask                 {ms:8.3f} ms")
  for ways in (2, 8):
    ms, _ = per_call_ms(functools.partial(base.kth_largest, n=384,
                                          ways=ways), masked)
    print(f"   kth_largest, {ways:2d} ways        {ms:8.3f} ms")
  n = k * batch
  flat = jax.nn.relu(pre).reshape(-1)
  want = float(np.sort(np.asarray(flat))[-n])
  print(f"== the batch's {n}-th largest (BatchTopK)")
  ms, got = per_call_ms(lambda p: batchtopk.batch_threshold(p, k, False),
                        pre)
  assert float(got) == want
  print(f"   candidate threshold (top-k)    {ms:8.3f} ms")
  for ways in WAYS:
    ms, got = per_call_ms(functools.partial(base.kth_largest, n=n,
                                            ways=ways), flat)
    assert float(got) == want, ways
    print(f"   kth_largest, {ways:2d} ways        {ms:8.3f} ms")


def steps_per_s(arch, method, shape, k, precision, steps):
  batch, d_in, d_sae = shape
  x = jax.random.normal(jax.random.key(1), (batch, d_in))
  return our_steps_per_s(arch, {"k": k, "top_k_method": method}, d_in,
                         d_sae, x, precision, steps)


def auto_pick(arch, precision):
  """What top_k_method="auto" runs here for arch at this precision (the
  step's precision context is only set off CPU, as in _our_step)."""
  spec = base.SAESpec(arch, 8, 16, k=4)
  context = (contextlib.nullcontext() if jax.default_backend() == "cpu"
             else jax.default_matmul_precision(precision))
  with context:
    return "count" if base.uses_counting(spec) else "top_k"


def whole_steps(shape, k, precisions, steps):
  batch, d_in, d_sae = shape
  print(f"== training steps, {d_in} -> {d_sae}, batch {batch}, {steps} timed "
        "(steps/s; ratio = counting / top-k)")
  for precision in precisions:
    for arch in ("topk", "batchtopk"):
      rate = {}
      for method in ("top_k", "count"):
        rate[method], compile_s = steps_per_s(arch, method, shape, k,
                                              precision, steps)
        print(f"   {precision:13} {arch:9} {method:5} {rate[method]:9.2f} "
              f"(compile {compile_s:.1f} s)", flush=True)
      print(f"   {precision:13} {arch:9} ratio "
            f"{rate['count'] / rate['top_k']:.2f}x; auto picks "
            f"{auto_pick(arch, precision)}")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=4096)
  parser.add_argument("--d_in", type=int, default=768)
  parser.add_argument("--d_sae", type=int, default=6144)
  parser.add_argument("--k", type=int, default=32)
  parser.add_argument("--steps", type=int, default=50,
                      help="timed steps per configuration (CPU: try 4)")
  parser.add_argument("--precisions", default="float32,tensorfloat32")
  parser.add_argument("--steps_only", action="store_true",
                      help="only the whole training steps")
  args = parser.parse_args()
  if not 0 < args.k <= args.d_sae or args.d_sae < 3 * 384:
    raise SystemExit("need 0 < k <= d_sae and d_sae >= 1152 (AuxK's 384 "
                     "over a third of the latents)")
  precisions = args.precisions.split(",")
  if jax.default_backend() == "cpu":
    precisions = precisions[:1]  # CPU matmuls are float32 either way
  print(f"devices {jax.devices()}")
  if not args.steps_only:
    selections(args.batch, args.d_sae, args.k)
  whole_steps((args.batch, args.d_in, args.d_sae), args.k, precisions,
              args.steps)


if __name__ == "__main__":
  main()
