"""The machine's matmul ceiling, measured in the same process as the benchmark it normalizes.

A large square matmul through JAX (best of a few runs; float32 on CPU, the run's dtype on an
accelerator) is what a well-shaped dense program can reach here; on CPU numpy's BLAS figure is
printed beside it. For accelerators, MFU is also taken against the vendor's datasheet peak below,
since a measured matmul already loses a little to clocks and power.
"""
from __future__ import annotations

import time

import numpy as np


# Dense (no sparsity) peak TFLOP/s by device kind substring and dtype, from vendor datasheets.
DATASHEET_PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.4, "float32": 66.9},   # SXM; H200 SXM has the same arithmetic
    "H200": {"bfloat16": 989.4, "float32": 66.9},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
}


def backend() -> str:
  import jax
  return jax.default_backend()


def device_kind() -> str:
  import jax
  return jax.devices()[0].device_kind


def datasheet_peak_tflops(kind: str, dtype: str) -> float | None:
  """The table's peak for a device kind (e.g. 'NVIDIA H100 80GB HBM3'), or None (CPUs, unknown)."""
  for name, peaks in DATASHEET_PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peaks.get(dtype)
  return None


def jax_matmul_gflops(n: int = 4096, repeats: int = 3, dtype: str = "float32") -> float:
  """Best GFLOP/s of an `[n, n] @ [n, n]` matmul through a jitted JAX function."""
  import jax
  import jax.numpy as jnp
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(key_b, (n, n), jnp.dtype(dtype))
  # bfloat16 sums in float32, as the model's products do (on CPUs the fast bfloat16 form).
  accumulate = jnp.float32 if jnp.dtype(dtype) == jnp.bfloat16 else None
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=accumulate))
  matmul(a, b).block_until_ready()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9


def numpy_matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
  """Best GFLOP/s of the same matmul through numpy's BLAS (reference only)."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  a @ b
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best / 1e9
