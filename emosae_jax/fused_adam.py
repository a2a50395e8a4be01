"""Adam in one pass over memory on CPU: an XLA FFI kernel (csrc/fused_adam.cc).

Why: XLA:CPU has no multi-output fusion, so optax's Adam runs as three loops
per weight (first moment, second moment, weight): 10 passes over memory
where one loop needs 7. At batch 16 (the `reference` preset, 768 -> 6144)
Adam was about half of the step (benchmarks/README.md).

`update` is `optax.chain(clip_by_global_norm, scale_by_adam)` followed by
`p - lr * u`, with the same state (checkpoints do not change), computed by the
kernel: optax's formula in its order, in IEEE float32 without fused
multiply-adds, so it equals a numpy float32 evaluation of the formula bit for
bit (XLA's own loops differ from that in the last bit).

The kernel is compiled on first use by the system's C++ compiler ($CXX, else
c++ or g++) into a cache ($EMOSAE_KERNEL_CACHE, else ~/.cache/emosae), keyed
by its source, jaxlib's version and the CPU, as torch's cpp_extension does.
Without a compiler, or if the build fails, `available()` is False with one
warning saying why, and training uses optax (train.adam_kernel="auto").
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

SOURCE = Path(__file__).parent / "csrc" / "fused_adam.cc"
TARGET = "emosae_fused_adam"
OUTER_TARGET = "emosae_fused_adam_outer"  # the gradient as factors, a^T b
B1, B2 = 0.9, 0.999  # Adam's betas, for both paths (train_core._optimizer)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno",
         "-fPIC", "-shared", "-std=c++17")


def _cpu_identity() -> str:
  """What -march=native compiles for: the CPU's feature flags."""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _compiler() -> str | None:
  names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++"]
  return next((shutil.which(n) for n in names if shutil.which(n)), None)


def _cache_dir() -> Path:
  root = os.environ.get("EMOSAE_KERNEL_CACHE")
  return Path(root) if root else Path.home() / ".cache" / "emosae"


def build(cache_dir: Path | None = None) -> Path:
  """The compiled kernel's path, building it if the cache lacks it.

  Raises RuntimeError saying why when it cannot be built. The library is
  written under a temporary name and renamed, so concurrent builds (two
  test processes) never load a half-written file.
  """
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler (set $CXX, or install g++)")
  key = hashlib.sha256("\n".join(
      [SOURCE.read_text(), jax.ffi.include_dir(), jax.__version__, cxx,
       " ".join(FLAGS), _cpu_identity()]).encode()).hexdigest()[:16]
  cache_dir = cache_dir or _cache_dir()
  path = cache_dir / f"fused_adam-{key}.so"
  if path.exists():
    return path
  cache_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
  os.close(fd)
  cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the kernel is built and registered with XLA:CPU (once)."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(
        library.EmosaeFusedAdam), platform="cpu")
    jax.ffi.register_ffi_target(OUTER_TARGET, jax.ffi.pycapsule(
        library.EmosaeFusedAdamOuter), platform="cpu")
    return True
  except (RuntimeError, OSError, subprocess.SubprocessError) as e:
    warnings.warn(f"fused Adam kernel unavailable, training uses optax's "
                  f"Adam: {e}", RuntimeWarning, stacklevel=2)
    return False


def update(grads, opt_state, params, lr, frozen, max_grad_norm: float,
           eps: float, unit_axes: dict[str, int] | None = None,
           factors: dict | None = None):
  """(params, opt_state) after one step, as train_core's optax path.

  `opt_state` is optax.chain([clip_by_global_norm(max_grad_norm),]
  scale_by_adam(eps=eps))'s state; `frozen` (bool []) zeroes the gradient,
  as the optax path does before its update; `lr` is a float32 scalar.
  `unit_axes` {name: axis}: weights then rescaled to unit norm along rows
  (1) or columns (0) in the same call, as base.unit_decoder does after the
  optax path (the norms summed in float64, so the last bit may differ).
  `factors` {name: (a [batch, rows], b [batch, cols])}: those weights'
  gradients as a^T b, which the kernel computes block by block (fused
  multiply-adds in batch order: on the machines here the same bits as
  XLA's batch-16 matmul, which nothing promises elsewhere); `grads` need
  not hold them.
  """
  if not available():  # also registers the kernel with XLA
    raise RuntimeError("the fused Adam kernel could not be built; use "
                       "train.adam_kernel='optax'")
  adam = opt_state[-1]  # ScaleByAdamState, after the clip's empty state
  count = optax.safe_int32_increment(adam.count)
  factors = factors or {}
  g_norm = (global_norm(grads, factors, params) if max_grad_norm > 0
            else jnp.float32(1))
  clip = (max_grad_norm > 0) & ~(g_norm < max_grad_norm)
  coef = jnp.stack([(~frozen).astype(jnp.float32), clip.astype(jnp.float32),
                    g_norm.astype(jnp.float32), 1 - B1 ** count,
                    1 - B2 ** count, jnp.asarray(lr, jnp.float32)])
  consts = {name: np.float32(value) for name, value in [
      ("b1", B1), ("c1", 1 - B1), ("b2", B2), ("c2", 1 - B2), ("eps", eps),
      ("max_norm", max_grad_norm)]}
  unit_axes = unit_axes or {}

  def leaf(name):
    p = params[name]
    shape = jax.ShapeDtypeStruct(p.shape, jnp.float32)
    # the gradient's inputs, then m, v, p (updated in place) and coef
    grad_in = factors[name] if name in factors else (grads[name],)
    n = len(grad_in)
    call = jax.ffi.ffi_call(OUTER_TARGET if name in factors else TARGET,
                            (shape, shape, shape),
                            vmap_method="broadcast_all",
                            input_output_aliases={n + 2: 0, n: 1, n + 1: 2})
    axis = unit_axes.get(name)
    return call(*grad_in, adam.mu[name], adam.nu[name], p, coef,
                unit_axis=np.int32(-1 if axis is None else axis), **consts)

  out = {name: leaf(name) for name in params}
  pick = lambda i: {name: o[i] for name, o in out.items()}  # noqa: E731
  adam = adam._replace(count=count, mu=pick(1), nu=pick(2))
  return pick(0), (*opt_state[:-1], adam)


def global_norm(grads, factors, params):
  """The gradient's global norm, optax.tree.norm's, with the leaves in
  `factors` given as (a, b), g = a^T b: ||a^T b||^2 = sum((a a^T) * (b b^T)),
  from two [batch, batch] Gram matrices instead of the full gradient."""
  if not factors:
    return optax.tree.norm(grads)
  squares = [jnp.sum(jnp.square(grads[name])) for name in params
             if name not in factors]
  squares += [jnp.sum((a @ a.T) * (b @ b.T)) for a, b in factors.values()]
  return jnp.sqrt(sum(squares))
