"""spot_jax's T5 against transformers' T5 (an independent implementation), float32, ≤ 1e-4.

The fixture (tests/fixtures/hf_parity/, made by tests/fixtures/make_hf_parity.py with torch +
transformers 4.57) holds tiny random-weight models of both variants and their recorded outputs.
"""
import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from spot_jax.checkpoints import read_params, write_t5x  # noqa: E402
from spot_jax.checkpoints.infer_config import flatten  # noqa: E402
from spot_jax.model import T5  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf_parity")
# name -> (heads, head_dim, encoder layers, decoder layers, gated, tied, buckets, max distance, eps), as
# make_hf_parity.py builds them (d_model 32, d_ff 64 throughout).
EXPECTED = {"t5_1_0": (4, 8, 2, 2, False, True, 32, 128, 1e-6),
            "t5_1_1": (4, 8, 2, 2, True, False, 32, 128, 1e-6),
            "t5_1_1_b8": (4, 8, 2, 2, True, False, 8, 16, 1e-6),
            "t5_1_0_wide_kv": (4, 16, 2, 2, False, True, 32, 128, 1e-6),  # heads * head_dim != d_model
            "t5_1_1_3x1_eps": (4, 12, 3, 1, True, False, 32, 128, 1e-2)}
MODELS = tuple(EXPECTED)
TOL = 1e-4


def _load(name):
  path = os.path.join(FIXTURES, name)
  config, params = read_params(path)
  ref = dict(np.load(os.path.join(path, "outputs.npz")))
  return config, params, ref


def _logits(config, params, ref, prompt=None):
  return np.asarray(T5(config).apply({"params": params}, jnp.asarray(ref["input_ids"]),
                                     jnp.asarray(ref["decoder_input_ids"]), prompt=prompt,
                                     enable_dropout=False))


def _assert_close(got, want, what):
  err = float(np.max(np.abs(got - want)))
  assert err <= TOL, f"{what}: max abs error {err:.3g} > {TOL}"


@pytest.mark.parametrize("name", MODELS)
def test_config_read_from_hf(name):
  config, _, _ = _load(name)
  assert (config.d_model, config.d_ff) == (32, 64)
  assert (config.num_heads, config.head_dim, config.num_encoder_layers, config.num_decoder_layers, config.gated,
          config.tie_word_embeddings, config.relative_attention_num_buckets,
          config.relative_attention_max_distance, config.layer_norm_epsilon) == EXPECTED[name]


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_transformers(name):
  config, params, ref = _load(name)
  got = _logits(config, params, ref)
  assert got.dtype == np.float32 and got.shape == ref["logits"].shape
  _assert_close(got, ref["logits"], f"{name} logits without prompt")


@pytest.mark.parametrize("name", MODELS)
def test_logits_with_prompt_match_transformers(name):
  config, params, ref = _load(name)
  got = _logits(config, params, ref, prompt=jnp.asarray(ref["prompt"]))
  _assert_close(got, ref["logits_prompt"], f"{name} logits with a {ref['prompt'].shape[0]}-row prompt")
  assert np.max(np.abs(got - ref["logits"])) > 1e-2  # the prompt matters


@pytest.mark.parametrize("name", MODELS)
def test_encoder_output_matches_on_valid_positions(name):
  config, params, ref = _load(name)
  tokens = jnp.asarray(ref["input_ids"])
  p = ref["prompt"].shape[0]
  plain = np.asarray(T5(config).apply({"params": params}, tokens, method=T5.encode))
  prompted = np.asarray(T5(config).apply({"params": params}, tokens, prompt=jnp.asarray(ref["prompt"]),
                                         method=T5.encode))
  assert prompted.shape == ref["encoder_out_prompt"].shape
  for b, n in enumerate(ref["lengths"]):
    _assert_close(plain[b, :n], ref["encoder_out"][b, :n], f"{name} encoder output, row {b}")
    _assert_close(prompted[b, :p + n], ref["encoder_out_prompt"][b, :p + n],
                  f"{name} prompted encoder output, row {b}")


@pytest.mark.parametrize("name", ("t5_1_0", "t5_1_1"))
def test_t5x_layout_of_the_same_weights_gives_identical_logits(name, tmp_path):
  config, params, ref = _load(name)
  ckpt = write_t5x(params, str(tmp_path), step=7)
  config2, params2 = read_params(str(tmp_path), overrides=dict(
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=config.dropout_rate))
  assert config2 == config, (config2, config)
  assert os.path.basename(ckpt) == "checkpoint_7"
  a, b = flatten(params), flatten(params2)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  np.testing.assert_array_equal(_logits(config, params, ref), _logits(config2, params2, ref))
