"""The model's projections: which dtype their inputs take, and how their products sum.

`T5Config.matmul_dtype="bfloat16"` rounds a projection's input and kernel to bfloat16 and sums the
products in float32, in the backward pass too. On CPUs with AVX512-BF16 or AMX that is the form XLA
runs on the bfloat16 units (docs/bench.md), so the choices here depend on the target platform.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from spot_jax import target_platform
from spot_jax.config import T5Config


def activation_dtype(config: T5Config):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def matmul_dtype(config: T5Config):
  """The dtype a projection's inputs are rounded to (`T5Config.matmul_dtype`)."""
  return jnp.bfloat16 if config.matmul_dtype == "bfloat16" else activation_dtype(config)


def _accumulate_in_float32(in_dtype, out_dtype) -> bool:
  """Whether a product of `in_dtype` inputs asks for float32 sums. Always when its output is wider
  than its inputs. Also for bfloat16 in and out on CPUs: XLA's CPU dot runs bfloat16 products
  summed in float32 on the fast bfloat16 instructions, but bfloat16-valued ones about four times
  slower (docs/bench.md); elsewhere the plain form is left as it is (it sums in float32 too)."""
  return in_dtype == jnp.bfloat16 and (out_dtype != in_dtype or target_platform.platform() == "cpu")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _float32_sums(spec, a, b):
  """`einsum(spec, a, b)` summed in float32, whose backward products also take inputs in `a`'s
  dtype: JAX's own backward would meet a float32 cotangent and run them in float32, at a third
  of the speed on CPUs."""
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _float32_sums_fwd(spec, a, b):
  return _float32_sums(spec, a, b), (a, b)


def _float32_sums_bwd(spec, saved, g):
  # Every index of `spec` is in two of its three terms, so each input's cotangent is the product
  # of the other two terms.
  a, b = saved
  inputs, out = spec.split("->")
  in_a, in_b = inputs.split(",")
  g = g.astype(a.dtype)
  return (jnp.einsum(f"{out},{in_b}->{in_a}", g, b, preferred_element_type=jnp.float32).astype(a.dtype),
          jnp.einsum(f"{out},{in_a}->{in_b}", g, a, preferred_element_type=jnp.float32).astype(b.dtype))


_float32_sums.defvjp(_float32_sums_fwd, _float32_sums_bwd)


def project(x, kernel, out_dtype, in_dtype):
  """`x @ kernel`, both rounded to `in_dtype`, the result in `out_dtype`."""
  a, b = x.astype(in_dtype), kernel.astype(in_dtype)
  if _accumulate_in_float32(in_dtype, out_dtype):
    return _float32_sums("...i,io->...o", a, b).astype(out_dtype)
  return jnp.dot(a, b).astype(out_dtype)
