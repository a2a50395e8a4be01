"""Parsing of config-file arguments like `configs/sae.py:arch=topk,runlocal`.

One helper for every config file (after big_vision's `configs/common.py`):
`key=value` pairs set known options, bare words switch on boolean presets,
and anything unknown is an error rather than a silent no-op.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a=1,b,c=x' against `defaults`; values take the default's type."""
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  for token in arg.split(","):
    token = token.strip()
    if not token:
      continue
    key, sep, value = token.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: "
                       f"{sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      result[key] = _boolean(key, value)
    else:
      try:
        result[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config argument {key}={value!r}: expected a "
                         f"{type(default).__name__}") from None
  return result


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _boolean(key: str, value: str) -> bool:
  """A misspelt boolean is an error, not a silent False."""
  if value.lower() in TRUE_WORDS:
    return True
  if value.lower() in FALSE_WORDS:
    return False
  raise ValueError(f"config argument {key}={value!r} is not a boolean; use "
                   f"one of {TRUE_WORDS + FALSE_WORDS}")
