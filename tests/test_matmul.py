"""The projections' dtypes: bfloat16 inputs summed in float32, forward and backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import matmul


def _round_bf16(a):
  return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)


def test_project_rounds_its_inputs_to_bfloat16_and_sums_in_float32():
  """`matmul_dtype='bfloat16'`'s projection is the product of the rounded input and kernel (a
  float64 numpy reference), returned in the activation dtype."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 48)).astype(np.float32)
  kernel = rng.normal(size=(48, 40)).astype(np.float32)
  out = matmul.project(jnp.asarray(x), jnp.asarray(kernel), jnp.float32, jnp.bfloat16)
  assert out.dtype == jnp.float32
  reference = _round_bf16(x).astype(np.float64) @ _round_bf16(kernel).astype(np.float64)
  np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
  assert np.abs(out - x.astype(np.float64) @ kernel).max() > 1e-3  # the inputs were rounded


def _dot_generals(jaxpr):
  """Every dot_general in a jaxpr, its sub-jaxprs (jit, custom_vjp) included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _dot_generals(inner)


@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16], ids=["f32_out", "bf16_out"])
def test_project_backward_takes_bfloat16_inputs_too(out_dtype, monkeypatch):
  """The input's gradient equals autodiff of the same product over the rounded inputs (bfloat16
  tolerance), and every product of forward and backward takes bfloat16 inputs summed in float32:
  JAX's own backward would meet a float32 cotangent and run float32 products."""
  monkeypatch.setattr(matmul.target_platform, "platform", lambda: "cpu")  # bf16 out: the CPU form
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(4, 6, 32)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(32, 24)) / 6, jnp.bfloat16)  # a frozen bf16 weight
  loss = lambda x: jnp.sum(jnp.sin(matmul.project(x, kernel, out_dtype, jnp.bfloat16).astype(jnp.float32)))
  grad = jax.grad(loss)(x)
  rounded = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # gradient passes through
  reference = jax.grad(lambda x: jnp.sum(jnp.sin(rounded(x) @ kernel.astype(jnp.float32))))(x)
  assert grad.dtype == jnp.float32
  np.testing.assert_allclose(grad, reference, rtol=3e-2, atol=3e-2 * float(jnp.abs(reference).max()))
  dots = list(_dot_generals(jax.make_jaxpr(jax.grad(loss))(x).jaxpr))
  assert len(dots) >= 2  # forward, and the input's gradient
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
    assert eqn.params["preferred_element_type"] == jnp.float32, eqn
