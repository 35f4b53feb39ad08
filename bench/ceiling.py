"""The machine's matmul ceiling, measured in the same process as the benchmark it normalizes.

A large square float32 matmul through JAX (best of a few runs) is what a well-shaped dense program
can reach here; numpy's BLAS figure is printed beside it for reference.
"""
from __future__ import annotations

import time

import numpy as np


def jax_matmul_gflops(n: int = 4096, repeats: int = 3, dtype: str = "float32") -> float:
  """Best GFLOP/s of an `[n, n] @ [n, n]` matmul through a jitted JAX function."""
  import jax
  import jax.numpy as jnp
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(key_b, (n, n), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)
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
