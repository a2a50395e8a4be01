"""Splitting an embedding set by its prompts' `split` field (numpy only).

The corpus (emosae_jax.prompts) marks each prompt "train", "val" (when
asked for) or "test"; val and test share no template, emotion word or
caption style with train, nor with each other. The pipeline trains SAEs on
the train rows, chooses settings on the val rows and reports on the test
rows (emosae_jax.analysis.validation), so each becomes an embedding set of
its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emosae_jax import data

SPLITS = {"train": "train", "heldout": "test"}  # set name -> split value
OPTIONAL_SPLITS = {"val": "val"}  # written only when some prompt has it
# Sidecar fields holding one entry per row: subset along with the rows.
_PER_ROW_META = ("emotion_words",)


def subset(es: data.EmbeddingSet, mask: np.ndarray,
           split: str) -> data.EmbeddingSet:
  """The rows where `mask` holds, keeping label names, texts, groups and
  provenance; the sidecar records which split it is and its parent set."""
  mask = np.asarray(mask, bool)
  if mask.shape != (len(es),):
    raise data.DataError(f"split mask has shape {mask.shape}, the set "
                         f"{len(es)} rows")
  out = es.subset(np.flatnonzero(mask))
  out.meta = dict(es.meta)
  for key in _PER_ROW_META:
    rows = es.meta.get(key)
    if isinstance(rows, list) and len(rows) == len(es):
      out.meta[key] = [rows[i] for i in np.flatnonzero(mask)]
  present = set(out.groups)  # the held-out templates of this part only
  if isinstance(es.meta.get("heldout_groups"), list):
    out.meta["heldout_groups"] = [g for g in es.meta["heldout_groups"]
                                  if g in present]
  out.meta.update(split=split, parent_hash=es.meta.get("content_hash"),
                  parent_rows=int(len(es)))
  out.meta["content_hash"] = data.content_hash(out.embeddings, out.labels,
                                               out.texts)
  return out


def split_by_prompts(es: data.EmbeddingSet, records: list[dict]
                     ) -> dict[str, data.EmbeddingSet] | str:
  """{"train": ..., "heldout": ...} (and "val" when some prompt is in the
  val split) by each prompt's `split`, or the reason
  there is no split (a string) when the prompts carry none (caption files)
  or one side would be empty. `records` are the prompts the set was
  embedded from, in the same order."""
  if len(records) != len(es):
    raise data.DataError(f"{len(records)} prompts for an embedding set of "
                         f"{len(es)} rows; extract the prompts again")
  if any(r.get("text") != t for r, t in zip(records, es.texts)):
    raise data.DataError("the prompts' texts differ from the embedding "
                         "set's; extract the prompts again")
  values = np.array([str(r.get("split", "")) for r in records])
  if not any("split" in r for r in records):
    return "the prompts have no `split` field (e.g. a caption file)"
  sets = {}
  for name, value in SPLITS.items():
    mask = values == value
    if not mask.any():
      return f"no prompt has split {value!r}"
    sets[name] = subset(es, mask, name)
  for name, value in OPTIONAL_SPLITS.items():
    mask = values == value
    if mask.any():
      sets[name] = subset(es, mask, name)
  return sets


def load_split_sets(workdir) -> dict[str, data.EmbeddingSet]:
  """The train, val and held-out (test) sets a pipeline workdir holds
  (embeddings_train/, embeddings_val/, embeddings_heldout/)."""
  return {name: data.load_embedding_set(Path(workdir) / f"embeddings_{name}")
          for name in ("train", "val", "heldout")}
