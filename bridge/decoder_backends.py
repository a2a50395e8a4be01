"""Where a MusicGen's decoder blocks are and which rows are conditional.

One small adapter per library; the residual hooks (bridge.residual_steering
ResidualHook, bridge.residual PooledCapture) are the same for both. An
adapter gives the decoder's blocks (`layers`), its width, and a row tracker
(`rows()`, a context manager) that the hooks ask, at every block call, for
`start` (the position of the call's first frame within its generate call)
and `count(rows)` (how many leading rows of the call are conditional; 0 for
a call that is all unconditional).

transformers (MusicgenForConditionalGeneration, 5.24): under classifier-free
guidance the decoder batch is [conditional B rows; unconditional B rows]
(modeling_musicgen.py: `torch.concatenate([last_hidden_state,
zeros_like(...)])`, `decoder_input_ids.repeat((2, 1))`). A pre-hook on the
text encoder counts B, so 2B rows mean "first B conditional" and B rows no
guidance. A pre-hook on the decoder reads each call's first position from
its KV cache: 5.24 runs the start token twice (a prefill whose cache is
dropped), and positions must not count it twice.

audiocraft (MusicGen / LMModel, 1.3.0, models/lm.py): `generate` runs the
condition provider, then one LM call per step. Default ("concatenated")
CFG: the provider sees [B conditions; B null conditions] once and
`_sample_next_token` feeds `torch.cat([sequence, sequence])`, so the first
B rows are conditional, as in transformers. Two-step CFG (two_step_cfg):
the provider runs twice (conditions, then null conditions) and each step
calls the LM twice with B rows, conditional first, the null pass with its
own streaming state. A forward hook on the provider keeps its outputs; a
pre-hook on the LM compares each call's condition_tensors with them by
identity (a null text and an empty prompt tokenize alike, so masks cannot
tell them apart) and counts positions per branch.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from bridge.directions import DirectionsError


class SiteError(DirectionsError):
  """Directions whose site the model lacks (no such layer, other width)."""


def unwrap(model):
  """A backend (it has .model) -> the MusicGen inside it."""
  inner = getattr(model, "model", None)
  if inner is not None and not isinstance(model, nn.Module):
    return inner
  return model


def _is_audiocraft(model) -> bool:
  return hasattr(model, "lm") or hasattr(model, "condition_provider")


def decoder_of(model):
  """The adapter for `model` (a backend, transformers or audiocraft)."""
  model = unwrap(model)
  return (AudiocraftDecoder if _is_audiocraft(model)
          else TransformersDecoder)(model)


@contextlib.contextmanager
def _hooks(handles) -> Iterator[None]:
  try:
    yield
  finally:
    for h in handles:
      h.remove()


# --- transformers --------------------------------------------------------


class ConditionalRows:
  """transformers: counts the prompts of each generate call (the text
  encoder's batch) and the first position of each decoder call (`start`)."""

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


class TransformersDecoder:
  name = "transformers"

  def __init__(self, model):
    self.model = model
    self.decoder = getattr(model, "decoder", model)  # MusicgenForCausalLM
    try:
      self.stack = self.decoder.model.decoder
      self.layers: nn.ModuleList = self.stack.layers
    except AttributeError:
      raise SiteError(f"cannot find MusicGen decoder layers in "
                      f"{type(model).__name__}") from None
    self.width = int(self.decoder.config.hidden_size)

  @contextlib.contextmanager
  def rows(self) -> Iterator[ConditionalRows]:
    rows = ConditionalRows()
    handles = [self.stack.register_forward_pre_hook(rows.decoder_call,
                                                    with_kwargs=True)]
    encoder = getattr(self.model, "text_encoder", None)
    if encoder is not None:
      handles.append(encoder.register_forward_pre_hook(rows,
                                                       with_kwargs=True))
    with _hooks(handles):
      yield rows

  def hooked_modules(self) -> list[nn.Module]:
    return [*self.layers, self.stack,
            getattr(self.model, "text_encoder", None)]


# --- audiocraft ----------------------------------------------------------


class AudiocraftRows:
  """audiocraft: which LM calls and rows are conditional, and positions."""

  def __init__(self):
    self.provided: list = []  # condition tensors of this generate call
    self._lm_ran = False  # an LM call since the provider last ran
    self.fed = {}  # branch -> positions fed so far in this generate call
    self.start, self.null, self.halves = 0, False, False

  def provider_output(self, module, args, output):
    if self._lm_ran:  # a new generate call
      self.provided, self.fed, self._lm_ran = [], {}, False
    self.provided.append(output)

  def lm_call(self, module, args, kwargs):
    self._lm_ran = True
    tensors = kwargs.get("condition_tensors")
    provided = [t for t in self.provided if t is tensors]
    # One provider output for the call: [conditions; null conditions].
    self.halves = bool(provided) and len(self.provided) == 1
    self.null = bool(provided) and tensors is self.provided[-1] \
        and len(self.provided) == 2
    sequence = kwargs.get("sequence", args[0] if args else None)
    if not getattr(module, "_is_streaming", False):
      self.start = 0  # a plain forward over a whole sequence
      return
    branch = "null" if self.null else "cond"
    self.start = self.fed.get(branch, 0)
    self.fed[branch] = self.start + int(sequence.shape[-1])

  def count(self, rows: int) -> int:
    if self.null:
      return 0
    if self.halves:
      if rows % 2:
        raise DirectionsError(f"an LM batch of {rows} rows cannot be "
                              f"[conditional; null] halves")
      return rows // 2
    return rows


class AudiocraftDecoder:
  name = "audiocraft"

  def __init__(self, model):
    self.lm = model.lm if hasattr(model, "lm") else model  # MusicGen -> LM
    try:
      self.layers: nn.ModuleList = self.lm.transformer.layers
      self.width = int(self.lm.dim)
    except AttributeError:
      raise SiteError(f"cannot find an audiocraft LM transformer in "
                      f"{type(model).__name__}") from None

  @contextlib.contextmanager
  def rows(self) -> Iterator[AudiocraftRows]:
    rows = AudiocraftRows()
    handles = [
        self.lm.condition_provider.register_forward_hook(
            rows.provider_output),
        self.lm.register_forward_pre_hook(rows.lm_call, with_kwargs=True)]
    with _hooks(handles):
      yield rows

  def hooked_modules(self) -> list[nn.Module]:
    return [*self.layers, self.lm, self.lm.condition_provider]


def tracker_hook(hook) -> bool:
  """Whether a registered hook is one of the row trackers' own."""
  owner = getattr(hook, "__self__", hook)
  return isinstance(owner, (ConditionalRows, AudiocraftRows))
