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
      result[key] = value.lower() in ("1", "true", "yes", "on")
    else:
      result[key] = type(default)(value)
  return result
