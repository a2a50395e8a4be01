"""SAELens's on-disk SAE format, both ways (numpy, safetensors, stdlib only).

A SAELens folder is what `sae_lens.SAE.load_from_disk(path)` reads (the
format of sae-lens 6.54.12, checked against its source and, by hand, with
benchmarks/check_saelens_load.py):
  sae_weights.safetensors  W_enc [d_in, d_sae], b_enc [d_sae],
                           W_dec [d_sae, d_in], b_dec [d_in], float32, and
                           for jumprelu threshold [d_sae]; no other tensor
                           (SAELens loads the state dict strictly)
  cfg.json                 architecture, d_in, d_sae, dtype, device,
                           apply_b_dec_to_input, normalize_activations,
                           reshape_activations, metadata {sae_lens_version,
                           model_name, hook_name, hf_hook_name, ..., emosae},
                           and for topk: k, rescale_acts_by_decoder_norm

Units. emosae trains on x_norm = (x - mean) * scale (data.Normalizer). An
export FOLDS that normalisation into the weights, so the SAELens SAE reads
raw T5 units and gives the same activations (normalize_activations "none"):
  W_enc' = scale * W_enc        b_enc' = b_enc
  W_dec' = W_dec / scale        b_dec' = mean + b_dec / scale
because (x_norm - b_dec) @ W_enc = (x - b_dec') @ W_enc' and
(acts @ W_dec + b_dec) / scale + mean = acts @ W_dec' + b_dec'. The
normaliser is also kept in metadata["emosae"], with the run's config and
data provenance, so importing an export gives back the run's own weights.

Architectures (both sides pre-subtract b_dec and decode with
acts @ W_dec + b_dec; decoder rows are used as they are, so relu_l1's
"weighted" decoder_norm exports like "unit"):
  relu_l1   -> standard  relu(pre)
  topk      -> topk      relu of the k largest pre-activations, with
                         rescale_acts_by_decoder_norm false
  batchtopk -> jumprelu  its inference rule relu(pre) > threshold, with the
                         scalar threshold on every latent (what SAELens
                         itself saves for BatchTopK)
  jumprelu  -> jumprelu  threshold = exp(log_threshold)
Importing maps standard, topk and jumprelu back (apply_b_dec_to_input false
and topk's rescale_acts_by_decoder_norm are folded into the weights; a
threshold <= 0 becomes log_threshold -inf, the same ReLU) and refuses the
rest: gated, abstopk, transcoders, temporal, matching pursuit, input-
dependent normalisations, hook_z reshaping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import save_file

from emosae_jax import data, runs

SAELENS_VERSION = "6.54.12"  # the version whose format this writes
WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
TO_SAELENS = {"relu_l1": "standard", "topk": "topk", "batchtopk": "jumprelu",
              "jumprelu": "jumprelu"}
FROM_SAELENS = {"standard": "relu_l1", "topk": "topk", "jumprelu": "jumprelu"}
_SHAPES = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",),
           "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}


# --------------------------------------------------------------------------
# Units


def fold_normalizer(params: dict, normalizer: data.Normalizer) -> dict:
  """The four affine tensors of an SAE on x_norm, as one on raw x (an
  output bias, the reference preset's b_out, folded into b_dec and b_enc)."""
  s, mean = float(normalizer.scale), np.asarray(normalizer.mean, np.float64)
  p = fold_output_bias({k: np.asarray(v, np.float64)
                        for k, v in params.items()
                        if k in _SHAPES or k == "b_out"})
  return _f32({"W_enc": p["W_enc"] * s, "b_enc": p["b_enc"],
               "W_dec": p["W_dec"] / s, "b_dec": mean + p["b_dec"] / s})


def fold_output_bias(params: dict) -> dict:
  """The same SAE without b_out (the reference preset's decoder bias beside
  its pre-bias, saes.base.decoder_bias): b_dec + b_out as b_dec, and
  b_enc + b_out @ W_enc so that (x - b_dec) @ W_enc + b_enc is unchanged."""
  if "b_out" not in params:
    return params
  out = {k: v for k, v in params.items() if k != "b_out"}
  out["b_dec"] = params["b_dec"] + params["b_out"]
  out["b_enc"] = params["b_enc"] + params["b_out"] @ params["W_enc"]
  return out


def unfold_normalizer(raw: dict, normalizer: data.Normalizer) -> dict:
  """fold_normalizer's inverse."""
  s, mean = float(normalizer.scale), np.asarray(normalizer.mean, np.float64)
  p = {k: np.asarray(raw[k], np.float64) for k in _SHAPES}
  return _f32({"W_enc": p["W_enc"] / s, "b_enc": p["b_enc"],
               "W_dec": p["W_dec"] * s, "b_dec": (p["b_dec"] - mean) * s})


def _f32(tensors: dict) -> dict:
  return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}


# --------------------------------------------------------------------------
# emosae -> SAELens


def to_saelens(arch: str, k: int, params: dict, normalizer: data.Normalizer,
               metadata: dict) -> tuple[dict, dict]:
  """(tensors, cfg) of the SAELens SAE equal to emosae's on raw inputs."""
  if arch not in TO_SAELENS:
    raise data.DataError(f"architecture {arch!r} has no SAELens counterpart "
                         f"(exportable: {sorted(TO_SAELENS)})")
  tensors = fold_normalizer(params, normalizer)
  d_sae, d_in = tensors["W_dec"].shape
  if arch == "jumprelu":
    tensors["threshold"] = np.exp(np.asarray(params["log_threshold"],
                                             np.float64))
  elif arch == "batchtopk":
    # One inference threshold; trained runs store it with shape [1].
    tensors["threshold"] = np.full(d_sae, np.asarray(
        params["threshold"]).reshape(-1)[0], np.float64)
  cfg = {"d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
         "device": "cpu", "apply_b_dec_to_input": True,
         "normalize_activations": "none", "reshape_activations": "none",
         "metadata": dict(metadata, sae_lens_version=SAELENS_VERSION,
                          sae_lens_training_version=None),
         "architecture": TO_SAELENS[arch]}
  if arch == "topk":
    cfg.update(k=int(k), rescale_acts_by_decoder_norm=False)
  return _f32(tensors), cfg


def hook_metadata(info: dict, sidecar: dict | None) -> dict:
  """SAELens's metadata naming the activations the SAE reads.

  T5 encoder output, pooled over tokens (the default), or a MusicGen decoder
  layer when the embedding set's provenance names one (`layer`); planted-
  dictionary runs say "synthetic".
  """
  if info.get("synthetic"):
    return {"model_name": "synthetic", "hook_name": "synthetic",
            "hf_hook_name": None}
  sidecar = sidecar or {}
  encoder = info.get("encoder") or sidecar.get("encoder") or ""
  if isinstance(encoder, dict):
    encoder = encoder.get("name", "")
  pooling = sidecar.get("pooling", "mean")
  layer = sidecar.get("layer")
  if layer is None:
    return {"model_name": encoder or "t5-base",
            "hook_name": f"encoder.last_hidden_state.{pooling}_pooled",
            "hf_hook_name": "encoder", "pooling": pooling}
  model = sidecar.get("model") or encoder
  return {"model_name": model,
          "hook_name": f"decoder.layers.{int(layer)}.{pooling}_pooled",
          "hf_hook_name": f"decoder.model.decoder.layers.{int(layer)}",
          "pooling": pooling}


def write_saelens(out: str | Path, tensors: dict, cfg: dict) -> Path:
  """Weights first, cfg.json last, each atomically."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  data.atomic_write(out / WEIGHTS_FILE,
                    lambda tmp: save_file(_f32(tensors), tmp))
  data.atomic_write_json(out / CONFIG_FILE, cfg)
  return out


def export_run(workdir: str | Path, out: str | Path,
               member: int | None = None) -> Path:
  """Writes member `member` (default: the first) of a run, sweep group or
  (with `member`) sweep top folder as a SAELens folder in `out`. The run is
  read through emosae_jax.runs (numpy only), which pairs a sweep's global
  member indices with their parameter rows."""
  members = runs.load_members(workdir, member)
  index, row = members.indices[0], 0
  params = {k: v[row] for k, v in members.params.items()}
  model = members.configs[row]["model"]
  sidecar_path = Path(members.info.get("path") or "") / data.SIDECAR_FILE
  sidecar = (json.loads(sidecar_path.read_text())
             if members.info.get("path") and sidecar_path.exists() else None)
  normalizer = runs.normalizer_of(members.info)
  info = {k: v for k, v in members.info.items()
          if k not in ("train_index", "val_index", "normalizer")}
  metadata = dict(hook_metadata(members.info, sidecar), emosae={
      "arch": model["arch"], "decoder_norm": model.get("decoder_norm"),
      "workdir": str(Path(members.workdir).resolve()), "member": index,
      "normalizer_folded": True, "normalizer": normalizer.to_dict(),
      "config": members.configs[row], "data_info": info})
  tensors, cfg = to_saelens(model["arch"], model.get("k", 0), params,
                            normalizer, metadata)
  return write_saelens(out, tensors, cfg)


# --------------------------------------------------------------------------
# SAELens -> emosae


def read_saelens(src: str | Path) -> tuple[dict, dict]:
  """(float32 tensors, cfg) of a SAELens folder, checked for what emosae
  can represent; DataError naming the problem otherwise."""
  src = Path(src)
  for name in (CONFIG_FILE, WEIGHTS_FILE):
    if not (src / name).is_file():
      raise data.DataError(f"{src}: no {name}; not a SAELens SAE folder "
                           f"(expected {CONFIG_FILE} and {WEIGHTS_FILE})")
  try:
    cfg = json.loads((src / CONFIG_FILE).read_text())
    dims = {"d_in": int(cfg["d_in"]), "d_sae": int(cfg["d_sae"])}
    arch = cfg.get("architecture", "standard")
  except (ValueError, KeyError, TypeError) as e:
    raise data.DataError(f"{src / CONFIG_FILE}: not a SAELens config "
                         f"({type(e).__name__}: {e})") from None
  if arch not in FROM_SAELENS:
    raise data.DataError(
        f"{src}: SAELens architecture {arch!r} has no emosae counterpart "
        f"(importable: {', '.join(sorted(FROM_SAELENS))})")
  norm = cfg.get("normalize_activations") or "none"
  if norm != "none":
    raise data.DataError(
        f"{src}: normalize_activations={norm!r} is not supported (only "
        "'none'); for 'expected_average_only_in' fold the scaling factor "
        "into the weights with SAELens first")
  if (cfg.get("reshape_activations") or "none") != "none":
    raise data.DataError(f"{src}: reshape_activations="
                         f"{cfg['reshape_activations']!r} is not supported")
  tensors = _load_float32(src / WEIGHTS_FILE)
  wanted = dict(_SHAPES, **({"threshold": ("d_sae",)}
                            if arch == "jumprelu" else {}))
  missing, extra = sorted(set(wanted) - set(tensors)), sorted(
      set(tensors) - set(wanted))
  if missing or extra:
    raise data.DataError(f"{src / WEIGHTS_FILE}: a {arch} SAE needs tensors "
                         f"{sorted(wanted)}; missing {missing}, unexpected "
                         f"{extra}")
  for name, axes in wanted.items():
    shape = tuple(dims[a] for a in axes)
    if tensors[name].shape != shape:
      raise data.DataError(f"{src / WEIGHTS_FILE}: {name} has shape "
                           f"{tensors[name].shape}, cfg.json implies {shape}")
  if arch == "topk" and not 0 < int(cfg.get("k", 0)) <= dims["d_sae"]:
    raise data.DataError(f"{src}: topk needs 0 < k <= d_sae, got "
                         f"k={cfg.get('k')}")
  return tensors, cfg


def _load_float32(path: Path) -> dict:
  """All tensors of a safetensors file as float32 numpy (bfloat16 too,
  which numpy cannot hold: its 16 bits are the top half of a float32)."""
  raw = path.read_bytes()
  try:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, entry in header.items():
      begin, end = entry["data_offsets"]
      chunk = body[begin:end]
      dtype = entry["dtype"]
      if dtype == "BF16":
        bits = np.frombuffer(chunk, "<u2").astype(np.uint32) << 16
        values = bits.view(np.float32)
      elif dtype in ("F16", "F32", "F64"):
        values = np.frombuffer(chunk, {"F16": "<f2", "F32": "<f4",
                                       "F64": "<f8"}[dtype])
      else:
        raise data.DataError(f"{path}: tensor {name} has dtype {dtype}")
      out[name] = values.astype(np.float32).reshape(entry["shape"])
    return out
  except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
    if isinstance(e, data.DataError):
      raise
    raise data.DataError(f"{path}: not a readable safetensors file "
                         f"({type(e).__name__}: {e})") from None


def from_saelens(tensors: dict, cfg: dict
                 ) -> tuple[str, dict, dict, data.Normalizer]:
  """(emosae arch, model config fields, params, normaliser) equal on raw
  inputs to the SAELens SAE (tensors, cfg) as read by read_saelens."""
  arch = cfg.get("architecture", "standard")
  p = {k: np.asarray(tensors[k], np.float64) for k in _SHAPES}
  if not cfg.get("apply_b_dec_to_input", True):
    # SAELens: pre = x @ W_enc + b_enc; emosae always subtracts b_dec first.
    p["b_enc"] = p["b_enc"] + p["b_dec"] @ p["W_enc"]
  if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
    # pre * |W_dec_i| picks the top k, and decoding divides it out again.
    norms = np.linalg.norm(p["W_dec"], axis=1)
    p.update(W_enc=p["W_enc"] * norms, b_enc=p["b_enc"] * norms,
             W_dec=p["W_dec"] / norms[:, None])
  d_sae, d_in = p["W_dec"].shape
  meta = (cfg.get("metadata") or {}).get("emosae") or {}
  normalizer = data.Normalizer.identity(d_in)
  if meta.get("normalizer_folded") and len(
      (meta.get("normalizer") or {}).get("mean", ())) == d_in:
    normalizer = data.Normalizer.from_dict(meta["normalizer"])
  params = unfold_normalizer(p, normalizer)
  if arch == "jumprelu":
    threshold = np.asarray(tensors["threshold"], np.float64)
    with np.errstate(divide="ignore"):  # relu(pre) * (pre > t<=0) is relu
      params["log_threshold"] = np.where(
          threshold > 0, np.log(np.maximum(threshold, 1e-300)), -np.inf
      ).astype(np.float32)
  unit_rows = np.allclose(np.linalg.norm(params["W_dec"], axis=1), 1.0,
                          atol=1e-4)
  model = {"arch": FROM_SAELENS[arch], "d_in": int(d_in),
           "d_sae": int(d_sae), "decoder_norm": meta.get("decoder_norm")
           or ("unit" if unit_rows else "weighted")}
  if arch == "topk":
    model["k"] = int(cfg["k"])
  return FROM_SAELENS[arch], model, params, normalizer


def write_run(workdir: str | Path, params: dict, config: dict, info: dict,
              summary: dict) -> Path:
  """The files of a finished emosae run that analysis and export read,
  through the run layout's writers (summary.json last)."""
  workdir = runs.prepare_workdir(workdir)
  runs.write_config(workdir, config)
  runs.write_data_info(workdir, info)
  runs.write_params(workdir, params)
  runs.write_summary(workdir, summary)
  return workdir


def import_sae(src: str | Path, workdir: str | Path,
               make_config: Callable[[str], dict]) -> Path:
  """Turns the SAELens folder `src` into an emosae run in `workdir`.

  make_config(arch) gives the default resolved config (configs/sae.py) that
  the SAE's own fields override. A folder exported by emosae brings back its
  run's config, normaliser and data provenance; any other gets an identity
  normaliser (it reads raw units) and no data path (pass --data to
  analyze.py).
  """
  src, workdir = Path(src), Path(workdir)
  tensors, cfg = read_saelens(src)
  if any((workdir / name).exists()
         for name in (runs.CONFIG_FILE, runs.SWEEP_FILE, runs.PARAMS_FILE)):
    raise data.DataError(f"{workdir} already holds a run; use a new "
                         "--workdir")
  arch, model, params, normalizer = from_saelens(tensors, cfg)
  metadata = dict(cfg.get("metadata") or {})
  emosae = metadata.pop("emosae", None) or {}
  config = emosae.get("config") or make_config(arch)
  config = json.loads(json.dumps(config))
  config["model"].update(model)
  old_info = emosae.get("data_info") or {}
  info = {"path": old_info.get("path", ""),
          "content_hash": old_info.get("content_hash"),
          "n": old_info.get("n", 0), "d": model["d_in"],
          "label_names": old_info.get("label_names", []),
          "encoder": old_info.get("encoder") or metadata.get("model_name"),
          "train_index": [], "val_index": [],
          "normalizer": normalizer.to_dict(),
          "synthetic": old_info.get("synthetic", False)}
  if not emosae:
    config["data"].update(path="", synthetic=False)
  source = {"format": "saelens", "folder": str(src.resolve()),
            "architecture": cfg.get("architecture", "standard"),
            "metadata": metadata}
  if emosae:
    source["emosae_run"] = {k: emosae.get(k)
                            for k in ("workdir", "member", "arch")}
  info["imported_from"] = source
  summary = {"imported_from": source, "arch": arch,
             "d_sae": model["d_sae"], "d_in": model["d_in"]}
  return write_run(workdir, params, config, info, summary)
