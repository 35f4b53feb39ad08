"""`spot_jax.load_t5`: the public numpy API on a Hugging Face folder and on a T5X checkpoint."""
import os

import numpy as np
import pytest

import spot_jax
from spot_jax.checkpoints import read_params, write_t5x

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_parity", "t5_1_1")


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(os.path.join(FIXTURE, "outputs.npz")))


def test_load_t5_hf_folder_matches_transformers(reference):
  model = spot_jax.load_t5(FIXTURE)
  assert model.config.d_model == 32 and not model.config.tie_word_embeddings
  logits = model.logits(reference["input_ids"], reference["decoder_input_ids"])
  assert np.abs(logits - reference["logits"]).max() <= 1e-4
  prompted = model.logits(reference["input_ids"], reference["decoder_input_ids"], prompt=reference["prompt"])
  assert np.abs(prompted - reference["logits_prompt"]).max() <= 1e-4
  encoded = model.encode(reference["input_ids"], prompt=reference["prompt"])
  assert encoded.shape[1] == reference["prompt"].shape[0] + reference["input_ids"].shape[1]


def test_load_t5_t5x_folder_gives_the_same_logits(tmp_path, reference):
  config, params = read_params(FIXTURE)
  ckpt = write_t5x(params, str(tmp_path / "t5x"), step=7)
  model = spot_jax.load_t5(str(tmp_path / "t5x"))  # the parent dir: newest checkpoint_<step>
  assert model.config.d_model == config.d_model
  logits = model.logits(reference["input_ids"], reference["decoder_input_ids"], prompt=reference["prompt"])
  assert np.abs(logits - reference["logits_prompt"]).max() <= 1e-4


def test_load_t5_overrides_and_bad_prompt():
  model = spot_jax.load_t5(FIXTURE, dtype="bfloat16", relative_attention_max_distance=64)
  assert model.config.dtype == "bfloat16" and model.config.relative_attention_max_distance == 64
  with pytest.raises(ValueError, match=r"expected \[P, 32\]"):
    model.encode(np.ones((1, 3), np.int32), prompt=np.zeros((4, 16), np.float32))


def test_load_t5_rejects_a_path_of_neither_format(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match="neither a T5X checkpoint"):
    spot_jax.load_t5(str(tmp_path))


def test_peft_bfloat16_adapter_gives_the_logits_peft_gives():
  """A prompt PEFT saved in bfloat16 (tests/fixtures/make_hf_formats.py) on the model it was made for."""
  import warnings
  from spot_jax import prompt_io
  adapter = os.path.join(os.path.dirname(__file__), "fixtures", "hf_formats", "peft_bf16")
  ref = np.load(os.path.join(adapter, "outputs.npz"))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # PEFT's decoder rows are dropped, with a warning
    prompt = prompt_io.load_prompt(adapter)
  model = spot_jax.load_t5(FIXTURE)
  logits = model.logits(ref["input_ids"], ref["decoder_input_ids"], prompt=prompt)
  assert np.abs(logits - ref["logits"]).max() <= 1e-4


def test_load_t5_names_a_pytorch_only_folder(tmp_path):
  import shutil
  shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
  with pytest.raises(ValueError, match=r"(?s)holds PyTorch pickle weights \(pytorch_model\.bin\).*"
                                       r"save_pretrained\(.*safe_serialization=True\)"):
    spot_jax.load_t5(str(tmp_path))
