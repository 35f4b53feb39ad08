"""Helpers of the tests that check eval programs split their batch over a mesh's `data` axis."""
import re

import jax
import numpy as np


def spy_programs(monkeypatch, module, factory):
  """Records `(jitted program, its arguments)` of every call of the programs `module.factory` returns."""
  calls = []
  real = getattr(module, factory)

  def wrapped(*a, **k):
    fn = real(*a, **k)
    return lambda *args: calls.append((fn, args)) or fn(*args)

  monkeypatch.setattr(module, factory, wrapped)
  return calls


def rows_per_device(fn, args, index: int, width: int, length: int):
  """Rows of argument `index` one device holds in the compiled program, of its output, and of the
  `[rows * length, width]` activations its HLO computes (the encoder's matmuls)."""
  compiled = fn.lower(*args).compile()
  out = jax.eval_shape(fn, *args)
  hlo = {int(n) // length for n in re.findall(rf"= f32\[(\d+),{width}\]\S* (?:dot|convolution)\(",
                                               compiled.as_text()) if int(n) % length == 0}
  return (compiled.input_shardings[0][index].shard_shape(np.shape(args[index]))[0],
          compiled.output_shardings.shard_shape(out.shape)[0], hlo)

