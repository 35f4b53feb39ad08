"""T5's layers: the query kernel's folded 1/sqrt(head_dim), relative position buckets, the MLP's
recomputed backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import layers
from spot_jax import model as M
from spot_jax.config import size_config

from tiny_t5 import CFG, DEC, ENC


def test_query_kernel_init_is_scaled_by_head_dim():
  p = M.init_params(CFG.replace(d_model=256, head_dim=64, num_heads=4), jax.random.PRNGKey(1))
  att = p["encoder"]["layers_0"]["attention"]
  ratio = np.std(att["key"]["kernel"]) / np.std(att["query"]["kernel"])
  assert 7.0 < ratio < 9.0  # sqrt(64) = 8


def test_relative_position_buckets_match_t5_definition():
  b = layers.relative_position_buckets(1, 200, True, 32, 128)[0]
  assert b[0] == 0 and b[1] == 16 + 1 and b[7] == 16 + 7  # exact region for keys to the right
  assert b[8] == 16 + 8 and b[199] == 31  # log region, clipped at the last bucket
  c = layers.relative_position_buckets(200, 1, False, 32, 128)[:, 0]
  assert c[0] == 0 and c[15] == 15 and c[16] == 16 and c[199] == 31


def test_mlp_backward_recompute_gives_the_stored_forms_loss_and_prompt_gradient():
  from spot_jax import train_step
  cfg = size_config("tiny", vocab_size=96, dropout_rate=0.3, dropout_bits="per_element")
  params = M.init_params(cfg, jax.random.PRNGKey(0))
  batch = {"encoder_input_tokens": ENC, "decoder_input_tokens": DEC,
           "decoder_target_tokens": np.roll(DEC, -1, axis=1),
           "decoder_loss_weights": (DEC > 0).astype(np.float32)}
  prompt = jnp.asarray(np.random.default_rng(0).normal(size=(3, cfg.d_model)), jnp.float32)
  results = {}
  for mode in ("store", "recompute"):
    loss_fn = train_step.make_loss_fn(cfg.replace(mlp_backward=mode), enable_dropout=True)
    value_and_grad = jax.value_and_grad(lambda p: loss_fn(p, params, batch, jax.random.PRNGKey(1))[0])
    results[mode] = jax.jit(value_and_grad)(prompt)
    assert ("prevent_cse" in str(jax.make_jaxpr(value_and_grad)(prompt))) == (mode == "recompute")
  np.testing.assert_allclose(results["recompute"][0], results["store"][0], rtol=1e-6)
  np.testing.assert_allclose(results["recompute"][1], results["store"][1], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="mlp_backward"):
    cfg.replace(mlp_backward="sometimes")
