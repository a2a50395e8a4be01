"""Makes T5 padding inert in audiocraft's cross-attention, for batching.

audiocraft 1.3.0 pads a batch of prompts to its longest T5 tokenization
and zeroes the padded embeddings (modules/conditioners.py, T5Conditioner:
`embeds = embeds * mask`), but its cross-attention takes no mask
(modules/transformer.py, StreamingTransformerLayer._cross_attention_block
calls the attention without key_padding_mask or attn_mask). A zero
embedding is not an inert key: its key and value are the attention's bias
(musicgen's LM has bias_attn=False, so both are 0; other configs start
their biases at 0 too), so each padded position scores q.0 = 0 and adds
exp(0) to every head's softmax denominator. A prompt batched beside a
longer one therefore attends less to its own tokens than alone; on the tiny
test model that moved its decoder states by as much as their own size.

`masked(lm)` gives each cross-attention module, for the duration, a
forward that is the library's own computation plus a key-padding mask from
the condition tensors' masks, so padded positions get zero weight and a
batched prompt's states equal its states alone (tests/
test_bridge_residual_audiocraft.py: batched == one by one over prompts of
different token counts, for the library's torch-MHA layout and for
musicgen's memory-efficient, bias-free one). Rows whose mask is all zero
(CFG's null condition, an empty prompt) stay unmasked: their keys are all
equal, so any count of them gives the same uniform average.

`null_text_skipped(lm)` runs the T5 encoder on the rows that have text
only. Under classifier-free guidance audiocraft encodes [B prompts; B empty
null prompts] in one T5 call and then multiplies the null rows by their
all-zero mask, so half of that call (a quarter of the compute of a
16-frame extraction with musicgen-small) makes zeros; here those rows are
zeros without the call. The result is the same (zeros, and the prompt
rows of T5 do not see other rows: T5 masks its own padding).

`batched(lm)` is both. Used by bridge.residual's audiocraft extraction
only; steering and audio generation keep audiocraft's own behaviour. Never
imports jax.
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


def _attend(attn, query, key, keep):
  """StreamingMultiheadAttention's cross-attention with a key mask."""
  dtype = query.dtype
  if not attn.custom:  # torch's nn.MultiheadAttention
    if attn.attention_as_float32:
      query, key = query.float(), key.float()
    x, _ = attn.mha(query, key, key, key_padding_mask=~keep,
                    need_weights=False)
    return x.to(dtype)
  dim = attn.in_proj_weight.shape[0] // 3
  weights = attn.in_proj_weight.split(dim)
  biases = (None,) * 3 if attn.in_proj_bias is None \
      else attn.in_proj_bias.split(dim)
  q, k, v = (F.linear(x, w, b) for x, w, b in
             zip((query, key, key), weights, biases))
  if attn.qk_layer_norm:
    q, k = attn.q_layer_norm(q), attn.k_layer_norm(k)
  heads = attn.num_heads
  q, k, v = (x.unflatten(-1, (heads, -1)).transpose(1, 2) for x in (q, k, v))
  if attn.attention_as_float32:
    q, k, v = q.float(), k.float(), v.float()
  x = F.scaled_dot_product_attention(q, k, v,
                                     attn_mask=keep[:, None, None, :])
  x = x.to(dtype).transpose(1, 2).flatten(2)
  return attn.out_proj(x)


@contextlib.contextmanager
def masked(lm) -> Iterator[None]:
  """Inside: lm's cross-attention ignores padded condition positions."""
  if lm.training:
    raise RuntimeError("masked cross-attention is for inference (eval) only")
  mask = _CrossMask(lm.fuser)
  modules = [layer.cross_attention for layer in lm.transformer.layers
             if getattr(layer, "cross_attention", None) is not None]

  def forward_of(attn):
    library = attn.forward

    def forward(query, key, value, *args, **kwargs):
      if mask.keep is None or mask.keep.all() or value is not key:
        return library(query, key, value, *args, **kwargs)
      if mask.keep.shape != key.shape[:2]:
        raise RuntimeError(f"cross-attention keys {tuple(key.shape[:2])} do "
                           f"not match the condition mask "
                           f"{tuple(mask.keep.shape)}")
      return _attend(attn, query, key, mask.keep.to(key.device)), None
    return forward

  handle = lm.register_forward_pre_hook(mask, with_kwargs=True)
  for attn in modules:
    attn.forward = forward_of(attn)
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
