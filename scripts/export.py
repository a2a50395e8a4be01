r"""Exports SAE feature directions (raw T5 units) for steering MusicGen.

  python scripts/export.py --workdir=runs/seed --out=runs/seed/directions
  python scripts/export.py --workdir=runs/sweep --member=3 \
      --emotions=happy,sad --top_per_emotion=2 --out=DIR
--member is a sweep's global member index (as in sweep.json); with the
sweep's top folder as --workdir the member's group folder is found, and the
analysis is read from there unless --analysis says otherwise.
  python scripts/export.py --workdir=runs/seed --features=12,873 --out=DIR
  python scripts/export.py --format=saelens --workdir=runs/sweep/g0 \
      --member=3 --out=DIR
Directions come from the analysis (run scripts/analyze.py first): per
emotion the consensus direction across seeds (where the analysis found
robust features), the best significant features (robust ones first) and
the class-mean baseline, robust directions first; or exactly --features.
Directions that are not features get negative ids (-1, -2, ...; pass them
to steer.py --features). Writes directions.safetensors and directions.json
(read by bridge/directions.py; kinds, robust and details per direction).
--format=saelens writes the whole SAE as a folder SAELens's
SAE.load_from_disk reads, in raw T5 units (see emosae_jax/saelens_format.py);
it needs no analysis.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

from emosae_jax import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run or sweep.",
                               required=True)
_OUT = flags.DEFINE_string("out", None, "Export folder.", required=True)
_ANALYSIS = flags.DEFINE_string("analysis", None, "Folder with analysis.json "
                                "(default: the workdir).")
_FEATURES = flags.DEFINE_list("features", None, "Feature ids to export.")
_MEMBER = flags.DEFINE_integer("member", None, "Global sweep member index "
                               "(default: the first analysed member).")
_EMOTIONS = flags.DEFINE_list("emotions", None, "Only these emotions.")
_TOP = flags.DEFINE_integer("top_per_emotion", 1,
                            "Significant features exported per emotion.")
_FORMAT = flags.DEFINE_enum("format", "directions", ["directions", "saelens"],
                            "directions: feature directions for steering; "
                            "saelens: the whole SAE in SAELens's format.")


def main(argv):
  del argv
  if _FORMAT.value == "saelens":
    from emosae_jax import saelens_format
    out = saelens_format.export_run(_WORKDIR.value, _OUT.value, _MEMBER.value)
    print(f"wrote a SAELens SAE folder to {out}")
    return
  from emosae_jax import export
  try:
    features = (None if _FEATURES.value is None
                else [int(f) for f in _FEATURES.value])
  except ValueError:
    raise ValueError(f"--features must be integers, got "
                     f"{','.join(_FEATURES.value)}") from None
  out = export.export_directions(
      _WORKDIR.value, _OUT.value, features=features, member=_MEMBER.value,
      emotions=_EMOTIONS.value, top_per_emotion=_TOP.value,
      analysis_dir=_ANALYSIS.value)
  meta = export.load_meta(out)
  rows = ", ".join(
      (f"feature {f}" if kind == "feature" else f"{kind} {f}")
      + f" ({e}{', robust' if robust else ''})"
      for f, e, kind, robust in zip(meta["feature_ids"], meta["emotions"],
                                    meta["kinds"], meta["robust"]))
  print(f"wrote {len(meta['feature_ids'])} directions to {out}: {rows}")


if __name__ == "__main__":
  cli.run(main)
