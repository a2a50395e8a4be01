"""Shared helpers for the absl entry points in scripts/."""

from __future__ import annotations

import sys

from absl import app


def format_summary(summary: dict) -> str:
  keys = [k for k, v in summary.items() if isinstance(v, (int, float))]
  parts = [f"{k}={summary[k]:.4g}" if isinstance(summary[k], float)
           else f"{k}={summary[k]}" for k in keys]
  if "recovery" in summary:
    r = summary["recovery"]
    parts.append(f"recovery true->learned={r['true_to_learned']:.3f} "
                 f"learned->true={r['learned_to_true']:.3f}")
  return " ".join(parts)


def run(main) -> None:
  """app.run(main), turning expected errors into one line and exit code 1.

  Expected errors are bad input (ValueError and its subclasses such as
  DataError, FileNotFoundError), TrainingError and PipelineError; anything
  else is a bug
  and keeps its traceback.
  """

  def guarded(argv):
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from emosae_jax.pipeline import PipelineError
    from emosae_jax.train import TrainingError
    try:
      return main(argv)
    except (ValueError, FileNotFoundError, TrainingError, PipelineError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  def parse_flags(argv):
    # Config-file overrides (--config.train.typo=1) fail inside flag parsing
    # with AttributeError/KeyError, which absl would show as a traceback.
    try:
      return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      message = str(e).strip("\"'")
      print(f"error: bad flag or config override: {message} (see --helpfull;"
            " config fields are listed in the config file)", file=sys.stderr)
      sys.exit(1)

  app.run(guarded, flags_parser=parse_flags)
