r"""How far a probe trained on the train split gets on the held-out split,
and what bounds it: the evidence behind split_probe and the corpus notes.

  python scripts/pipeline.py --config=configs/pipeline.py:offline \
      --workdir=runs/demo --stages=prompts,extract,split
  python benchmarks/probe_bounds.py --workdir=runs/demo
  python benchmarks/probe_bounds.py --workdir=runs/demo --encode \
      --train_n=9000,27000 --test

Everything is chosen on the val split. Prints, on val: the val-chosen probe
(split_probe) with its recall per emotion, cue, style and intensity; other
probes (logistic regression over C, nearest class mean on unit vectors,
shrinkage LDA, content directions or top within-emotion directions
projected out first); an oracle that removes content exactly (subtracts
each carrier's mean: the corpus's minimal pairs give every emotion the same
carrier, so this uses the label layout and is a bound, not a probe).
--encode (needs the text encoder of the embeddings; imports torch) adds the
isolated-cue bound (a probe trained on the training words, phrases and
scenes alone, "a {cue} piece of music", labelling the val ones) and, with
--train_n, the val-chosen probe trained on the train split of a bigger
corpus (same seed, same split pools; its val and test wording is the
workdir's). --test scores the val-chosen choices once on the test split.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import balanced_accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emosae_jax import data, probe, prompts, split_probe  # noqa: E402
from emosae_jax.prompts import lexicon  # noqa: E402

FRAME = "a {} piece of music"


def _labelled(es):
  keep = np.flatnonzero(es.labels >= 0)
  return es.embeddings[keep].astype(np.float64), es.labels[keep], keep


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall_by(y, pred, tags):
  tags = np.asarray(tags, dtype=object).astype(str)
  return {t: f"{np.mean(pred[tags == t] == y[tags == t]):.2f} "
             f"(n={np.sum(tags == t)})" for t in sorted(set(tags))}


def diagnose(sets, records):
  r = split_probe.val_chosen_probe(sets["train"], sets["val"],
                                   sets["heldout"])
  val = r["val"]
  print(f"val-chosen probe: C={r['C']}, {r['content_directions']} content "
        f"directions; val balanced accuracy {val['balanced_accuracy']:.3f} "
        f"(shuffled labels {val['shuffled_label_balanced_accuracy']:.3f})")
  print("  recall per emotion:", {k: round(v, 2) for k, v in
                                  val["per_emotion"].items()})
  print("  confusion (rows true):\n", np.asarray(val["confusion"]))
  x, y, keep = _labelled(sets["val"])
  xt, yt, _ = _labelled(sets["train"])
  k = r["content_directions"]
  dirs = split_probe.content_directions(xt, np.asarray(
      sets["train"].groups)[sets["train"].labels >= 0], k)
  pred = probe._probe(r["C"], 0).fit(
      split_probe.remove_directions(xt, dirs), yt).predict(
      split_probe.remove_directions(x, dirs))
  recs = [records[sets["val"].texts[i]] for i in keep]
  for field in ("cue", "style", "intensity"):
    print(f"  accuracy by {field}:", _recall_by(y, pred, [
        str(q.get(field)) for q in recs]))
  return r


def other_probes(sets):
  xt, yt, _ = _labelled(sets["train"])
  xv, yv, _ = _labelled(sets["val"])
  mu = xt.mean(0)
  within = xt - np.stack([xt[yt == c].mean(0) for c in range(yt.max() + 1)]
                         )[yt]
  _, _, within_pcs = np.linalg.svd(within - within.mean(0),
                                   full_matrices=False)
  groups = np.asarray(sets["train"].groups)[sets["train"].labels >= 0]
  for name, dirs in [("none", np.zeros((0, xt.shape[1])))] + [
      (f"{k} content", split_probe.content_directions(xt, groups, k))
      for k in (8, 16)] + [(f"{k} within-emotion", within_pcs[:k])
                           for k in (8, 32)]:
    a = split_probe.remove_directions(xt - mu, dirs)
    b = split_probe.remove_directions(xv - mu, dirs)
    row = {f"logreg C={C}": balanced_accuracy_score(
        yv, probe._probe(C, 0).fit(a, yt).predict(b))
        for C in (0.01, 0.1, 1.0)}
    row["shrinkage LDA"] = balanced_accuracy_score(yv, LinearDiscriminantAnalysis(
        solver="lsqr", shrinkage="auto").fit(a, yt).predict(b))
    means = _unit(np.stack([_unit(a[yt == c]).mean(0)
                            for c in range(yt.max() + 1)]))
    row["nearest class mean"] = balanced_accuracy_score(
        yv, np.argmax(_unit(b) @ means.T, 1))
    print(f"  removed: {name:18s}",
          {k: round(v, 3) for k, v in row.items()})


def carrier_oracle(sets, records, test):
  """Bound: subtract each carrier's mean (template + slots), which the
  minimal pairs make the mean over the emotions of one carrier."""
  def resid(es):
    x, y, keep = _labelled(es)
    keys = np.array([json.dumps([records[es.texts[i]]["template"],
                                 records[es.texts[i]]["slots"]],
                                sort_keys=True) for i in keep])
    for k in np.unique(keys):
      x[keys == k] -= x[keys == k].mean(0)
    return x, y
  xt, yt = resid(sets["train"])
  for part in ("val",) + (("heldout",) if test else ()):
    x, y = resid(sets[part])
    best = {C: balanced_accuracy_score(y, probe._probe(C, 0).fit(
        xt, yt).predict(x)) for C in (0.01, 0.1, 1.0)}
    print(f"carrier-mean oracle on {part}:",
          {k: round(v, 3) for k, v in best.items()})


def _embed(encoder, texts):
  from bridge import t5
  return t5.encode(encoder, list(texts), 64, progress=False)[
      "embeddings"].astype(np.float64)


def isolated_cues(encoder, names, seed, test):
  """Bound: train on the training cues alone, label the val (test) ones."""
  corpus = lexicon.load_corpus()
  held = lexicon.make_split(corpus, seed, 0.2)
  val = lexicon.make_val_split(corpus, held, seed, 0.2)

  def part(item, pool):
    return ("heldout" if item in getattr(held, pool) else "val"
            if item in getattr(val, pool) else "train")
  cues = {"train": [], "val": [], "heldout": []}
  for e in names:
    for f in corpus.families[e]:
      cues[part(f, "families")] += [(w, names.index(e)) for w in f.forms]
    for pool in ("phrases", "implied"):
      for p in getattr(corpus, pool)[e]:
        cues[part(p, pool)].append((p, names.index(e)))
  xt = _embed(encoder, [FRAME.format(w) for w, _ in cues["train"]])
  yt = np.array([c for _, c in cues["train"]])
  for name in ("val",) + (("heldout",) if test else ()):
    x = _embed(encoder, [FRAME.format(w) for w, _ in cues[name]])
    y = np.array([c for _, c in cues[name]])
    print(f"isolated-cue bound on {name} ({len(y)} cues):", round(
        balanced_accuracy_score(y, probe._probe(1.0, 0).fit(xt, yt).predict(
            x)), 3))


def bigger_corpus(encoder, sets, n, seed, test):
  recs = [r for r in prompts.generate_prompts(n, seed=seed, val_fraction=0.2)
          if r["split"] == "train" and r["emotion"]]
  names = sets["train"].label_names
  train = data.make_embedding_set(
      _embed(encoder, [r["text"] for r in recs]).astype(np.float32),
      [names.index(r["emotion"]) for r in recs], names,
      [r["text"] for r in recs], [r["template"] for r in recs])
  r = split_probe.val_chosen_probe(train, sets["val"], sets["heldout"],
                                   Cs=(0.003, 0.01, 0.03, 0.1),
                                   content_ks=(0, 16))
  line = (f"corpus n={n}: {len(recs)} train prompts, C={r['C']}, "
          f"{r['content_directions']} content directions; val "
          f"{r['val']['balanced_accuracy']:.3f} (shuffled "
          f"{r['val']['shuffled_label_balanced_accuracy']:.3f})")
  if test:
    line += (f"; test {r['test']['balanced_accuracy']:.3f} (shuffled "
             f"{r['test']['shuffled_label_balanced_accuracy']:.3f}, by style "
             + str({k: round(v["balanced_accuracy"], 3)
                    for k, v in r["test"]["by"].items()}) + ")")
  print(line)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--encode", action="store_true")
  ap.add_argument("--train_n", default="")
  ap.add_argument("--seed", type=int, default=0, help="the corpus seed")
  ap.add_argument("--test", action="store_true")
  a = ap.parse_args()
  w = Path(a.workdir)
  sets = {n: data.load_embedding_set(w / f"embeddings_{n}")
          for n in ("train", "val", "heldout")}
  records = {r["text"]: r for r in prompts.read_prompts(w / "prompts.jsonl")}
  r = diagnose(sets, records)
  if a.test:
    t = r["test"]
    print(f"  test: {t['balanced_accuracy']:.3f} (shuffled "
          f"{t['shuffled_label_balanced_accuracy']:.3f}), by style",
          {k: round(v["balanced_accuracy"], 3) for k, v in t["by"].items()})
  print("other probes on val:")
  other_probes(sets)
  carrier_oracle(sets, records, a.test)
  if a.encode:
    from bridge import t5
    encoder = t5.load_encoder(sets["train"].meta["encoder"])
    isolated_cues(encoder, sets["train"].label_names, a.seed, a.test)
    for n in [int(v) for v in a.train_n.split(",") if v.strip()]:
      bigger_corpus(encoder, sets, n, a.seed, a.test)


if __name__ == "__main__":
  main()
