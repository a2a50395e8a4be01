"""From a config to device-ready training data (shared by train and sweep)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from emosae_jax import data, synthetic


@dataclasses.dataclass
class PreparedData:
  embedding_set: data.EmbeddingSet
  train_index: np.ndarray
  val_index: np.ndarray
  normalizer: data.Normalizer
  x_train: jnp.ndarray  # float32 [n_train, d], normalised
  x_val: jnp.ndarray  # float32 [n_val, d], normalised (train if no val)
  true_features: np.ndarray | None  # synthetic only: [n_features, d]
  label_features: dict | None = None

  def info(self) -> dict:
    """What the workdir records about its data (data_info.json)."""
    es = self.embedding_set
    return {"path": es.meta.get("path", ""),
            "content_hash": es.meta.get("content_hash"),
            "n": len(es), "d": es.dim, "label_names": es.label_names,
            "encoder": es.meta.get("encoder"),
            # where in the model the embeddings were read (T5 output when
            # the set does not say): exports steer at the same site
            "site": es.meta.get("site"),
            "train_index": self.train_index.tolist(),
            "val_index": self.val_index.tolist(),
            "normalizer": self.normalizer.to_dict(),
            "synthetic": self.true_features is not None}


def load_config_data(config) -> tuple[data.EmbeddingSet, np.ndarray | None,
                                      dict | None]:
  """The embedding set a config asks for, validated against model.d_in."""
  dc = config.data
  if dc.synthetic:
    syn = synthetic.make_synthetic(
        n_examples=dc.n_examples, d=config.model.d_in,
        n_features=dc.n_features, avg_active=dc.avg_active, noise=dc.noise,
        n_labels=dc.n_labels, seed=dc.synthetic_seed)
    return syn.embedding_set, syn.features, syn.label_features
  if not dc.path:
    raise data.DataError("no data: pass --data=PATH (an embedding-set "
                         "folder) or --config.data.synthetic=True")
  es = data.load_embedding_set(dc.path, expected_dim=config.model.d_in)
  es.meta["path"] = str(dc.path)
  return es, None, None


def prepare(config, split=None) -> PreparedData:
  """`split`: (train rows, validation rows) of the set, to use instead of
  the config's split (benchmarks comparing with another trainer's split)."""
  es, true_features, label_features = load_config_data(config)
  if split is None:
    train_idx, val_idx = data.split_indices(
        len(es), es.groups, config.data.val_fraction, config.data.split_seed)
  else:
    train_idx, val_idx = (np.asarray(i, np.int64) for i in split)
  x = es.embeddings
  normalizer = (data.fit_normalizer(x[train_idx]) if config.data.normalize
                else data.Normalizer.identity(es.dim))
  if config.data.normalize and not config.data.get("scale_inputs", True):
    # Centred on the training mean, raw units: the same as a fixed pre-bias
    # equal to that mean (the reference system's), with b_dec frozen at 0.
    normalizer = data.Normalizer(normalizer.mean, 1.0)
  x_train = jnp.asarray(normalizer.apply(x[train_idx]))
  x_val = jnp.asarray(normalizer.apply(x[val_idx])) if len(val_idx) else (
      x_train)
  return PreparedData(es, train_idx, val_idx, normalizer, x_train, x_val,
                      true_features, label_features)
