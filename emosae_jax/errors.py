"""The user-error base class (stdlib only, so the torch side uses it too).

A `UserError` is bad input or a state the user can fix: its message is one
line saying what is wrong and how to fix it, and `emosae_jax.cli.run`
prints it as `error: <message>` and exits with status 2. Anything else is a
bug and keeps its traceback. Every module's own error (DataError,
PromptError, TrainingError, PipelineError, DirectionsError, ...) subclasses
it; the ones that were ValueErrors stay ValueErrors too, so existing
`except ValueError` keeps working.
"""

from __future__ import annotations

EXIT_CODE = 2  # what every script exits with on a UserError


class UserError(Exception):
  """Something the user can fix; the message is one line."""


class TrainingError(UserError, RuntimeError):
  """Training cannot go on (e.g. the loss became NaN); the message says why."""


def one_line(error: BaseException) -> str:
  """The error's message on one line (whitespace runs collapsed)."""
  return " ".join(str(error).split()) or type(error).__name__
