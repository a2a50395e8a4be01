"""Score steered clips with CLAP and fit dose-response slopes.

    result = evaluate_run("runs/steer", clap="laion/clap-htsat-unfused")

Each clip is scored zero-shot against "<emotion> music" texts (softmax over
the texts, so the probabilities of one clip sum to 1); valence is
P(happy) - P(sad). Per feature, the slope of valence and of P(feature's
emotion) against strength (baseline clips count as strength 0) is reported
beside the slope of its random direction of the same norm, and beside the
prompt edit (mean change from the baseline when the emotion word is added
to the prompt). Writes evaluation.json and dose_response.png.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bridge.directions import DirectionsError
from bridge.generate import STEERING_FILE, loading, write_json
from emosae_jax.data import atomic_write

DEFAULT_CLAP = "laion/clap-htsat-unfused"
EMOTION_TEXT = "{emotion} music"
VALENCE_PAIR = ("happy", "sad")
EVALUATION_FILE = "evaluation.json"
PLOT_FILE = "dose_response.png"


def load_clap(name: str = DEFAULT_CLAP, device: str = "cpu"):
  """(ClapModel, ClapProcessor); ModelNotAvailableError if not offline."""
  from transformers import ClapModel, ClapProcessor
  with loading(name, "--clap"):
    processor = ClapProcessor.from_pretrained(name)
    model = ClapModel.from_pretrained(name).to(device).eval()
  return model, processor


def read_audio(path: str | os.PathLike, sample_rate: int,
               max_seconds: float | None = None) -> np.ndarray:
  """Mono float32 [samples] at `sample_rate`, cut to max_seconds (from the
  start, so scores are deterministic; CLAP would crop at random)."""
  import soundfile
  from scipy.signal import resample_poly
  audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
  audio = audio.mean(axis=1)
  if rate != sample_rate:
    g = math.gcd(rate, sample_rate)
    audio = resample_poly(audio, sample_rate // g, rate // g).astype(
        np.float32)
  if max_seconds:
    audio = audio[:int(max_seconds * sample_rate)]
  return audio


def clap_probabilities(model, processor, audios: Sequence[np.ndarray],
                       texts: Sequence[str], batch_size: int = 8
                       ) -> np.ndarray:
  """float [n_clips, n_texts]: softmax over texts of CLAP's audio-text
  logits. audios are mono at the processor's sampling rate."""
  device = next(model.parameters()).device
  rate = processor.feature_extractor.sampling_rate
  with torch.inference_mode():
    text_in = processor(text=list(texts), return_tensors="pt", padding=True)
    text_emb = model.get_text_features(**text_in.to(device))
    text_emb = _tensor(text_emb)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    probs = []
    for i in range(0, len(audios), batch_size):
      audio_in = processor(audio=list(audios[i:i + batch_size]),
                           sampling_rate=rate, return_tensors="pt")
      audio_emb = _tensor(model.get_audio_features(**audio_in.to(device)))
      audio_emb = audio_emb / audio_emb.norm(dim=-1, keepdim=True)
      logits = model.logit_scale_a.exp() * audio_emb @ text_emb.T
      probs.append(logits.softmax(dim=-1).float().cpu().numpy())
  return np.concatenate(probs)


def _tensor(features) -> torch.Tensor:
  """get_*_features returns a tensor (or an output with pooler_output)."""
  return features if torch.is_tensor(features) else features.pooler_output


def dose_response(strengths: Sequence[float], values: Sequence[float]
                  ) -> dict:
  """Least-squares line of values on strengths: slope, its standard error,
  intercept and n (slope None with fewer than two distinct strengths)."""
  x, y = np.asarray(strengths, float), np.asarray(values, float)
  if len(x) < 2 or np.ptp(x) == 0:
    return {"slope": None, "stderr": None, "intercept": None, "n": len(x)}
  slope, intercept = np.polyfit(x, y, 1)
  resid = y - (slope * x + intercept)
  dof = len(x) - 2
  stderr = (math.sqrt(resid @ resid / dof / ((x - x.mean()) ** 2).sum())
            if dof > 0 else None)
  return {"slope": float(slope), "stderr": stderr,
          "intercept": float(intercept), "n": len(x)}


def _mean(values) -> float | None:
  return float(np.mean(values)) if len(values) else None


def feature_effects(clips: list[dict], feature: int, emotion: str) -> dict:
  """Slopes (steer, random) and the prompt-edit effect for one feature, on
  valence and on P(emotion)."""
  base = [c for c in clips if c["kind"] == "baseline"]
  result = {"feature": feature, "emotion": emotion}
  for metric in ("valence", "target"):
    value = lambda c: c["valence"] if metric == "valence" else \
        c["probs"][emotion]
    for kind in ("steer", "random"):
      own = [c for c in clips if c["kind"] == kind and c["feature"] == feature]
      pts = base + own
      result.setdefault(kind, {})[metric] = dose_response(
          [c["strength"] for c in pts], [value(c) for c in pts])
      result[kind].setdefault("mean_by_strength", {})[metric] = {
          f"{s:g}": _mean([value(c) for c in pts if c["strength"] == s])
          for s in sorted({c["strength"] for c in pts})}
    edit = [c for c in clips if c["kind"] == "prompt_edit"
            and c["emotion"] == emotion]
    m_edit, m_base = _mean([value(c) for c in edit]), _mean(
        [value(c) for c in base])
    result.setdefault("prompt_edit", {})[metric] = {
        "effect": None if m_edit is None or m_base is None else
        m_edit - m_base, "n": len(edit)}
  return result


def evaluate_run(steering_dir: str | os.PathLike, clap: str = DEFAULT_CLAP,
                 emotions: Sequence[str] | None = None, device: str = "cpu",
                 batch_size: int = 8, plot: bool = True,
                 loaded_clap=None) -> dict:
  """Scores a steering run; writes evaluation.json (+ dose_response.png)."""
  steering_dir = Path(steering_dir)
  meta_path = steering_dir / STEERING_FILE
  if not meta_path.is_file():
    raise DirectionsError(f"no {STEERING_FILE} in {steering_dir}; run "
                          f"scripts/steer.py first")
  run = json.loads(meta_path.read_text())
  clips = run["clips"]
  emotions = list(dict.fromkeys(
      list(VALENCE_PAIR) + list(emotions or []) +
      [c["emotion"] for c in clips if c["emotion"]]))
  texts = [EMOTION_TEXT.format(emotion=e) for e in emotions]
  missing = [c["path"] for c in clips
             if not (steering_dir / c["path"]).is_file()]
  if not clips or missing:
    raise DirectionsError(
        f"{len(missing)} clip(s) missing in {steering_dir}, e.g. {missing[0]}"
        if missing else f"{meta_path} lists no clips")
  model, processor = loaded_clap or load_clap(clap, device)
  fe = processor.feature_extractor
  audios = [read_audio(steering_dir / c["path"], fe.sampling_rate,
                       fe.nb_max_samples / fe.sampling_rate) for c in clips]
  probs = clap_probabilities(model, processor, audios, texts, batch_size)
  scored = []
  for clip, p in zip(clips, probs):
    by_emotion = dict(zip(emotions, map(float, p)))
    scored.append({**clip, "probs": by_emotion,
                   "valence": by_emotion["happy"] - by_emotion["sad"]})
  features = [feature_effects(scored, f, e) for f, e in zip(
      run["directions"]["feature_ids"], run["directions"]["emotions"])]
  result = {"format_version": 1,
            "settings": {"steering": str(steering_dir.resolve()),
                         "clap": clap, "texts": texts, "emotions": emotions,
                         "valence": "P(happy) - P(sad)"},
            "features": features, "clips": scored}
  write_json(steering_dir / EVALUATION_FILE, result)
  if plot and features:
    plot_dose_response(features, steering_dir / PLOT_FILE)
  return result


def plot_dose_response(features: list[dict], path: Path) -> None:
  """One panel per feature: mean valence by strength, steer vs random,
  with the prompt edit as a horizontal line. Written atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(features), squeeze=False,
                           figsize=(4 * len(features), 3.2))
  for ax, feat in zip(axes[0], features):
    for kind, style in (("steer", "o-"), ("random", "s--")):
      means = feat[kind]["mean_by_strength"]["valence"]
      xs = [float(s) for s in means]
      ax.plot(xs, list(means.values()), style, label=kind)
    base = feat["steer"]["mean_by_strength"]["valence"].get("0")
    edit = feat["prompt_edit"]["valence"]["effect"]
    if base is not None and edit is not None:
      ax.axhline(base + edit, color="gray", ls=":", label="prompt edit")
    ax.set_title(f"feature {feat['feature']} ({feat['emotion']})")
    ax.set_xlabel("strength (x typical activation)")
    ax.set_ylabel("valence P(happy) - P(sad)")
    ax.legend(fontsize="small")
  fig.tight_layout()
  atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
  plt.close(fig)
