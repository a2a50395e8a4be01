"""Generate steered MusicGen audio: clips at several strengths plus baselines.

    backend = load_backend("transformers", "facebook/musicgen-small")
    audio = generate(backend, ["a piano piece"] * 3, directions.take([0]),
                     strengths=[0, 2, 4])          # [3, channels, samples]
    run = run_steering("exports/dirs", "runs/steer", strengths=(0, 2, 4))

One generate call steers every row with its own strength (the hook maps
rows to strengths), so a prompt's strengths, features and random controls
go through a single call. Besides the steered clips a run writes, per
prompt, an unsteered baseline, a random direction of the same norm at each
strength, and the "prompt edit" (the emotion word added to the prompt), so
evaluation can compare all three. Backends: transformers and audiocraft.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bridge import residual_steering, steering
from bridge.directions import Directions, DirectionsError, load_directions
from emosae_jax import hub
from emosae_jax.data import atomic_write, atomic_write_json

DEFAULT_MODEL = "facebook/musicgen-small"
BACKENDS = ("transformers", "audiocraft")
FORMAT_VERSION = 1
STEERING_FILE = "steering.json"
# Emotion-free prompts: steering should add the emotion, not the prompt.
NEUTRAL_PROMPTS = (
    "a piano piece",
    "an acoustic guitar melody",
    "a string quartet playing a short piece",
    "an electronic track with a steady beat",
    "a jazz trio with upright bass and drums",
    "a solo violin melody",
    "an ambient synthesizer texture",
    "a band playing an instrumental song",
)
PROMPT_EDIT_TEMPLATE = "{prompt}, {emotion}"


class ModelNotAvailableError(DirectionsError):
  """Model weights cannot be loaded; the message says how to provide them."""


class PromptsError(DirectionsError):
  """A bad prompts file."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to sample. guidance_scale is MusicGen's CFG coefficient."""
  duration: float = 5.0  # seconds
  guidance_scale: float = 3.0
  sampling: bool = True  # False: greedy (argmax) decoding
  top_k: int = 250
  temperature: float = 1.0
  seed: int = 0


# ---------------------------------------------------------------------------
# Backends: load a MusicGen, generate waveforms from prompts.


def _not_available(name: str, err: Exception,
                   flag: str = "--model") -> ModelNotAvailableError:
  why = (str(err).strip().splitlines() or [type(err).__name__])[0].strip()
  home = os.environ.get("HF_HOME", "~/.cache/huggingface")
  offline = ("; the hub is not used (unreachable, or HF_HUB_OFFLINE set)"
             if hub.offline_requested() else "")
  return ModelNotAvailableError(
      f"model weights for {name!r} are not available offline ({why}"
      f"{offline}); download them once into the Hugging Face cache (HF_HOME, "
      f"now {home}) or pass {flag}=/path/to/a/local/folder with the weights")


@contextlib.contextmanager
def loading(name: str, flag: str = "--model"):
  """Turns hub/file errors while loading into ModelNotAvailableError."""
  from huggingface_hub.errors import HFValidationError
  if name.startswith((".", "/", "~")) and not Path(name).expanduser(
  ).is_dir():
    raise _not_available(name, FileNotFoundError("no such folder"), flag)
  if not Path(name).expanduser().is_dir():
    hub.offline_unless_reachable()  # no minutes of retries without a network
  try:
    yield
  except (OSError, HFValidationError) as err:
    raise _not_available(name, err, flag) from None


class TransformersBackend:
  """transformers MusicgenForConditionalGeneration + its processor."""
  name = "transformers"

  def __init__(self, model_id: str, device: str = "cpu",
               dtype: torch.dtype = torch.float32):
    from transformers import AutoProcessor, MusicgenForConditionalGeneration
    with loading(model_id):
      self.processor = AutoProcessor.from_pretrained(model_id)
      self.model = MusicgenForConditionalGeneration.from_pretrained(
          model_id, dtype=dtype).to(device).eval()
    self.model_id, self.device = model_id, device

  @property
  def sample_rate(self) -> int:
    return int(self.model.config.audio_encoder.sampling_rate)

  @property
  def frame_rate(self) -> float:
    return float(self.model.config.audio_encoder.frame_rate)

  def generate(self, prompts: Sequence[str], settings: Settings) -> np.ndarray:
    """float32 [B, channels, samples]."""
    inputs = self.processor(text=list(prompts), padding=True,
                            return_tensors="pt").to(self.device)
    # The delay pattern costs num_codebooks - 1 steps; add them so that the
    # clip lasts `duration` like audiocraft's.
    frames = max(1, round(settings.duration * self.frame_rate))
    kwargs = dict(do_sample=settings.sampling,
                  guidance_scale=settings.guidance_scale,
                  max_new_tokens=frames + self.model.decoder.num_codebooks - 1)
    if settings.sampling:
      kwargs.update(top_k=settings.top_k, temperature=settings.temperature)
    with torch.inference_mode():
      audio = self.model.generate(**inputs, **kwargs)
    return audio.float().cpu().numpy()


class AudiocraftBackend:
  """audiocraft MusicGen (hub name, or a folder with state_dict.bin and
  compression_state_dict.bin; its T5 "t5-base" comes from the HF cache)."""
  name = "audiocraft"

  def __init__(self, model_id: str, device: str = "cpu",
               dtype: torch.dtype = torch.float32):
    try:
      from audiocraft.models import MusicGen
    except ImportError as err:
      raise ModelNotAvailableError(
          f"audiocraft is not importable ({err}); install it with "
          f"bash scripts/install_audiocraft.sh <venv>/bin/python") from None
    del dtype  # audiocraft keeps float32 weights (autocast on GPU)
    with loading(model_id):
      self.model = MusicGen.get_pretrained(model_id, device=device)
    self.model_id, self.device = model_id, device

  @property
  def sample_rate(self) -> int:
    return int(self.model.sample_rate)

  def generate(self, prompts: Sequence[str], settings: Settings) -> np.ndarray:
    """float32 [B, channels, samples]."""
    self.model.set_generation_params(
        duration=settings.duration, use_sampling=settings.sampling,
        top_k=min(settings.top_k, self.model.lm.card),
        temperature=settings.temperature, cfg_coef=settings.guidance_scale)
    with torch.inference_mode():
      audio = self.model.generate(list(prompts))
    return audio.float().cpu().numpy()


def load_backend(backend: str = "transformers", model: str = DEFAULT_MODEL,
                 device: str = "cpu", dtype: torch.dtype = torch.float32):
  """A TransformersBackend or AudiocraftBackend; both have .model,
  .sample_rate and .generate(prompts, settings)."""
  classes = {"transformers": TransformersBackend,
             "audiocraft": AudiocraftBackend}
  if backend not in classes:
    raise DirectionsError(f"unknown backend {backend!r}; use one of "
                          f"{list(classes)}")
  return classes[backend](model, device=device, dtype=dtype)


def backend_d_model(backend) -> int:
  encoder, _ = steering.find_t5_encoder(backend.model)
  return steering.encoder_d_model(encoder)


def generate(backend, prompts: Sequence[str],
             directions: Directions | torch.Tensor | None = None,
             strengths=0.0, settings: Settings = Settings(),
             site: dict | None = None) -> np.ndarray:
  """Audio [B, channels, samples] for B prompts, row b steered by strength b.

  strengths: scalar, [B] or [B, n] (see steering.strength_matrix). site:
  where to add (directions_format); default: the Directions' own site, else
  the T5 output. The torch RNG is seeded with settings.seed just before
  the call.
  """
  if site is None and isinstance(directions, Directions):
    site = directions.meta.get("site")
  ctx = (contextlib.nullcontext() if directions is None else
         residual_steering.steer_at(backend.model, site, directions,
                                    strengths))
  with ctx:
    torch.manual_seed(settings.seed)
    return backend.generate(prompts, settings)


# ---------------------------------------------------------------------------
# A steering run: plan clips, batch them, write WAVs and steering.json.


@dataclasses.dataclass
class Clip:
  """One clip to generate. column indexes the run's direction table."""
  kind: str  # "baseline", "steer", "random" or "prompt_edit"
  prompt: str  # the text MusicGen sees
  base_prompt: str
  feature: int | None = None
  emotion: str | None = None
  strength: float = 0.0
  column: int | None = None
  path: str = ""
  seed: int = 0


def read_prompts(path: str | os.PathLike) -> list[str]:
  """Text lines, or JSONL objects with a "text" field (blank lines skipped)."""
  path = Path(path)
  if not path.is_file():
    raise PromptsError(f"no prompts file at {path}")
  texts = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    if path.suffix == ".jsonl" or line.startswith("{"):
      try:
        line = json.loads(line)["text"]
      except (ValueError, KeyError, TypeError):
        raise PromptsError(f"{path}:{n}: expected a JSON object with "
                           f"a \"text\" field") from None
    texts.append(str(line))
  if not texts:
    raise PromptsError(f"{path} holds no prompts")
  return texts


def plan_clips(prompts: Sequence[str], directions: Directions,
               strengths: Sequence[float], random_baseline: bool = True,
               prompt_edit: bool = True) -> list[Clip]:
  """Every clip of a run, grouped by prompt.

  Per prompt: one unsteered baseline (strength 0 for every feature), each
  feature at each non-zero strength (column i), its random control (column
  n + i), and the prompt edit for each emotion among the features.
  """
  n = len(directions)
  nonzero = [float(s) for s in strengths if float(s) != 0.0]
  emotions = list(dict.fromkeys(directions.emotions))
  clips = []
  for prompt in prompts:
    clips.append(Clip("baseline", prompt, prompt))
    for i, (feature, emotion) in enumerate(zip(directions.feature_ids,
                                               directions.emotions)):
      for s in nonzero:
        clips.append(Clip("steer", prompt, prompt, feature, emotion, s, i))
      if random_baseline:
        for s in nonzero:
          clips.append(Clip("random", prompt, prompt, feature, emotion, s,
                            n + i))
    if prompt_edit:
      for emotion in emotions:
        text = PROMPT_EDIT_TEMPLATE.format(prompt=prompt, emotion=emotion)
        clips.append(Clip("prompt_edit", text, prompt, None, emotion))
  return clips


def batches(clips: Sequence[Clip], batch_size: int) -> list[list[int]]:
  """Indices of clips per generate call: identical text, at most batch_size.

  Grouping by exact text keeps each row's padding what the prompt alone
  would get (audiocraft's cross-attention sees padded positions), so a
  batched clip is the clip a single call would make (greedy).
  """
  groups: dict[str, list[int]] = {}
  for i, clip in enumerate(clips):
    groups.setdefault(clip.prompt, []).append(i)
  return [idx[j:j + batch_size] for idx in groups.values()
          for j in range(0, len(idx), batch_size)]


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
  """Writes [channels, samples] float audio as 16-bit PCM WAV, atomically."""
  import soundfile
  data = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0).T
  atomic_write(path, lambda tmp: soundfile.write(
      tmp, data, sample_rate, format="WAV", subtype="PCM_16"))


def write_json(path: Path, obj) -> None:
  atomic_write_json(path, obj)


def check_strengths(strengths: Sequence[float]) -> None:
  """Non-finite strengths would reach sampling as NaN probabilities."""
  bad = [s for s in strengths if not math.isfinite(float(s))]
  if bad:
    raise DirectionsError(f"strengths must be finite numbers, got "
                          f"{', '.join(str(float(s)) for s in bad)}")


def _clip_name(i: int, clip: Clip) -> str:
  parts = [f"{i:04d}", clip.kind]
  if clip.feature is not None:
    parts.append(f"f{clip.feature}")
  if clip.kind == "prompt_edit":
    parts.append(re.sub(r"[^A-Za-z0-9]+", "-", clip.emotion or ""))
  if clip.strength:
    parts.append(f"s{clip.strength:g}")
  return "_".join(parts) + ".wav"


def run_steering(directions: str | os.PathLike, out: str | os.PathLike,
                 model: str = DEFAULT_MODEL, backend: str = "transformers",
                 prompts: Sequence[str] | None = None,
                 features: Sequence[int] | None = None,
                 emotions: Sequence[str] | None = None,
                 strengths: Sequence[float] = (0.0, 2.0, 4.0),
                 settings: Settings = Settings(), batch_size: int = 16,
                 random_baseline: bool = True, prompt_edit: bool = True,
                 device: str = "cpu", dtype: torch.dtype = torch.float32,
                 loaded_backend=None) -> dict:
  """Generates a run's clips into out/clips and writes out/steering.json.

  Returns the steering.json content. Raises DirectionsError (or a
  subclass) with a one-line message on bad input, before anything is
  written.
  """
  check_strengths(strengths)
  chosen = load_directions(directions).select(features, emotions)
  if not len(chosen):
    raise DirectionsError(f"{directions} holds no directions")
  prompts = list(prompts or NEUTRAL_PROMPTS)
  be = loaded_backend or load_backend(backend, model, device, dtype)
  site = chosen.meta.get("site") or {"kind": "t5_output"}
  if site["kind"] == "t5_output":
    chosen.check_d_model(backend_d_model(be), f"model {model!r}")
  residual_steering.check_site(be.model, site, chosen.d_model,
                               f"model {model!r}")
  control = chosen.random_like(settings.seed)
  table = torch.cat([chosen.steering_vectors(), control.steering_vectors()])
  clips = plan_clips(prompts, chosen, strengths, random_baseline, prompt_edit)
  out = Path(out)
  (out / "clips").mkdir(parents=True, exist_ok=True)
  start, calls = time.perf_counter(), 0
  for call, rows in enumerate(batches(clips, batch_size)):
    seed = settings.seed + call
    matrix = torch.zeros(len(rows), table.shape[0], dtype=torch.float64)
    for r, i in enumerate(rows):
      if clips[i].column is not None:
        matrix[r, clips[i].column] = clips[i].strength
    audio = generate(be, [clips[i].prompt for i in rows], table, matrix,
                     dataclasses.replace(settings, seed=seed), site)
    for r, i in enumerate(rows):
      clips[i].path, clips[i].seed = f"clips/{_clip_name(i, clips[i])}", seed
      write_wav(out / clips[i].path, audio[r], be.sample_rate)
    calls += 1
    logging.info("generate call %d: %d clips", call, len(rows))
  run = {
      "format_version": FORMAT_VERSION,
      "settings": {
          "directions": str(Path(directions).resolve()), "model": model,
          "backend": be.name, "device": device, "dtype": str(dtype),
          "strengths": [float(s) for s in strengths],
          "prompts": prompts, "batch_size": batch_size,
          "random_baseline": random_baseline, "prompt_edit": prompt_edit,
          "prompt_edit_template": PROMPT_EDIT_TEMPLATE,
          "sample_rate": be.sample_rate, **dataclasses.asdict(settings)},
      "directions": {
          "feature_ids": list(chosen.feature_ids),
          "emotions": list(chosen.emotions),
          "typical_activation": chosen.typical_activation.tolist(),
          "norms": chosen.vectors.norm(dim=1).tolist(),
          "encoder": chosen.meta.get("encoder"), "site": site,
          "source": chosen.meta.get("source")},
      "generate_calls": calls,
      "generate_seconds": round(time.perf_counter() - start, 3),
      "clips": [{k: v for k, v in dataclasses.asdict(c).items()
                 if k != "column"} for c in clips],
  }
  write_json(out / STEERING_FILE, run)
  return run
