"""Config-file arguments: unknown keys and misspelt values are errors."""

import pytest

from conftest import last_line, run_script
from emosae_jax.config_utils import parse_arg


def test_booleans_and_values():
  assert parse_arg("runlocal", runlocal=False).runlocal is True
  assert parse_arg("runlocal=off", runlocal=True).runlocal is False
  assert parse_arg("runlocal=TRUE", runlocal=False).runlocal is True
  with pytest.raises(ValueError, match="runlocal='ture' is not a boolean"):
    parse_arg("runlocal=ture", runlocal=False)
  with pytest.raises(ValueError, match="n='many': expected a int"):
    parse_arg("n=many", n=3)
  with pytest.raises(ValueError, match="unknown config argument 'arch2'"):
    parse_arg("arch2=topk", arch="relu_l1")


def test_misspelt_boolean_stops_the_script(tmp_path):
  """Before: `:runlocal=ture` silently trained the full 768 -> 6144 job."""
  r = run_script("train.py", "--config=configs/sae.py:runlocal=ture",
                 f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2, r.stderr[-2000:]
  assert "'ture' is not a boolean" in last_line(r.stderr)
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "w").exists()
