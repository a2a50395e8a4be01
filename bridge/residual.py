"""MusicGen decoder residual-stream embeddings: one embedding set per layer.

    paths, reused = extract("/tmp/res", texts, labels, label_names, groups,
                            model="facebook/musicgen-small", layers=None)
    # -> /tmp/res/layer_00 ... layer_23 (embedding sets), /tmp/res/residual.json

MusicGen generates a short continuation (max_new_tokens decoder steps) for
a batch of prompts; forward hooks on the chosen decoder layers add each
position's output (the residual stream after block L, before the final
layer norm) to a running sum per prompt, conditional rows only under
classifier-free guidance (see bridge.decoder_backends). Backends:
transformers' MusicgenForConditionalGeneration and audiocraft's MusicGen
(backend="audiocraft": its LMModel transformer, concatenated CFG). Both
feed the decoder max_new_tokens positions (the start step and the delay
pattern's steps included; audiocraft generates max_new_tokens - (codebooks
- 1) frames for that), so frames mean the same in both. Frames are never
stored, so memory
is the pooled [N, layers, d] array (2,700 prompts x 24 layers x 1024 x 4 B
= 265 MB for musicgen-small) plus one batch of activations.

Resumable: each batch's pooled states go to OUT/.partial/ as they come; a
rerun with the same settings skips finished batches (seeded per batch, so
a resumed run equals an uninterrupted one). Cached: a finished OUT whose
cache key matches is reused without loading the model.

Never imports jax.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import types
from pathlib import Path
from typing import Sequence
from unittest import mock

import numpy as np
import torch
from tqdm.auto import tqdm

from bridge import (audiocraft_batching, decoder_backends, embedding_io,
                    residual_steering, t5)
from emosae_jax import data
from emosae_jax import directions_format as fmt

DEFAULT_MODEL = "facebook/musicgen-small"
MANIFEST_FILE = "residual.json"
PARTIAL_DIR = ".partial"
FORMAT_VERSION = 1
BACKENDS = ("transformers", "audiocraft")


def layer_dir(layer: int) -> str:
  return f"layer_{layer:02d}"


class PooledCapture:
  """Forward hook: running sum over positions of a layer's conditional rows.

  sums: float32 [B, d] for the current generate call; frames: positions
  added; with keep_frames also the per-position states (tests only: that
  is exactly the memory extraction avoids).
  """
  emosae_hook = True

  def __init__(self, rows,  # a decoder_backends row tracker
               keep_frames: bool = False):
    self.rows, self.keep_frames = rows, keep_frames
    self.reset()

  def reset(self):
    self.sums, self.frames, self.kept = None, 0, []
    self._before_last = None  # (sums, frames) before the last call

  def __call__(self, module, args, output):
    hidden = residual_steering.layer_output(output)
    n = self.rows.count(hidden.shape[0])
    if n == 0:  # audiocraft's two-step CFG: the unconditional call
      return
    start, length = self.rows.start, hidden.shape[1]
    if start == 0 and self.frames and self._before_last == (None, 0):
      # The start token again (transformers' dropped prefill): replace it.
      self.sums, self.frames = self._before_last
      self.kept = self.kept[:-1]
    if start != self.frames:
      raise RuntimeError(f"decoder call at position {start} after "
                         f"{self.frames} pooled positions")
    cond = hidden[:n].detach().float()
    total = cond.sum(1)
    self._before_last = (self.sums, self.frames)
    self.sums = total if self.sums is None else self.sums + total
    self.frames += length
    if self.keep_frames:
      self.kept.append(cond.cpu())

  def mean(self) -> torch.Tensor:
    return self.sums / self.frames

  def states(self) -> torch.Tensor:
    """[B, frames, d]: the kept per-position states."""
    return torch.cat(self.kept, dim=1)


@contextlib.contextmanager
def capture(model, layers: Sequence[int], keep_frames: bool = False):
  """{layer: PooledCapture} hooked on `model`'s decoder inside the block."""
  blocks = residual_steering.decoder_layers(model)
  with residual_steering.conditional_rows(model) as rows:
    captures = {l: PooledCapture(rows, keep_frames) for l in layers}
    handles = [blocks[l].register_forward_hook(c)
               for l, c in captures.items()]
    try:
      yield captures
    finally:
      for h in handles:
        h.remove()


@contextlib.contextmanager
def no_audio_decode(model):
  """Skips the codec decode at the end of generate: extraction needs only
  the decoder's states (the codes are dropped)."""
  def decode(codes, *args, **kwargs):
    del args, kwargs
    return types.SimpleNamespace(audio_values=torch.zeros(
        codes.shape[1], 1, 1, device=codes.device))
  with mock.patch.object(model.audio_encoder, "decode", decode):
    yield


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
  n = len(residual_steering.decoder_layers(model))
  layers = list(range(n)) if layers is None else [int(l) for l in layers]
  bad = [l for l in layers if not 0 <= l < n]
  if bad or not layers or len(set(layers)) != len(layers):
    raise residual_steering.SiteError(
        f"layers {layers} are not distinct layers of a {n}-layer decoder "
        f"(0..{n - 1})")
  return layers


def generate_kwargs(max_new_tokens: int, guidance_scale: float,
                    sampling: bool, top_k: int) -> dict:
  kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sampling,
                guidance_scale=guidance_scale)
  if sampling:
    kwargs.update(top_k=top_k, temperature=1.0)
  return kwargs


def audiocraft_steps(lm, max_new_tokens: int) -> int:
  """Frames audiocraft's LM.generate must make for the decoder to run
  max_new_tokens steps (its delay pattern adds codebooks - 1 steps)."""
  steps = max_new_tokens - (lm.num_codebooks - 1)
  if steps < 1:
    raise ValueError(f"max_new_tokens must be at least {lm.num_codebooks} "
                     f"(the codebook count) for the audiocraft backend")
  return steps


def _run_transformers(backend, texts: Sequence[str], kwargs: dict) -> None:
  model = backend.model
  inputs = backend.processor(text=list(texts), padding=True,
                             return_tensors="pt").to(backend.device)
  with no_audio_decode(model):
    model.generate(**inputs, **kwargs)


def _run_audiocraft(backend, texts: Sequence[str], kwargs: dict) -> None:
  """The LM's own generate (no audio decode), CFG concatenated."""
  musicgen = backend.model
  lm = musicgen.lm
  attributes, _ = musicgen._prepare_tokens_and_attributes(  # pylint: disable=protected-access
      list(texts), None)
  with musicgen.autocast:
    lm.generate(None, attributes,
                max_gen_len=audiocraft_steps(lm, kwargs["max_new_tokens"]),
                use_sampling=kwargs["do_sample"],
                temp=kwargs.get("temperature", 1.0),
                top_k=min(kwargs.get("top_k", 0), lm.card),
                cfg_coef=kwargs["guidance_scale"], two_step_cfg=False)


def pooled_batch(backend, texts: Sequence[str], layers: Sequence[int],
                 kwargs: dict, seed: int) -> tuple[np.ndarray, int]:
  """(float32 [B, len(layers), d], frames): the mean over the positions
  generate fed the decoder (max_new_tokens: the start step and every
  generated step but the last) per layer. kwargs: generate_kwargs()."""
  run = _run_audiocraft if backend_name(backend) == "audiocraft" \
      else _run_transformers
  masked = audiocraft_batching.batched(backend.model.lm) \
      if run is _run_audiocraft else contextlib.nullcontext()
  with capture(backend.model, layers) as captures, torch.inference_mode(), \
      masked:
    torch.manual_seed(seed)
    run(backend, texts, kwargs)
    pooled = torch.stack([captures[l].mean() for l in layers], 1)
    return pooled.cpu().numpy(), captures[layers[0]].frames


def batch_plan(backend, texts: Sequence[str],
               batch_size: int) -> list[list[int]]:
  """Prompt indices per generate call: batches of batch_size.

  transformers: consecutive prompts (its cross-attention masks padding).
  audiocraft: prompts sorted by T5 token count (stable), then cut into
  batches, so that a batch pads little; its padding is masked during
  extraction (bridge.audiocraft_batching), so each prompt's states do not
  depend on its batch (test_bridge_residual_audiocraft).
  """
  order = list(range(len(texts)))
  if backend_name(backend) == "audiocraft":
    counts = token_counts(backend, texts)
    order.sort(key=lambda i: counts[i])
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def token_counts(backend, texts: Sequence[str]) -> list[int]:
  """audiocraft: each prompt's T5 token count (0 without a description
  conditioner)."""
  conditioners = backend.model.lm.condition_provider.conditioners
  if "description" not in conditioners:
    return [0] * len(texts)
  tokenize = conditioners["description"].tokenize
  return [int(tokenize([t])["attention_mask"].sum()) for t in texts]


def backend_name(backend) -> str:
  return decoder_backends.decoder_of(backend.model).name


def cache_key(revision: str, source: str, settings: dict, texts, labels,
              label_names, groups) -> str:
  h = hashlib.sha256()
  content_id = t5._is_content_id(revision)  # pylint: disable=protected-access
  # As in t5.cache_key: a branch name names weights only with the repo.
  h.update(json.dumps([revision if content_id else f"{source}@{revision}",
                       settings],
                      sort_keys=True).encode())
  h.update(json.dumps([list(texts), [int(x) for x in labels],
                       list(label_names), list(groups)]).encode())
  return h.hexdigest()[:24]


def _cached(out: Path, key: str) -> list[Path] | None:
  try:
    manifest = json.loads((out / MANIFEST_FILE).read_text())
  except (OSError, json.JSONDecodeError):
    return None
  paths = [out / p for p in manifest.get("sets", [])]
  ok = manifest.get("cache_key") == key and paths and all(
      (embedding_io.read_sidecar(p) or {}).get("cache_key") == key
      for p in paths)
  return paths if ok else None


def _partial(out: Path, key: str) -> Path:
  """OUT/.partial for this key (a partial run with another key is wiped)."""
  part = out / PARTIAL_DIR
  key_file = part / "cache_key"
  if part.exists() and (not key_file.is_file()
                        or key_file.read_text() != key):
    shutil.rmtree(part)
  part.mkdir(parents=True, exist_ok=True)
  if not key_file.is_file():
    data.atomic_write_bytes(key_file, key.encode())
  return part


def _save_shard(path: Path, pooled: np.ndarray, frames: int) -> None:
  from safetensors.numpy import save_file
  data.atomic_write(path, lambda tmp: save_file(
      {"pooled": np.ascontiguousarray(pooled),
       "frames": np.array([frames], np.int64)}, tmp))


def _load_shard(path: Path, shape) -> tuple[np.ndarray, int] | None:
  from safetensors.numpy import load_file
  try:
    shard = load_file(str(path))
    pooled, frames = shard["pooled"], int(shard["frames"][0])
  except Exception:  # pylint: disable=broad-except  # damaged: recompute
    return None
  return (pooled, frames) if pooled.shape == tuple(shape) else None


def extract(out: str | os.PathLike, texts: Sequence[str],
            labels: Sequence[int], label_names: Sequence[str],
            groups: Sequence[str] | None = None, model: str = DEFAULT_MODEL,
            layers: Sequence[int] | None = None, batch_size: int = 8,
            max_new_tokens: int = 16, guidance_scale: float = 3.0,
            sampling: bool = True, top_k: int = 250, seed: int = 0,
            device: str = "cpu", dtype: str = "float32", force: bool = False,
            progress: bool = True, meta: dict | None = None,
            loaded_backend=None, backend: str | None = None
            ) -> tuple[list[Path], bool]:
  """Writes OUT/layer_LL embedding sets; returns (their paths, reused).

  backend: "transformers" (default) or "audiocraft" (model: an audiocraft
  hub name or a folder with state_dict.bin and compression_state_dict.bin).
  loaded_backend: a bridge.generate backend already loaded (tests,
  benchmarks); its model id must be `model`.
  """
  if not texts:
    raise ValueError("no prompts to embed")
  if batch_size < 1 or max_new_tokens < 1:
    raise ValueError("batch_size and max_new_tokens must be >= 1")
  backend = _backend_choice(backend, loaded_backend, dtype)
  groups = list(groups) if groups is not None else [""] * len(texts)
  out = Path(out)
  if loaded_backend is None:
    source, rev = _resolve(backend, model)
  else:
    source, rev = model, "in-memory"
  settings = dict(layers=None if layers is None else [int(l) for l in layers],
                  batch_size=batch_size, max_new_tokens=max_new_tokens,
                  guidance_scale=guidance_scale, sampling=sampling,
                  top_k=top_k, seed=seed, dtype=dtype, pooling="mean",
                  backend=backend, format_version=FORMAT_VERSION)
  if backend == "audiocraft":  # batches changed with this (old partials go)
    settings["batching"] = "token-count-sorted, padding masked"
  key = cache_key(rev, source, settings, texts, labels, label_names, groups)
  cached = None if force else _cached(out, key)
  if cached:
    print(f"reusing cached residual embeddings in {out} (cache key {key})")
    return cached, True
  loaded = loaded_backend or _load(backend, model, device, dtype)
  layers = check_layers(loaded.model, layers)
  if backend == "audiocraft":
    audiocraft_steps(loaded.model.lm, max_new_tokens)  # fail before work
  width = residual_steering.decoder_width(loaded.model)
  pooled = np.zeros((len(texts), len(layers), width), np.float32)
  part = _partial(out, key)
  kwargs = generate_kwargs(max_new_tokens, guidance_scale, sampling, top_k)
  bar = tqdm(total=len(texts), unit="prompt", disable=not progress,
             desc=f"residual {model}")
  frames = set()
  for b, rows in enumerate(batch_plan(loaded, texts, batch_size)):
    shard = part / f"batch_{b:06d}.safetensors"
    done = _load_shard(shard, pooled[rows].shape) \
        if shard.is_file() else None
    if done is None:
      done = pooled_batch(loaded, [texts[i] for i in rows], layers, kwargs,
                          seed + b)
      _save_shard(shard, *done)
    pooled[rows] = done[0]
    frames.add(done[1])
    bar.update(len(rows))
  bar.close()
  provenance = dict(meta or {})
  provenance.update(
      encoder=model, encoder_source=source, encoder_revision=rev,
      encoder_kind="musicgen_decoder", model=model, backend=backend,
      layers=layers, pooling="mean",
      frames=max(frames), max_new_tokens=max_new_tokens,
      guidance_scale=guidance_scale, sampling=sampling, top_k=top_k,
      seed=seed, batch_size=batch_size, dtype=dtype, device=device,
      n_layers=len(residual_steering.decoder_layers(loaded.model)),
      cache_key=key, torch_version=torch.__version__)
  paths = []
  for i, layer in enumerate(layers):
    paths.append(embedding_io.write_embedding_set(
        out / layer_dir(layer), pooled[:, i], labels, list(label_names),
        list(texts), groups, None, layer=layer,
        site=fmt.decoder_layer(layer), **provenance))
  data.atomic_write_json(out / MANIFEST_FILE, {
      **settings, "cache_key": key, "model": model, "layers": layers,
      "sets": [layer_dir(l) for l in layers]})
  shutil.rmtree(part, ignore_errors=True)
  return paths, False


def _backend_choice(backend: str | None, loaded_backend, dtype: str) -> str:
  """The backend's name: as asked, else the loaded one's, else transformers."""
  loaded = loaded_backend and backend_name(loaded_backend)
  backend = backend or loaded or "transformers"
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got "
                     f"{backend!r}")
  if loaded and loaded != backend:
    raise ValueError(f"backend {backend!r} asked for but the loaded model "
                     f"is {loaded}'s")
  if backend == "audiocraft" and dtype != "float32":
    raise ValueError("the audiocraft backend keeps float32 weights (autocast "
                     "on GPU); use dtype float32")
  return backend


def _resolve(backend: str, model: str) -> tuple[str, str]:
  """(source, revision) for the cache key, without loading weights."""
  if backend == "transformers":
    return t5.resolve_model(model)
  folder = Path(model).expanduser()
  if folder.is_dir():  # audiocraft folders have no config.json
    return str(folder.resolve()), t5.folder_fingerprint(folder)
  try:
    from huggingface_hub import snapshot_download
    folder = Path(snapshot_download(model, local_files_only=True))
    if (folder / "state_dict.bin").is_file():
      return str(folder), "hub:" + folder.name
  except Exception:  # pylint: disable=broad-except  # not cached: load says
    pass
  return model, "main"


def _load(backend: str, model: str, device: str, dtype: str):
  from bridge import generate  # the backend loader and its error messages
  if dtype not in t5.DTYPES:
    raise ValueError(f"dtype must be one of {sorted(t5.DTYPES)}")
  if device.startswith("cuda") and not torch.cuda.is_available():
    raise ValueError(f"device {device!r} asked for but torch sees no GPU")
  return generate.load_backend(backend, model, device, t5.DTYPES[dtype])
