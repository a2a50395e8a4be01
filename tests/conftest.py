"""Shared test helpers: tiny configs and the repository root."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Scripts run in subprocesses, some at once: no shared persistent compilation
# cache (test_train_script checks the cache on a folder of its own).
os.environ.setdefault("EMOSAE_JAX_CACHE", "0")


def tiny_config(arch="topk", **overrides):
  """A small synthetic-data config that trains in a few seconds.

  overrides use "section__field" keys, e.g. train__epochs=5.
  """
  from configs.sae import get_config
  config = get_config(f"arch={arch}")
  config.data.synthetic = True
  config.data.n_examples = 4096
  config.data.n_features = 128
  config.data.avg_active = 4.0
  config.model.d_in = 32
  config.model.d_sae = 256
  config.model.k = 4
  config.model.k_aux = 32
  config.train.batch_size = 256
  config.train.epochs = 10
  config.train.lr = 3e-3
  config.train.warmup_steps = 10
  config.train.epochs_per_call = 5
  config.train.checkpoint_every_epochs = 5
  for key, value in overrides.items():
    section, field = key.split("__")
    config[section][field] = value
  return config


def run_script(name, *args, timeout=300):
  """Runs scripts/<name> in a subprocess; returns CompletedProcess."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, str(ROOT / "scripts" / name),
                         *args], capture_output=True, text=True, env=env,
                        timeout=timeout, cwd=ROOT)


def last_line(text):
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ""


@pytest.fixture
def root():
  return ROOT


@pytest.fixture(scope="module")
def torch_one_thread():
  """Tiny torch models run far faster on one thread: on 2 shared cores the
  thread hand-off made single-prompt passes 20x slower. Use with
  `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
  import torch
  old = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(old)
