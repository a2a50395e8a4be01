r"""Feature-analysis speed at the target shape.

  python benchmarks/bench_analysis.py [--n=500,2000] [--members=16]
      [--features=6144] [--permutations=1000] [--labels=9]

For each N: a random 768 -> 6,144 topk SAE per member (k=32) on N random
labelled embeddings (9 emotions, 20 template groups), analysed with the
full permutation test (statistics, p-values, BH, null counts), top prompts
and causal checks. Prints the compile time, the run time (probe, permutations and
the device work, after compiling) and the time per member, plus the stability matching (16 members, 200 significant features
each, one-to-one against 6,144) that runs on the host afterwards.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from emosae_jax import analysis, saes  # noqa: E402


def make_members(n_members, d, m, k, seed=0):
  spec = saes.SAESpec(arch="topk", d_in=d, d_sae=m, k=k)
  init = jax.vmap(lambda key: saes.init_params(spec, key))
  params = init(jax.random.split(jax.random.PRNGKey(seed), n_members))
  return spec, {name: np.asarray(v) for name, v in params.items()}


def bench(n, args):
  spec, params = make_members(args.members, args.d, args.features, args.k)
  rng = np.random.default_rng(0)
  labels = np.arange(n) % args.labels
  x = (rng.normal(size=(n, args.d))
       + rng.normal(size=(args.labels, args.d))[labels]).astype(np.float32)
  groups = rng.integers(0, 20, n)
  settings = analysis.Settings(permutations=args.permutations)
  member_batch = analysis.default_member_batch(
      args.members, n, args.features, args.permutations,
      settings.memory_budget_gb)
  # Compile time alone (ahead of time, same shapes as the real call).
  batch = {k: jnp.asarray(v[:member_batch]) for k, v in params.items()}
  most = max(int(jnp.max(analysis._nonzero_counts(
      spec, {k: jnp.asarray(v[i:i + member_batch]) for k, v in params.items()},
      jnp.asarray(x)))) for i in range(0, args.members, member_batch))
  dspec = analysis.device_spec(spec, args.labels, settings,
                               analysis.entry_capacity(most))
  perms = np.zeros((args.permutations, n), np.int32)
  start = time.perf_counter()
  analysis.analyze_members.lower(
      dspec, batch, jnp.asarray(x), jnp.asarray(labels, jnp.int32),
      jnp.asarray(perms), jnp.zeros((args.d, args.labels)),
      jnp.zeros(args.labels), jnp.zeros((settings.n_random, args.d)),
      jnp.asarray(analysis.steering_rows(0, n, settings.steer_rows)),
      {"significant": jnp.zeros((member_batch, args.features), bool),
       "emotion": jnp.full((member_batch, args.features), -1, jnp.int32)}
  ).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  arrays, _ = analysis.compute(spec, params, x, labels, args.labels, groups,
                               settings)
  total_s = time.perf_counter() - start
  assert arrays["p_value"].shape == (args.members, args.features)
  # Host stability matching at a realistic significant-set size.
  significant = np.zeros((args.members, args.features), bool)
  for i in range(args.members):
    significant[i, rng.choice(args.features, args.n_significant, False)] = True
  start = time.perf_counter()
  analysis.stability(params["W_dec"], significant,
                     rng.integers(0, args.labels, significant.shape), 0.7)
  stability_s = time.perf_counter() - start
  run_s = total_s  # the AOT compile above fills the cache this call uses
  return {"n": n, "members": args.members, "features": args.features,
          "permutations": args.permutations, "labels": args.labels,
          "member_batch": member_batch, "compile_s": round(compile_s, 1),
          "run_s": round(run_s, 1),
          "run_s_per_member": round(run_s / args.members, 2),
          "stability_s": round(stability_s, 1),
          "device": str(jax.devices()[0])}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", default="500,2000")
  parser.add_argument("--members", type=int, default=16)
  parser.add_argument("--features", type=int, default=6144)
  parser.add_argument("--permutations", type=int, default=1000)
  parser.add_argument("--labels", type=int, default=9)
  parser.add_argument("--d", type=int, default=768)
  parser.add_argument("--k", type=int, default=32)
  parser.add_argument("--n_significant", type=int, default=200)
  args = parser.parse_args()
  for n in [int(v) for v in args.n.split(",")]:
    r = bench(n, args)
    print(f"N={n}: {r['features']} features x {r['members']} members x "
          f"{r['permutations']} permutations ({r['labels']} emotions): "
          f"compile {r['compile_s']} s, run {r['run_s']} s "
          f"({r['run_s_per_member']} s/member, batches of "
          f"{r['member_batch']}); "
          f"stability matching {r['stability_s']} s", flush=True)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
