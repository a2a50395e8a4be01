r"""A sweep: the SAE config plus a grid over per-member fields.

  python scripts/sweep.py --config=configs/sweep.py:arch=topk,runlocal \
      --workdir=runs/sweep --data=PATH
`get_config(arg)` is the base (same arguments as configs/sae.py);
`get_sweep(arg)` returns one override dict per member. Members that differ
only in per-member fields (learning rate, sparsity coefficient, warm-ups,
seed) train as one compiled program; others form separate groups.
"""

from configs import sae
from emosae_jax.config_utils import parse_arg
from emosae_jax.sweep import axis, product


def get_config(arg=None):
  return sae.get_config(_sae_arg(arg))


def get_sweep(arg=None):
  arg = parse_arg(arg, arch="relu_l1", reference=False, runlocal=False,
                  seeds=4)
  seeds = axis("seed", range(arg.seeds))
  if arg.arch in ("topk", "batchtopk"):
    return product(axis("train.lr", [1e-3, 3e-3]), seeds)
  return product(axis("train.sparsity_coeff", [1e-3, 3e-3, 1e-2, 3e-2]),
                 seeds)


def _sae_arg(arg):
  # `seeds=N` belongs to the sweep, not to the SAE config.
  return ",".join(t for t in (arg or "").split(",")
                  if not t.startswith("seeds="))
