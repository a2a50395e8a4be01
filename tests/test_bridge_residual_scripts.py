"""scripts/extract_residual.py and scripts/steer.py at a decoder-layer site,
end to end on a tiny local MusicGen folder."""

import json

import numpy as np
import pytest

from bridge import tiny
from bridge.directions import save_directions
from emosae_jax import data, prompts
from conftest import last_line, run_script

_META = dict(feature_ids=[3], emotions=["happy"], selectivity=[3.0],
             p_values=[0.01], typical_activation=[2.0])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  root = tmp_path_factory.mktemp("residual_scripts")
  tiny.save_tiny_musicgen(root / "musicgen", d_model=32)
  records = prompts.generate_prompts(9, seed=0)  # plus unlabelled ones
  prompts.write_prompts(records, root / "prompts.jsonl")
  (root / "neutral.txt").write_text("a piano piece\n")
  vectors = np.random.default_rng(0).normal(size=(1, 32))
  save_directions(root / "layer9", vectors, dict(_META, site={
      "kind": "decoder_layer", "layer": 9}))
  return root


def test_extract_residual_script_writes_a_set_per_layer(work):
  out = work / "res"
  args = [f"--prompts={work / 'prompts.jsonl'}", f"--model={work / 'musicgen'}",
          f"--out={out}", "--layers=0,1", "--max_new_tokens=4",
          "--batch_size=4"]
  run = run_script("extract_residual.py", *args)
  assert run.returncode == 0, run.stderr[-2000:]
  manifest = json.loads((out / "residual.json").read_text())
  assert manifest["sets"] == ["layer_00", "layer_01"]
  es = data.load_embedding_set(out / "layer_01")
  n = len(prompts.read_prompts(work / "prompts.jsonl"))
  assert es.embeddings.shape == (n, 32) and es.meta["layer"] == 1
  assert es.meta["frames"] == 4 and es.meta["model"] == str(work / "musicgen")
  assert len(es.label_names) >= 2 and (es.labels >= 0).sum() == 9


def test_steer_script_refuses_a_layer_the_model_lacks(work):
  """(Steering at the exported layer through run_steering is tested in
  process, in test_bridge_residual.py.)"""
  common = [f"--model={work / 'musicgen'}", "--strengths=0,2",
            "--duration=0.1", "--greedy", f"--prompts={work / 'neutral.txt'}",
            "--noprompt_edit"]
  bad = run_script("steer.py", f"--directions={work / 'layer9'}",
                   f"--out={work / 'steer9'}", *common)
  assert bad.returncode == 2
  assert "decoder layer 9" in last_line(bad.stderr)
  assert "Traceback" not in bad.stderr


def test_layer_scan_on_residual_sets(work, tmp_path):
  """Probe accuracy per layer beside its shuffled-label null."""
  from bridge import residual
  from bridge.generate import TransformersBackend
  records = prompts.generate_prompts(36, seed=1)
  names, labels, groups, heldout = prompts.label_arrays(records)
  be = TransformersBackend.__new__(TransformersBackend)
  be.model, be.processor = tiny.tiny_musicgen(d_model=32)
  be.device = "cpu"
  residual.extract(tmp_path / "res", [r["text"] for r in records], labels,
                   names, groups, model="tiny", loaded_backend=be,
                   max_new_tokens=4, batch_size=12, progress=False,
                   meta=dict(heldout_groups=heldout))
  # Probes only (--nosae): 36 prompts are too few for the SAE test's
  # support; tests/test_layer_scan.py covers the SAE counts.
  run = run_script("layer_scan.py", f"--sets={tmp_path / 'res'}",
                   f"--out={tmp_path / 'scan'}", "--shuffles=3", "--nosae")
  assert run.returncode == 0, run.stderr[-2000:]
  scan = json.loads((tmp_path / "scan" / "layer_scan.json").read_text())
  assert [r["site"] for r in scan["rows"]] == ["layer 0", "layer 1"]
  for row in scan["rows"]:
    assert len(row["null"]) == 3 and row["split"] == "templates"
    assert 0 <= row["accuracy"] <= 1 and row["n_test"] > 0
    assert "significant" not in row
  assert (tmp_path / "scan" / "layer_scan.png").stat().st_size > 1000


def test_residual_modules_never_import_jax():
  import subprocess
  import sys
  from conftest import ROOT
  code = ("import sys; import bridge.residual, bridge.residual_steering; "
          "assert not [m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'jaxlib', 'flax')], 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
