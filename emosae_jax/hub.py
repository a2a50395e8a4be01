"""A fast "is the Hugging Face hub reachable?" probe (stdlib only).

Shared by the pipeline and the torch side. Without a network, the hub
libraries retry for a long time before failing; one short connection
attempt decides instead, and when it fails HF_HUB_OFFLINE=1 is set so the
libraries only look in the cache.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_SECONDS = 2.0


def offline_requested() -> bool:
  return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
             for k in OFFLINE_VARS)


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
  """One TCP connection to the hub (HF_ENDPOINT or huggingface.co) within
  `timeout` seconds, name lookup included; False when offline is asked."""
  if offline_requested():
    return False
  endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
  port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
  result = []

  def connect():
    try:
      socket.create_connection((endpoint.hostname, port),
                               timeout=timeout).close()
      result.append(True)
    except OSError:
      pass

  # The name lookup has no timeout of its own; a daemon thread bounds it.
  probe = threading.Thread(target=connect, daemon=True)
  probe.start()
  probe.join(timeout)
  return bool(result)


def offline_unless_reachable(timeout: float = PROBE_SECONDS) -> bool:
  """True if the hub is not to be used: offline was asked, or the probe
  failed (then HF_HUB_OFFLINE=1 is set here and in huggingface_hub, so
  loading fails at once with a cache miss instead of retrying)."""
  if offline_requested():
    return True
  if hub_reachable(timeout):
    return False
  os.environ["HF_HUB_OFFLINE"] = "1"
  constants = sys.modules.get("huggingface_hub.constants")
  if constants is not None:
    constants.HF_HUB_OFFLINE = True
  return True


def offline_hint() -> str:
  """The sentence every "model not available" message ends with."""
  home = os.environ.get("HF_HOME", "~/.cache/huggingface")
  return (f"the hub is not used (unreachable, or HF_HUB_OFFLINE set), so the "
          f"weights must be in the Hugging Face cache: set HF_HOME to a cache "
          f"holding them (now {home}) or pass a local folder")
