"""spot_jax/config.py and gin/models/: every variant file with every size file gives T5X's dimensions
(the table below is T5X's t5x/examples/t5/{t5_1_0,t5_1_1,mt5}/*.gin), and a size of the other family is
refused naming the fix."""
import gin
import pytest

from spot_jax import gin_utils
from spot_jax.config import size_config

# (d_model, heads, head_dim, d_ff, encoder layers, decoder layers, vocab, feed_forward, tied)
T5X = {("t5_1_0", "small"): (512, 8, 64, 2048, 6, 6, 32128, "relu", True),
       ("t5_1_0", "base"): (768, 12, 64, 3072, 12, 12, 32128, "relu", True),
       ("t5_1_0", "large"): (1024, 16, 64, 4096, 24, 24, 32128, "relu", True),
       ("t5_1_0", "3B"): (1024, 32, 128, 16384, 24, 24, 32128, "relu", True),
       ("t5_1_0", "11B"): (1024, 128, 128, 65536, 24, 24, 32128, "relu", True)}
for _variant in ("t5_1_1", "t5_1_1_lm_adapted", "mt5"):
  for _size, _dims in {"small": (512, 6, 64, 1024, 8, 8), "base": (768, 12, 64, 2048, 12, 12),
                       "large": (1024, 16, 64, 2816, 24, 24), "xl": (2048, 32, 64, 5120, 24, 24),
                       "xxl": (4096, 64, 64, 10240, 24, 24)}.items():
    T5X[(_variant, _size)] = _dims + (250112 if _variant == "mt5" else 32128, "gated-gelu", False)
FIELDS = ("d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers", "num_decoder_layers",
          "vocab_size", "feed_forward", "tie_word_embeddings")


def _model_config(*files):
  gin_utils.parse_gin([*files], [])
  try:
    return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("variant,size", sorted(T5X))
def test_each_variant_and_size_file_gives_t5xs_dimensions(variant, size):
  config = _model_config(f"models/{variant}.gin", "prompts/random_uniform.gin", f"models/sizes/{size}.gin")
  assert tuple(getattr(config, f) for f in FIELDS) == T5X[(variant, size)]
  assert config.dropout_rate == 0.1 and config.relative_attention_num_buckets == 32
  assert config.dropout_broadcast  # T5X's masks, shared across positions


def test_a_size_of_the_other_family_is_refused_naming_the_fix():
  with pytest.raises(ValueError, match=r"unknown t5_1_0 size 'xl'; its sizes: \['tiny', 'small', 'base', 'large', "
                                       r"'3B', '11B'\] \('xl' is a size of t5_1_1: include models/t5_1_1\.gin"):
    _model_config("models/t5_1_0.gin", "prompts/random_uniform.gin", "models/sizes/xl.gin")
  with pytest.raises(ValueError, match=r"unknown t5_1_1 size '3B'.*'3B' is a size of t5_1_0.*from_checkpoint\.gin"):
    size_config("3B")
  with pytest.raises(ValueError, match=r"unknown T5 family 't5_2'"):
    size_config("small", family="t5_2")
