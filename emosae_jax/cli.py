"""Shared helpers for the absl entry points in scripts/."""

from __future__ import annotations

import sys

from absl import app, flags


def format_summary(summary: dict) -> str:
  keys = [k for k, v in summary.items() if isinstance(v, (int, float))]
  parts = [f"{k}={summary[k]:.4g}" if isinstance(summary[k], float)
           else f"{k}={summary[k]}" for k in keys]
  if "recovery" in summary:
    r = summary["recovery"]
    parts.append(f"recovery true->learned={r['true_to_learned']:.3f} "
                 f"learned->true={r['learned_to_true']:.3f}")
  return " ".join(parts)


def _last_line(text: str) -> str:
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else text


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
    from emosae_jax.train_core import TrainingError
    try:
      return main(argv)
    except (ValueError, FileNotFoundError, TrainingError, PipelineError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  def parse_flags(argv):
    # absl would print config-file errors with the config's traceback
    # inside, or (for --config.typo=1) raise an AttributeError traceback;
    # print the one line that says what is wrong instead.
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"error: {_last_line(str(e))} (see --helpfull)", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      print(f"error: bad flag or config override: {str(e).strip(chr(34))}"
            " (config fields are listed in the config file)",
            file=sys.stderr)
    sys.exit(1)

  app.run(guarded, flags_parser=parse_flags)
