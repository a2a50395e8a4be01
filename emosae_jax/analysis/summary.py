"""analysis.json: counts beside their shuffled-label baselines, and the
records of the significant features."""

from __future__ import annotations

import dataclasses

import numpy as np

from emosae_jax import data
from emosae_jax.analysis.breadth import member_breadth, tier
from emosae_jax.analysis.kernels import _STAT_RANGE
from emosae_jax.analysis.loading import Members
from emosae_jax.analysis.settings import Settings
from emosae_jax.analysis.stability import (reappearing_share,
                                           same_config_groups, stability)
from emosae_jax.analysis.validation import (feature_validation,
                                            holding_by_corpus_auroc,
                                            member_validation)

FORMAT_VERSION = 1


def count_entry(name: str, description: str, real, null) -> dict:
  """A count of selective features with its shuffled-label baseline."""
  null = np.asarray(null, np.float64)
  return {"name": name, "description": description, "real": int(real),
          "shuffled": {"mean": float(null.mean()), "min": int(null.min()),
                       "max": int(null.max()),
                       "p95": float(np.percentile(null, 95)),
                       "n_shuffles": int(null.size)}}


def member_counts(arrays: dict, i: int, label_names: list[str],
                  settings: Settings) -> list[dict]:
  out = []
  for t_i, t in enumerate(settings.selectivity_thresholds):
    out.append(count_entry(
        f"selectivity>={t:g}",
        f"reference rule: live features with max rate / mean rate >= {t:g}",
        arrays["selective_counts"][i, t_i],
        arrays["null_selective_counts"][i, :, t_i]))
  out.append(count_entry(
      "significant",
      f"permutation test, BH q <= {settings.fdr:g}, support >= "
      f"{settings.min_support} and >= {settings.min_support_fraction:g} of "
      "its emotion's examples", arrays["significant_count"][i],
      arrays["null_significant_count"][i]))
  out.append(count_entry(
      "bh_significant",
      f"permutation test, BH q <= {settings.fdr:g}, support >= "
      f"{settings.min_support} (no support fraction: the rule before "
      "min_support_fraction)", arrays["bh_significant_count"][i],
      arrays["null_bh_significant_count"][i]))
  for e, name in enumerate(label_names):
    out.append(count_entry(
        f"significant/{name}", f"significant features whose emotion is "
        f"{name}", arrays["significant_by_emotion"][i, e],
        arrays["null_significant_by_emotion"][i, :, e]))
  return out


def _causal_of(arrays: dict, i: int, f: int) -> dict | None:
  where = np.flatnonzero(arrays["causal_features"][i] == f)
  if not where.size:
    return None
  c = int(where[0])
  pick = lambda k: arrays[k][i, c]
  return {"ablation_own": float(pick("ablation_own")),
          "ablation_other": float(pick("ablation_other")),
          "ablation_effect": float(pick("ablation_own")
                                   - pick("ablation_other")),
          "dose": pick("dose").tolist(),
          "dose_random": pick("dose_random").tolist(),
          "slope": float(pick("slope")),
          "slope_random": float(pick("slope_random"))}


def feature_records(arrays: dict, i: int, es_texts: list[str],
                    row_labels: np.ndarray, label_names: list[str],
                    stab: dict | None, validations=()) -> list[dict]:
  """Details of member i's significant features, largest effect (AUROC for
  their emotion) first; p breaks ties. (Sorting by p put hundreds of
  features at the permutation floor in arbitrary order.)"""
  feats = np.flatnonzero(arrays["significant"][i])
  order = np.lexsort((arrays["p_value"][i, feats],
                      -arrays["statistic"][i, feats]))
  records = []
  for f in feats[order]:
    f = int(f)
    e = int(arrays["emotion"][i, f])
    top = [{"text": es_texts[r], "activation": float(v),
            "emotion": label_names[row_labels[r]]}
           for r, v in zip(arrays["top_index"][i, f],
                           arrays["top_value"][i, f]) if v > 0]
    st = (stab or {}).get(f, {})
    records.append({
        "feature": f, "emotion": label_names[e],
        "selectivity": float(arrays["selectivity"][i, f]),
        "auroc": float(arrays["auroc"][i, e, f]),
        "p_value": float(arrays["p_value"][i, f]),
        "q_value": float(arrays["q_value"][i, f]),
        "support": int(arrays["support"][i, f]),
        "tier": tier(bool(arrays["broad"][i, f])),
        "rate": {n: float(arrays["rate"][i, k, f])
                 for k, n in enumerate(label_names)},
        "mean_activation": {n: float(arrays["mean_activation"][i, k, f])
                            for k, n in enumerate(label_names)},
        "typical_activation": float(arrays["typical_activation"][i, f]),
        "reappears_in": st.get("reappears_in"),
        "n_other_seeds": st.get("n_other_seeds", 0),
        "stability": st.get("stability"),
        "stability_significant": st.get("stability_significant"),
        "matches": st.get("matches", []),
        "causal": _causal_of(arrays, i, f),
        "top_prompts": top,
        "validation": [feature_validation(v, vset, i, f)
                       for v, _, vset in validations],
    })
  return records


@dataclasses.dataclass
class Result:
  """An analysis: the JSON summary plus the full per-feature arrays."""

  summary: dict
  arrays: dict[str, np.ndarray]  # leading member axis [M, ...]
  decoders: np.ndarray  # [M, m, d] normalised units


def summarize(members: Members, es: data.EmbeddingSet, arrays: dict,
              extras: dict, settings: Settings, labelled: np.ndarray,
              validations=(), stab: list[dict] | None = None) -> dict:
  """Builds analysis.json from the device arrays. validations: (arrays,
  info, ValidationSet) of each validation set (see validation.validate)."""
  names = es.label_names
  row_labels = es.labels[labelled]
  texts = [es.texts[r] for r in labelled]
  if stab is None:
    stab = stability(members.params["W_dec"], arrays["significant"],
                     arrays["emotion"], settings.stability_threshold,
                     members.overrides)
  same_config = {i: g for g in same_config_groups(members.overrides)
                 for i in g}
  member_out = []
  for i, index in enumerate(members.indices):
    feats = feature_records(arrays, i, texts, row_labels, names, stab[i],
                            validations)
    member_out.append({
        "index": index, "seed": members.seeds[i],
        "overrides": members.overrides[i],
        "n_features": int(members.sae.d_sae),
        "n_live": int(np.sum(arrays["fires"][i] > 0)),
        "n_tested": int(np.sum(arrays["tested"][i])),
        "counts": member_counts(arrays, i, names, settings),
        "n_other_seeds": len(same_config[i]) - 1,
        "fraction_reappearing": reappearing_share(stab[i]),
        "breadth": member_breadth(feats, stab[i]),
        "validation": [member_validation(v, info, i, len(feats)) | {
            "by_corpus_auroc": holding_by_corpus_auroc(feats, j)}
                       for j, (v, info, _) in enumerate(validations)],
        "features": feats,
    })
  counts = np.bincount(row_labels, minlength=len(names))
  settings_dict = dataclasses.asdict(settings)
  return {
      "format_version": FORMAT_VERSION,
      "source": {"workdir": str(members.workdir.resolve()),
                 "is_sweep": members.is_sweep,
                 "arch": members.sae.arch, "d_in": members.sae.d_in,
                 "d_sae": members.sae.d_sae,
                 "trained_data_hash": members.info.get("content_hash"),
                 "data_path": es.meta.get("path", ""),
                 "data_hash": es.meta.get("content_hash"),
                 "same_data_as_training": es.meta.get("content_hash")
                 == members.info.get("content_hash"),
                 "encoder": es.meta.get("encoder")
                 or members.info.get("encoder")},
      "settings": settings_dict,
      "data": {"n_labelled": int(len(labelled)),
               "n_unlabelled": int(len(es) - len(labelled)),
               "label_names": names,
               "examples_per_emotion": dict(zip(names, counts.tolist()))},
      "probe": extras["probe"],
      "validation": [info for _, info, _ in validations],
      "permutation": extras["permutation"],
      "histograms": {
          "selectivity_edges": np.linspace(1, len(names),
                                           settings.hist_bins + 1).tolist(),
          "statistic_edges": np.linspace(*_STAT_RANGE,
                                         settings.hist_bins + 1).tolist(),
          "members": [{k: arrays[k][i].tolist() for k in (
              "selectivity_hist", "null_selectivity_hist", "statistic_hist",
              "null_statistic_hist")} for i in range(len(members.indices))]},
      "members": member_out,
  }


def class_mean_verdicts(summary: dict) -> list[dict]:
  """Per configuration, emotion and validation set (the corpus when there
  is none): does the best SAE-derived direction (consensus or best single
  feature) reach the class-mean direction's AUROC, and by how much. Each
  verdict's "text" says it in one sentence."""
  dirs = summary.get("directions") or {"groups": []}
  sets = [v["path"] for v in summary.get("validation") or []]
  out = []
  for group in dirs["groups"]:
    config = ", ".join(f"{k}={v}" for k, v in group["overrides"].items())
    where = f" ({config})" if config else ""
    for name, r in group["emotions"].items():
      if r is None:
        out.append({"configuration": group["overrides"], "emotion": name,
                    "reaches": None, "text": f"{name}{where}: no significant "
                    "feature, so no SAE-derived direction to compare"})
        continue
      c = r["comparison"]
      scored = [(j, p, "auroc_validation") for j, p in enumerate(sets)] or [
          (None, "the corpus", "auroc_corpus")]
      for j, place, key in scored:
        auroc = lambda kind: (c[kind][key] if j is None else
                              c[kind][key][j]) if kind in c else None
        sae = [(auroc(k), k) for k in ("consensus", "best_feature")
               if _finite(auroc(k))]
        base = auroc("class_mean")
        if not sae or not _finite(base):
          continue
        best, kind = max(sae)
        gap = best - base
        verdict = ("reaches" if gap >= 0 else "does NOT reach")
        out.append({
            "configuration": group["overrides"], "emotion": name,
            "set": place, "best_kind": kind, "best_auroc": best,
            "class_mean_auroc": base, "gap": gap, "reaches": gap >= 0,
            "text": f"{name}{where} on {place}: the best SAE-derived "
                    f"direction ({kind.replace('_', ' ')}, AUROC {best:.3f}) "
                    f"{verdict} the class-mean direction's AUROC {base:.3f} "
                    f"({'+' if gap >= 0 else '-'}{abs(gap):.3f})"})
  return out


def _finite(x) -> bool:
  return x is not None and bool(np.isfinite(x))
