"""spot_jax/target_platform.py: which platform the model traces for."""
import jax
import jax.numpy as jnp
import pytest

from spot_jax import dropout as D
from spot_jax import fused_attention as F
from spot_jax import target_platform


def test_defaults_to_the_attached_backend_and_the_override_is_scoped():
  attached = jax.devices()[0].platform
  assert target_platform.platform() == attached
  with target_platform.compiling_for("gpu"):
    assert target_platform.platform() == "gpu"
    with target_platform.compiling_for("tpu"):
      assert target_platform.platform() == "tpu"
    assert target_platform.platform() == "gpu"
  assert target_platform.platform() == attached
  with pytest.raises(RuntimeError):
    with target_platform.compiling_for("gpu"):
      raise RuntimeError("boom")
  assert target_platform.platform() == attached  # restored after an exception too
  with pytest.raises(ValueError, match="unknown platform 'cuda'"):
    with target_platform.compiling_for("cuda"):
      pass


def test_model_choices_follow_the_target_not_the_attached_devices(monkeypatch):
  """Compiling for a GPU from a CPU machine must trace the GPU forms: per-element dropout bits
  and the cuDNN attention call."""
  jaxpr = lambda: str(jax.make_jaxpr(lambda k: D.Dropout(0.1).apply(
      {}, jnp.ones((4, 6)), deterministic=False, rngs={"dropout": k}))(jax.random.key(0)))
  assert "bitcast_convert_type" in jaxpr()  # 16-bit draws on this CPU
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa
  monkeypatch.setattr(cudnn_fa, "check_cudnn_version", lambda: 91000)
  q = jnp.zeros((2, 128, 4, 64), jnp.bfloat16)
  bias = jnp.zeros((1, 4, 128, 128), jnp.bfloat16)
  lengths = jnp.array([128, 100], jnp.int32)
  attention = lambda: str(jax.make_jaxpr(lambda q: F.fused_attention(q, q, q, bias, lengths,
                                                                      lengths))(q))
  assert "variadic_args" not in attention()  # XLA form
  with target_platform.compiling_for("gpu"):
    assert "bitcast_convert_type" not in jaxpr()
    assert "variadic_args=(True, False)" in attention()  # the cuDNN call
