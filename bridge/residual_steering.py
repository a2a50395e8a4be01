"""Steering in MusicGen's decoder residual stream, and the hooks' plumbing.

A forward hook on decoder layer L adds strength * typical_activation *
direction to the layer's output (the residual stream after block L) at
every position MusicGen feeds through the decoder (option: from position
`from_step` on), on the conditional rows only.

The hooks are the same for transformers' MusicgenForConditionalGeneration
and audiocraft's MusicGen (its LMModel transformer); bridge.decoder_backends
says, per library, where the blocks are and which rows of each call are
conditional under classifier-free guidance (transformers and audiocraft's
default CFG: [conditional B rows; unconditional B rows] in one batch;
audiocraft's two-step CFG: a separate unconditional call, left alone).

Sites (emosae_jax.directions_format): {"kind": "t5_output"} steers through
bridge.steering; {"kind": "decoder_layer", "layer": L} through this module.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from bridge import decoder_backends, steering
from bridge.decoder_backends import (AudiocraftRows, ConditionalRows,  # noqa: F401  (re-exported)
                                     SiteError, decoder_of)
from bridge.directions import Directions, DirectionsError
from emosae_jax import directions_format as fmt


def decoder_layers(model) -> nn.ModuleList:
  """The decoder's transformer blocks (transformers or audiocraft)."""
  return decoder_of(model).layers


def decoder_width(model) -> int:
  return decoder_of(model).width


def check_site(model, site: dict, d_model: int,
               target: str = "the model") -> None:
  """Raises SiteError unless `model` has the decoder layer and width that
  `site` and `d_model` name (t5_output sites are checked by the caller)."""
  if site["kind"] != "decoder_layer":
    return
  decoder = decoder_of(model)
  n, layer, width = len(decoder.layers), site["layer"], decoder.width
  if not 0 <= layer < n:
    raise SiteError(f"directions were exported at decoder layer {layer} but "
                    f"{target} has {n} decoder layers (0..{n - 1})")
  if d_model != width:
    raise SiteError(f"directions have d_model={d_model} but {target}'s "
                    f"decoder is {width} wide; export directions from an SAE "
                    f"trained on this model's layer-{layer} states")


def conditional_rows(model):
  """A context yielding `model`'s row tracker (ConditionalRows for
  transformers, AudiocraftRows for audiocraft): `.start`, `.count(rows)`."""
  return decoder_of(model).rows()


def layer_output(output) -> torch.Tensor:
  """The hidden states [rows, T, d] of a decoder layer's output."""
  return output[0] if isinstance(output, tuple) else output


def replace_output(output, hidden: torch.Tensor):
  return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


class ResidualHook:
  """Adds per-prompt offsets [S, d] to a decoder layer's conditional rows."""
  emosae_hook = True

  def __init__(self, offsets: torch.Tensor,
               rows: ConditionalRows | AudiocraftRows,
               from_step: int = 0):
    self.offsets = offsets  # float64 sums: strength 0 is exactly 0
    self.rows = rows
    self.from_step = int(from_step)
    self.calls = 0
    self._cast = {}  # (n, dtype, device) -> [n, 1, d] offsets, made once

  def row_offsets(self, n: int, like: torch.Tensor) -> torch.Tensor:
    """[n, 1, d] in `like`'s dtype and device (cached: this runs per step)."""
    key = (n, like.dtype, like.device)
    if key not in self._cast:
      s = self.offsets.shape[0]
      if s not in (1, n):
        raise DirectionsError(f"{s} strengths for {n} prompts; pass one "
                              f"strength per prompt (or one for all)")
      self._cast[key] = self.offsets.expand(n, -1)[:, None, :].to(
          device=like.device, dtype=like.dtype)
    return self._cast[key]

  def __call__(self, module, args, output):
    hidden = layer_output(output)
    length, start = hidden.shape[1], self.rows.start
    if start + length <= self.from_step:
      return output
    n = self.rows.count(hidden.shape[0])
    if n == 0:  # audiocraft's two-step CFG: the unconditional call
      return output
    self.calls += 1
    offsets = self.row_offsets(n, hidden)
    if start < self.from_step:  # the call straddles from_step
      gate = torch.arange(start, start + length, device=hidden.device)
      offsets = offsets * (gate >= self.from_step).to(hidden.dtype)[:, None]
    # cat, not an in-place add: the unconditional rows stay the very values.
    steered = torch.cat([hidden[:n] + offsets, hidden[n:]])
    return replace_output(output, steered)


def _vectors(directions) -> torch.Tensor:
  return steering._steering_vectors(directions)  # pylint: disable=protected-access


@contextlib.contextmanager
def steer(model, directions: Directions | torch.Tensor, strengths,
          layer: int, from_step: int = 0) -> Iterator[ResidualHook]:
  """Steers decoder layer `layer` of `model` inside the `with` block.

  directions/strengths as in bridge.steering.steer: strengths is a scalar,
  [B] or [B, n]; row b steers prompt b (B = 1 steers every prompt). The
  offset goes to positions >= from_step of each generate call.
  """
  vectors = _vectors(directions)
  check_site(model, fmt.decoder_layer(layer), vectors.shape[1])
  matrix = steering.strength_matrix(strengths, vectors.shape[0])
  offsets = matrix.to(vectors.device) @ vectors
  block = decoder_layers(model)[layer]
  with conditional_rows(model) as rows:
    hook = ResidualHook(offsets, rows, from_step)
    handle = block.register_forward_hook(hook)
    try:
      yield hook
    finally:
      handle.remove()


def steer_at(model, site: dict | None, directions, strengths,
             from_step: int = 0):
  """The steering context for `site` (None: the T5 output)."""
  site = fmt.check_site(site or dict(fmt.T5_OUTPUT), "directions")
  if site["kind"] == "decoder_layer":
    return steer(model, directions, strengths, site["layer"], from_step)
  return steering.steer(model, directions, strengths)


def active_hooks(model) -> int:
  """This module's hooks still on `model` (for tests; transformers keeps
  hooks of its own on the layers once output_hidden_states was used)."""
  modules = decoder_of(model).hooked_modules()
  hooks = [h for m in modules if m is not None
           for d in (m._forward_hooks, m._forward_pre_hooks)  # pylint: disable=protected-access
           for h in d.values()]
  ours = lambda h: decoder_backends.tracker_hook(h) \
      or getattr(h, "emosae_hook", False)
  return sum(map(ours, hooks))
