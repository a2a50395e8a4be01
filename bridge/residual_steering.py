"""Steering in MusicGen's decoder residual stream, and the hooks' plumbing.

A forward hook on decoder layer L adds strength * typical_activation *
direction to the layer's output (the residual stream after block L) at
every position MusicGen feeds through the decoder (option: from position
`from_step` on), on the conditional rows only.

Which rows are conditional: transformers' MusicGen runs its T5 on the B
prompts, then stacks [conditional B rows; unconditional B rows] along the
decoder batch under classifier-free guidance (modeling_musicgen.py:
`torch.concatenate([last_hidden_state, zeros_like(...)])` for the encoder
states, `decoder_input_ids.repeat((2, 1))` for the decoder). A pre-hook on
the text encoder counts B, so a decoder batch of 2B means "first B rows
conditional" and a batch of B means no guidance (every row conditional).
A pre-hook on the decoder reads each call's first position from its KV
cache: transformers 5.24's MusicGen runs the start token twice (a prefill
whose cache is dropped, then again without a cache), and positions must
not count it twice.

Sites (emosae_jax.directions_format): {"kind": "t5_output"} steers through
bridge.steering; {"kind": "decoder_layer", "layer": L} through this module.
Only transformers' MusicgenForConditionalGeneration is supported here;
audiocraft's LM is refused with one line (not built yet).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from bridge import steering
from bridge.directions import Directions, DirectionsError
from emosae_jax import directions_format as fmt


class SiteError(DirectionsError):
  """Directions whose site the model lacks (no such layer, other width)."""


def _unwrap(model):
  """A backend (it has .model) -> the MusicGen module inside it."""
  inner = getattr(model, "model", None)
  if inner is not None and not isinstance(model, nn.Module):
    return inner
  return model


def decoder_layers(model) -> nn.ModuleList:
  """The decoder's transformer blocks of a transformers MusicGen."""
  model = _unwrap(model)
  if hasattr(model, "lm") or hasattr(model, "condition_provider"):
    raise SiteError("residual-stream hooks support transformers' MusicGen "
                    "only; audiocraft's LM is not supported yet (use "
                    "--backend=transformers)")
  decoder = getattr(model, "decoder", model)  # MusicgenForCausalLM
  try:
    return decoder.model.decoder.layers
  except AttributeError:
    raise SiteError(f"cannot find MusicGen decoder layers in "
                    f"{type(model).__name__}") from None


def decoder_width(model) -> int:
  model = _unwrap(model)
  return int(getattr(model, "decoder", model).config.hidden_size)


def check_site(model, site: dict, d_model: int,
               target: str = "the model") -> None:
  """Raises SiteError unless `model` has the decoder layer and width that
  `site` and `d_model` name (t5_output sites are checked by the caller)."""
  if site["kind"] != "decoder_layer":
    return
  n, layer, width = len(decoder_layers(model)), site["layer"], \
      decoder_width(model)
  if not 0 <= layer < n:
    raise SiteError(f"directions were exported at decoder layer {layer} but "
                    f"{target} has {n} decoder layers (0..{n - 1})")
  if d_model != width:
    raise SiteError(f"directions have d_model={d_model} but {target}'s "
                    f"decoder is {width} wide; export directions from an SAE "
                    f"trained on this model's layer-{layer} states")


class ConditionalRows:
  """Counts the prompts of each generate call (the text encoder's batch)
  and the first position of each decoder call (`start`)."""

  def __init__(self):
    self.prompts: int | None = None
    self.start = 0

  def __call__(self, module, args, kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
      ids = kwargs.get("inputs_embeds")
    self.prompts = None if ids is None else int(ids.shape[0])

  def decoder_call(self, module, args, kwargs):
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    self.start = int(cache.get_seq_length()) if cache is not None else 0

  def count(self, rows: int) -> int:
    """How many leading rows of a decoder batch of `rows` are conditional."""
    if self.prompts is None or rows == self.prompts:
      return rows
    if rows == 2 * self.prompts:
      return self.prompts
    raise DirectionsError(f"decoder batch of {rows} rows does not match "
                          f"{self.prompts} prompts (with or without CFG)")


@contextlib.contextmanager
def conditional_rows(model) -> Iterator[ConditionalRows]:
  """A ConditionalRows fed by a pre-hook on `model`'s text encoder."""
  rows = ConditionalRows()
  encoder = getattr(_unwrap(model), "text_encoder", None)
  blocks = decoder_layers(model)
  decoder = getattr(_unwrap(model), "decoder", _unwrap(model)).model.decoder
  assert decoder.layers is blocks
  handles = [decoder.register_forward_pre_hook(rows.decoder_call,
                                               with_kwargs=True)]
  if encoder is not None:
    handles.append(encoder.register_forward_pre_hook(rows, with_kwargs=True))
  try:
    yield rows
  finally:
    for h in handles:
      h.remove()


def layer_output(output) -> torch.Tensor:
  """The hidden states [rows, T, d] of a decoder layer's output."""
  return output[0] if isinstance(output, tuple) else output


def replace_output(output, hidden: torch.Tensor):
  return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


class ResidualHook:
  """Adds per-prompt offsets [S, d] to a decoder layer's conditional rows."""
  emosae_hook = True

  def __init__(self, offsets: torch.Tensor, rows: ConditionalRows,
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
    self.calls += 1
    n = self.rows.count(hidden.shape[0])
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
  model = _unwrap(model)
  modules = list(decoder_layers(model)) + [
      getattr(model, "decoder", model).model.decoder,
      getattr(model, "text_encoder", None)]
  hooks = [h for m in modules if m is not None
           for d in (m._forward_hooks, m._forward_pre_hooks)  # pylint: disable=protected-access
           for h in d.values()]
  ours = lambda h: isinstance(getattr(h, "__self__", h), ConditionalRows) \
      or getattr(h, "emosae_hook", False)
  return sum(map(ours, hooks))
