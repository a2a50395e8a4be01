"""Shared helpers for the absl entry points in scripts/ (jax-free, so the
torch-side scripts use it too).

`run(main)` is the one way every script turns a user error into one line
(`error: ...` on stderr) and exit status 2 (errors.EXIT_CODE).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from absl import app, flags

from emosae_jax import errors


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


def user_error_line(e: BaseException) -> str | None:
  """The one line to print for an expected error, or None for a bug.

  Expected: errors.UserError (DataError, PromptError, TrainingError,
  PipelineError, DirectionsError, ...), any ValueError or
  FileNotFoundError (bad input from libraries), and a full disk.
  """
  if isinstance(e, (errors.UserError, ValueError, FileNotFoundError)):
    return errors.one_line(e)
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    where = f" writing {e.filename}" if e.filename else ""
    return f"disk full{where}; free space and rerun the same command"
  return None


def exit_with(line: str) -> None:
  print(f"error: {line}", file=sys.stderr)
  sys.exit(errors.EXIT_CODE)


CACHE_ENV = "EMOSAE_JAX_CACHE"  # a folder, or "0" to turn the cache off


def enable_compilation_cache() -> str | None:
  """JAX's persistent compilation cache, so a rerun of a script skips the
  compiles of the last one (~3 s per program at 768 -> 6144). Folder:
  $EMOSAE_JAX_CACHE, else ~/.cache/emosae/jax; EMOSAE_JAX_CACHE=0 turns it
  off. Set through the environment when jax is not imported yet (the torch
  side never imports it), else through jax.config."""
  where = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "emosae"
                                        / "jax"))
  if where == "0":
    return None
  # Every program, not only those over jax's default 1 s: the analysis and
  # evaluation programs compile in under a second each but there are many.
  settings = {"jax_compilation_cache_dir": where,
              "jax_persistent_cache_min_compile_time_secs": 0}
  if "jax" in sys.modules:
    import jax
    for name, value in settings.items():
      jax.config.update(name, value)
  else:
    for name, value in settings.items():
      os.environ.setdefault(name.upper(), str(value))
  return where


def run(main) -> None:
  """app.run(main), turning expected errors (see user_error_line) into one
  line and exit status 2; anything else is a bug and keeps its traceback."""

  def guarded(argv):
    enable_compilation_cache()
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      line = user_error_line(e)
      if line is None:
        raise
      exit_with(line)

  def parse_flags(argv):
    # absl would print config-file errors with the config's traceback
    # inside, or (for --config.typo=1) raise an AttributeError traceback;
    # print the one line that says what is wrong instead.
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      exit_with(f"{_last_line(str(e))} (see --helpfull)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      exit_with(f"bad flag or config override: {str(e).strip(chr(34))} "
                "(config fields are listed in the config file)")

  app.run(guarded, flags_parser=parse_flags)
