"""Exact, faster batching for audiocraft's MusicGen LM (extraction).

Padding. audiocraft 1.3.0 pads a batch of prompts to its longest T5
tokenization and zeroes the padded embeddings (modules/conditioners.py,
T5Conditioner: `embeds = embeds * mask`), but its cross-attention takes no
mask (modules/transformer.py, StreamingTransformerLayer.
_cross_attention_block passes neither key_padding_mask nor attn_mask). A
zero embedding is not an inert key: its key and value are the attention's
bias (musicgen's LM has bias_attn=False, so both are 0; other configs
start their biases at 0), so each padded position scores q.0 = 0 and adds
exp(0) to every head's softmax denominator. A prompt batched beside a
longer one attends less to its own tokens than alone; on the tiny test
model that moved its decoder states by as much as their own size.

`masked(lm)` replaces each cross-attention's forward, for the duration,
by the same computation with a key-padding mask from the condition
tensors' masks, so a batched prompt's states equal its states alone
(tests/test_bridge_residual_audiocraft.py: batched == one by one over
prompts of different token counts, for audiocraft's default torch-MHA
layout and for musicgen's memory-efficient, bias-free one). Rows whose
mask is all zero (CFG's null condition, an empty prompt) stay unmasked:
their keys are all equal, so any count of them gives the same average.
It also projects the condition's keys and values once per generate call:
audiocraft projects them again at every step (its own "todo" in
StreamingMultiheadAttention.forward), which at musicgen-small size with
~50-token prompts costs more than the rest of the decoder step and grows
with the batch.

`null_text_skipped(lm)` runs T5 on the rows that have text only. Under
classifier-free guidance audiocraft encodes [B prompts; B empty null
prompts] in one T5 call and then multiplies the null rows by their
all-zero mask; here those rows are zeros without the call (T5 masks its
own padding, so the prompt rows do not change).

`batched(lm)` is both. Used by bridge.residual's audiocraft extraction
only; steering and audio generation keep audiocraft's own computation.
Never imports jax.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.nn import functional as F


class _CrossMask:
  """LM pre-hook: the key mask [B, S] of the call's cross-attention input,
  in the fuser's order (its "cross" conditions, concatenated on time)."""

  def __init__(self, fuser):
    self.fuser, self.keep = fuser, None

  def __call__(self, module, args, kwargs):
    tensors = kwargs.get("condition_tensors") or {}
    masks = [mask for name, (_, mask) in tensors.items()
             if self.fuser.cond2fuse.get(name) == "cross"]
    if not masks:
      self.keep = None
      return
    keep = torch.cat(masks, dim=1).bool()
    self.keep = keep | ~keep.any(dim=1, keepdim=True)  # all-zero rows: all


class _CrossAttention:
  """A cross-attention module's forward while inside masked(): the library's
  computation (nn.MultiheadAttention's or its own custom one, the same
  math), with padded keys masked and the condition's keys and values
  projected once per generate call (audiocraft projects them again at
  every step: its own "todo" in StreamingMultiheadAttention.forward)."""

  def __init__(self, attn, mask: _CrossMask):
    self.attn, self.mask = attn, mask
    torch_mha = None if attn.custom else attn.mha
    owner = torch_mha or attn
    self.weight, self.bias = owner.in_proj_weight, owner.in_proj_bias
    self.out_proj = owner.out_proj
    self.source = self.keys_values = None  # the condition they came from

  def _project(self, source):
    """(keys, values) [B, heads, S, d_head] of the condition `source`."""
    if source is not self.source:
      dim = self.weight.shape[0] // 3
      biases = (None,) * 3 if self.bias is None else self.bias.split(dim)
      k = F.linear(source, self.weight[dim:2 * dim], biases[1])
      v = F.linear(source, self.weight[2 * dim:], biases[2])
      if self.attn.qk_layer_norm:
        k = self.attn.k_layer_norm(k)
      self.keys_values = tuple(self._heads(x) for x in (k, v))
      self.source = source  # kept alive, so identity cannot be reused
    return self.keys_values

  def _heads(self, x):
    x = x.unflatten(-1, (self.attn.num_heads, -1)).transpose(1, 2)
    return x.float() if self.attn.attention_as_float32 else x

  def __call__(self, query, key, value, *args, **kwargs):
    del args, kwargs  # need_weights=False: the layer's only call
    if value is not key:
      raise RuntimeError("masked cross-attention expects keys == values")
    keep = self.mask.keep
    if keep is not None and keep.shape != key.shape[:2]:
      raise RuntimeError(f"cross-attention keys {tuple(key.shape[:2])} do "
                         f"not match the condition mask {tuple(keep.shape)}")
    k, v = self._project(key)
    dim = self.weight.shape[0] // 3
    q = F.linear(query, self.weight[:dim],
                 None if self.bias is None else self.bias[:dim])
    if self.attn.qk_layer_norm:
      q = self.attn.q_layer_norm(q)
    attn_mask = None if keep is None or keep.all() \
        else keep[:, None, None, :].to(query.device)
    x = F.scaled_dot_product_attention(self._heads(q), k, v,
                                       attn_mask=attn_mask)
    x = x.to(query.dtype).transpose(1, 2).flatten(2)
    return self.out_proj(x), None


@contextlib.contextmanager
def masked(lm) -> Iterator[None]:
  """Inside: lm's cross-attention ignores padded condition positions (and
  projects the condition once per generate call)."""
  if lm.training:
    raise RuntimeError("masked cross-attention is for inference (eval) only")
  mask = _CrossMask(lm.fuser)
  modules = [layer.cross_attention for layer in lm.transformer.layers
             if getattr(layer, "cross_attention", None) is not None]
  handle = lm.register_forward_pre_hook(mask, with_kwargs=True)
  for attn in modules:
    attn.forward = _CrossAttention(attn, mask)
  try:
    yield
  finally:
    handle.remove()
    for attn in modules:
      del attn.forward  # back to the class's method


@contextlib.contextmanager
def null_text_skipped(lm) -> Iterator[None]:
  """Inside: T5 conditioners encode only rows whose mask is not all zero."""
  conditioners = [c for c in lm.condition_provider.conditioners.values()
                  if hasattr(c, "t5") and hasattr(c, "output_proj")]

  def forward_of(conditioner):
    library = conditioner.forward

    def forward(inputs):
      mask = inputs["attention_mask"]
      rows = mask.any(dim=1)
      if rows.all() or not rows.any():
        return library(inputs)
      embeds, _ = library({k: v[rows] for k, v in inputs.items()})
      out = embeds.new_zeros(mask.shape + embeds.shape[-1:])
      out[rows] = embeds
      return out, mask
    return forward

  for conditioner in conditioners:
    conditioner.forward = forward_of(conditioner)
  try:
    yield
  finally:
    for conditioner in conditioners:
      del conditioner.forward


@contextlib.contextmanager
def batched(lm) -> Iterator[None]:
  """masked(lm) and null_text_skipped(lm) together (extraction)."""
  with masked(lm), null_text_skipped(lm):
    yield
