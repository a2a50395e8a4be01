"""Steering: add strength x typical activation x direction to T5 states.

A forward hook on the T5 encoder adds a per-row vector to last_hidden_state
at the positions whose attention mask is 1. Why the encoder and why the mask:
with classifier-free guidance both MusicGen libraries run the encoder on the
conditional rows only (transformers appends zero rows after the encoder;
audiocraft's null rows carry an all-zero mask), so a mask-gated encoder hook
changes the conditional branch alone and leaves padding untouched.

Targets: transformers MusicgenForConditionalGeneration (model.text_encoder),
audiocraft MusicGen (lm.condition_provider.conditioners['description'].t5),
an audiocraft LMModel or T5Conditioner, and a bare T5EncoderModel.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from bridge.directions import Directions, DirectionsError

# How an encoder batch of k*B rows maps onto B strength rows. "interleave":
# row i -> i // k (transformers' repeat_interleave expansion); "tile":
# row i -> i % B (audiocraft stacks [conditional rows; null rows]).
LAYOUTS = ("interleave", "tile")


def find_t5_encoder(model) -> tuple[nn.Module, str]:
  """(the T5 encoder module to hook, its batch layout) for a supported model."""
  if hasattr(model, "lm") and hasattr(model.lm, "condition_provider"):
    model = model.lm  # audiocraft MusicGen -> its LMModel
  if hasattr(model, "condition_provider"):
    conditioners = model.condition_provider.conditioners
    if "description" not in conditioners:
      raise DirectionsError(
          f"audiocraft model has no 'description' conditioner (it has "
          f"{sorted(conditioners)})")
    model = conditioners["description"]
  if hasattr(model, "t5") and hasattr(model, "t5_tokenizer"):
    return model.t5, "tile"  # audiocraft T5Conditioner
  if hasattr(model, "text_encoder"):
    return model.text_encoder, "interleave"  # transformers MusicGen
  if hasattr(model, "config") and hasattr(model.config, "d_model"):
    return model, "interleave"  # bare T5EncoderModel
  raise DirectionsError(
      f"cannot find a T5 encoder in {type(model).__name__}; pass a "
      f"transformers MusicGen, an audiocraft MusicGen or a T5EncoderModel")


def encoder_d_model(encoder: nn.Module) -> int:
  return int(encoder.config.d_model)


def strength_matrix(strengths, n_directions: int) -> torch.Tensor:
  """float64 [B, n]: one strength per batch row (and per direction).

  A scalar is one row; a [B] sequence gives every direction the same
  strength in row b; a [B, n] array sets each direction separately.
  """
  s = torch.as_tensor(strengths, dtype=torch.float64)
  if s.ndim == 0:
    s = s.reshape(1, 1)
  if s.ndim == 1:
    s = s[:, None]
  if s.ndim != 2 or s.shape[1] not in (1, n_directions):
    raise DirectionsError(
        f"strengths must be a scalar, [batch] or [batch, {n_directions}]; "
        f"got shape {list(s.shape)}")
  return s.expand(s.shape[0], n_directions)


class SteeringHook:
  """The hook's state: per-row offsets [B, d_model] and a call log."""

  def __init__(self, offsets: torch.Tensor, layout: str):
    if layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    self.offsets = offsets
    self.layout = layout
    self.batch_sizes: list[int] = []  # encoder batch of each call

  def row_offsets(self, batch: int) -> torch.Tensor:
    """[batch, d_model]: the offset of each encoder row."""
    rows = self.offsets.shape[0]
    if rows == 1 or rows == batch:
      return self.offsets.expand(batch, -1)
    if batch % rows:
      raise DirectionsError(
          f"the encoder saw {batch} rows but {rows} strengths were given; "
          f"pass one strength per prompt")
    if self.layout == "tile":
      return self.offsets.repeat(batch // rows, 1)
    return self.offsets.repeat_interleave(batch // rows, dim=0)

  def __call__(self, module, args, kwargs, output):
    hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
      mask = args[1]
    if mask is None:
      mask = torch.ones(hidden.shape[:2], device=hidden.device)
    self.batch_sizes.append(hidden.shape[0])
    offsets = self.row_offsets(hidden.shape[0]).to(hidden.device)
    # [B, T, 1] * [B, 1, d]: padded and null-condition rows get exactly 0.
    delta = mask.to(offsets.dtype)[..., None] * offsets[:, None, :]
    steered = (hidden.to(offsets.dtype) + delta).to(hidden.dtype)
    if isinstance(output, tuple):
      return (steered,) + output[1:]
    output["last_hidden_state"] = steered
    return output


@contextlib.contextmanager
def steer(model, directions: Directions | torch.Tensor, strengths,
          layout: str | None = None) -> Iterator[SteeringHook]:
  """Steers `model`'s T5 encoder inside the `with` block.

  directions: a Directions (strength in units of each feature's typical
    activation) or a raw tensor [d_model] / [n, d_model] (strength 1 adds
    the vector itself); several directions add up.
  strengths: scalar, [B] (same for every direction) or [B, n]; row b steers
    prompt b, so several strengths go through one generate call.
  layout: how encoder rows beyond B map to strength rows; defaults to the
    target library's convention (see LAYOUTS).
  The hook is removed on exit, also when the block raises.
  """
  encoder, default_layout = find_t5_encoder(model)
  vectors = _steering_vectors(directions)
  d_model = encoder_d_model(encoder)
  if vectors.shape[1] != d_model:
    raise DirectionsError(
        f"directions have d_model={vectors.shape[1]} but the model's T5 "
        f"encoder has d_model={d_model}")
  matrix = strength_matrix(strengths, vectors.shape[0])
  # float64 sum so that strength 0 adds exactly 0 and combinations are exact.
  offsets = matrix.to(vectors.device) @ vectors.double()
  hook = SteeringHook(offsets, layout or default_layout)
  handle = encoder.register_forward_hook(hook, with_kwargs=True)
  try:
    yield hook
  finally:
    handle.remove()


def _steering_vectors(directions) -> torch.Tensor:
  """float64 [n, d_model]: the vector added per unit strength."""
  if isinstance(directions, Directions):
    vectors = directions.steering_vectors()
  else:
    vectors = torch.as_tensor(directions)
  if vectors.ndim == 1:
    vectors = vectors[None]
  if vectors.ndim != 2:
    raise DirectionsError(
        f"directions must be [d_model] or [n, d_model], got shape "
        f"{list(vectors.shape)}")
  return vectors.double()


def active_hooks(model) -> int:
  """How many forward hooks sit on `model`'s T5 encoder (for tests)."""
  encoder, _ = find_t5_encoder(model)
  return len(encoder._forward_hooks)

