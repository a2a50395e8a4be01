r"""By-hand check (not CI): SAELens's own loader reads our export and gives
emosae's activations. Two steps, two environments:

  # 1. project venv: train tiny runs (every architecture), export them, and
  #    write random raw inputs with emosae's activations and reconstructions
  PYTHONPATH=$PWD .venv/bin/python benchmarks/check_saelens_load.py \
      --step=prepare --dir=/tmp/saelens_check --d_in=768 --d_sae=3072
  # 2. a venv with sae-lens (not a project dependency):
  #    pip install torch==2.13.0 sae-lens==6.54.12
  /work/venvs/saelens/bin/python benchmarks/check_saelens_load.py \
      --step=check --dir=/tmp/saelens_check

Step 2 imports only numpy, torch and sae_lens; it prints the versions and,
per architecture, the largest absolute activation and reconstruction
differences between SAE.load_from_disk(...).encode/decode and emosae.

The other way (SAELens's own writer -> scripts/import_sae.py's import):
  /work/venvs/saelens/bin/python benchmarks/check_saelens_load.py \
      --step=native --dir=/tmp/saelens_native
  PYTHONPATH=$PWD .venv/bin/python benchmarks/check_saelens_load.py \
      --step=import --dir=/tmp/saelens_native
`native` saves random SAELens SAEs with the options emosae folds away
(apply_b_dec_to_input false, topk rescale_acts_by_decoder_norm, thresholds
<= 0, bfloat16 weights) and their activations; `import` imports each folder
and prints the largest differences.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ARCHS = ("relu_l1", "topk", "batchtopk", "jumprelu")


def prepare(root: Path, d_in: int, d_sae: int, k: int) -> None:
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
  import jax.numpy as jnp
  from conftest import tiny_config
  from emosae_jax import analysis, runs, saes, train_run
  from emosae_jax import saelens_format
  for arch in ARCHS:
    config = tiny_config(arch, model__d_in=d_in, model__d_sae=d_sae,
                         model__k=k, model__k_aux=min(256, d_sae),
                         data__n_examples=2048, train__epochs=2,
                         train__epochs_per_call=2)
    if arch == "jumprelu":
      config.model.threshold_init = 0.2
    run = root / arch / "run"
    if not (run / "params.safetensors").exists():
      train_run.train_and_evaluate(config, run, progress=False)
    folder = saelens_format.export_run(run, root / arch / "saelens")
    members = analysis.load_members(run)
    params = {name: jnp.asarray(v[0]) for name, v in members.params.items()}
    norm = runs.normalizer_of(members.info)
    rng = np.random.default_rng(0)
    x = norm.invert(rng.normal(size=(256, d_in))).astype(np.float32)
    acts = saes.encode(members.sae, params, jnp.asarray(norm.apply(x)))
    x_hat = norm.invert(np.asarray(saes.decode(params, acts)))
    np.save(root / arch / "x.npy", x)
    np.save(root / arch / "acts.npy", np.asarray(acts, np.float32))
    np.save(root / arch / "x_hat.npy", np.asarray(x_hat, np.float32))
    print(f"{arch}: exported {folder}")


def check(root: Path) -> None:
  import sae_lens
  import torch
  from sae_lens import SAE
  print(f"sae-lens {sae_lens.__version__}, torch {torch.__version__}, "
        f"numpy {np.__version__}, python {sys.version.split()[0]}")
  for arch in ARCHS:
    folder = root / arch / "saelens"
    sae = SAE.load_from_disk(str(folder), device="cpu")
    x = torch.from_numpy(np.load(root / arch / "x.npy"))
    want = np.load(root / arch / "acts.npy")
    want_hat = np.load(root / arch / "x_hat.npy")
    with torch.no_grad():
      acts = sae.encode(x)
      x_hat = sae.decode(acts).numpy()
    acts = acts.numpy()
    cfg = json.loads((folder / "cfg.json").read_text())
    print(f"{arch:9s} -> {type(sae).__name__:12s} ({cfg['architecture']}) "
          f"d {cfg['d_in']}x{cfg['d_sae']}: max |acts diff| "
          f"{np.abs(acts - want).max():.3g} (max |acts| "
          f"{np.abs(want).max():.3g}), same active set "
          f"{bool(np.array_equal(acts != 0, want != 0))}, L0 "
          f"{(want != 0).sum(1).mean():.1f}; max |x_hat diff| "
          f"{np.abs(x_hat - want_hat).max():.3g} (max |x_hat| "
          f"{np.abs(want_hat).max():.3g})")


NATIVE = {  # name: (architecture, config options, dtype)
    "standard_no_b_dec_in": ("standard", {"apply_b_dec_to_input": False},
                             "float32"),
    "topk_rescaled": ("topk", {"k": 16, "rescale_acts_by_decoder_norm": True},
                      "float32"),
    "jumprelu_bf16": ("jumprelu", {}, "bfloat16"),
}


def native(root: Path, d_in: int, d_sae: int) -> None:
  import torch
  from sae_lens import SAE
  from sae_lens.registry import get_sae_class
  torch.manual_seed(0)
  for name, (arch, options, dtype) in NATIVE.items():
    sae_cls, config_cls = get_sae_class(arch)
    sae = sae_cls(config_cls(d_in=d_in, d_sae=d_sae, dtype=dtype, **options))
    with torch.no_grad():
      for p in sae.parameters():  # random, unit-free weights
        p.copy_(torch.randn_like(p) * 0.3)
      sae.W_dec.mul_(torch.rand(d_sae, 1, dtype=sae.W_dec.dtype) + 0.5)
      if arch == "jumprelu":
        sae.threshold.copy_(torch.linspace(-0.3, 1.0, d_sae))
    sae.save_model(root / name)
    x = torch.randn(256, d_in)
    loaded = SAE.load_from_disk(str(root / name), dtype="float32")
    with torch.no_grad():
      acts = loaded.encode(x)
      x_hat = loaded.decode(acts)
    np.save(root / name / "x.npy", x.numpy())
    np.save(root / name / "acts.npy", acts.numpy())
    np.save(root / name / "x_hat.npy", x_hat.numpy())
    print(f"{name}: saved by sae-lens {type(sae).__name__}, dtype {dtype}")


def import_native(root: Path) -> None:
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  import jax.numpy as jnp
  from configs.sae import get_config
  from emosae_jax import analysis, runs, saes, saelens_format
  for name in NATIVE:
    run = root / name / "emosae_run"
    if not (run / "params.safetensors").exists():
      saelens_format.import_sae(root / name, run,
                                lambda a: get_config(f"arch={a}").to_dict())
    members = analysis.load_members(run)
    params = {k: jnp.asarray(v[0]) for k, v in members.params.items()}
    norm = runs.normalizer_of(members.info)
    x = np.load(root / name / "x.npy")
    acts = np.asarray(saes.encode(members.sae, params,
                                  jnp.asarray(norm.apply(x))))
    x_hat = norm.invert(np.asarray(saes.decode(params, jnp.asarray(acts))))
    want, want_hat = (np.load(root / name / f) for f in ("acts.npy",
                                                          "x_hat.npy"))
    print(f"{name:21s} -> emosae {members.sae.arch:8s}: max |acts diff| "
          f"{np.abs(acts - want).max():.3g} (max |acts| "
          f"{np.abs(want).max():.3g}), same active set "
          f"{bool(np.array_equal(acts != 0, want != 0))}; max |x_hat diff| "
          f"{np.abs(x_hat - want_hat).max():.3g} (max |x_hat| "
          f"{np.abs(want_hat).max():.3g})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--step", choices=["prepare", "check", "native", "import"], required=True)
  parser.add_argument("--dir", type=Path, required=True)
  parser.add_argument("--d_in", type=int, default=32)
  parser.add_argument("--d_sae", type=int, default=256)
  parser.add_argument("--k", type=int, default=8)
  args = parser.parse_args()
  step = {"prepare": lambda: prepare(args.dir, args.d_in, args.d_sae, args.k),
          "check": lambda: check(args.dir),
          "native": lambda: native(args.dir, args.d_in, args.d_sae),
          "import": lambda: import_native(args.dir)}
  step[args.step]()


if __name__ == "__main__":
  main()
