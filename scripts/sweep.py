r"""Trains a whole sweep of SAEs, one compiled program per shape group.

  python scripts/sweep.py --config=configs/sweep.py --workdir=DIR --data=PATH
On several hosts, start the same command on each with --distributed.
"""

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from emosae_jax import cli  # noqa: E402
from emosae_jax.runs import summary_metric  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/sweep.py", "Sweep config file (get_config + "
    "get_sweep).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.",
                               required=True)
_DATA = flags.DEFINE_string("data", None, "Embedding-set folder.")
_EXECUTION = flags.DEFINE_enum(
    "execution", "auto", ["auto", "vmap", "serial"],
    "How a group's members run: vmap (one batched program, sharded over the "
    "local devices), serial (one after another, compiled once), or auto: "
    "serial on a single CPU device, where batching only costs, else vmap.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first "
    "(multi-host; coordinator from the environment).")


def load_sweep(config_arg: str):
  """Calls get_sweep(arg) of the config file named by --config."""
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} has no get_sweep(arg); use a sweep config "
                     "such as configs/sweep.py")
  return module.get_sweep(arg or None)


def main(argv):
  del argv
  import jax
  if _DISTRIBUTED.value:
    # CPU processes need gloo for their barrier; accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
  from emosae_jax import sweep
  config = _CONFIG.value
  if _DATA.value:
    with config.unlocked():
      config.data.path = _DATA.value
  overrides = load_sweep(config_flags.get_config_filename(flags.FLAGS["config"]))
  result = sweep.run_sweep(config, overrides, _WORKDIR.value,
                           execution=_EXECUTION.value)
  for m in result.get("members", []):
    status = m["status"] if m["status"] != "ok" else (
        f"{m['eval_set']} fvu={summary_metric(m, 'fvu'):.3f} "
        f"l0={summary_metric(m, 'l0'):.1f} "
        f"never fires={m['never_fires_fraction']:.2f}")
    print(f"member {m['index']:3d} {m['overrides']}: {status}")


if __name__ == "__main__":
  cli.run(main)
