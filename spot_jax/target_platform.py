"""The platform a traced program is compiled for, which a few model choices depend on.

Tracing normally targets the default backend, but a program can also be compiled for a GPU that is
not attached (`bench/gpu_layout.py` reads the optimized H100/H200 program on a CPU machine); then the
model must trace its GPU form even though `jax.devices()` lists CPUs.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax

_OVERRIDE: contextvars.ContextVar = contextvars.ContextVar("spot_jax_target_platform", default=None)


def platform() -> str:
  """`"gpu"`, `"tpu"` or `"cpu"`: the override of `compiling_for`, else the default backend's."""
  override = _OVERRIDE.get()
  return override if override is not None else jax.devices()[0].platform


@contextlib.contextmanager
def compiling_for(name: str):
  """Trace for `name` (`"gpu"`, `"tpu"` or `"cpu"`) inside the block, whatever devices are attached."""
  if name not in ("gpu", "tpu", "cpu"):
    raise ValueError(f"unknown platform {name!r}; expected 'gpu', 'tpu' or 'cpu'")
  token = _OVERRIDE.set(name)
  try:
    yield
  finally:
    _OVERRIDE.reset(token)
