"""Heatmap PNG of a prompt-similarity matrix (matplotlib, headless Agg backend)."""
from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np

from spot_jax import fileio


def save_heatmap(names: Sequence[str], matrix, path: str, title: Optional[str] = None,
                 annotate: Optional[bool] = None) -> str:
  """Writes a labelled heatmap of `matrix` [n, n] to `path` (PNG, atomically); returns the path.

  Values are printed in the cells when `annotate` is True (default: when n <= 16).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg", force=False)
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  # no pyplot: no global state

  m = np.asarray(matrix, dtype=np.float64)
  n = len(names)
  if m.shape != (n, n):
    raise ValueError(f"heatmap: matrix shape {m.shape} does not match {n} names")
  size = max(4.0, 0.55 * n + 2.5)
  fig = Figure(figsize=(size + 1.0, size))
  ax = fig.add_subplot(1, 1, 1)
  im = ax.imshow(m, cmap="viridis", interpolation="nearest")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  ax.set_xticks(range(n))
  ax.set_yticks(range(n))
  ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
  ax.set_yticklabels(names, fontsize=8)
  if annotate is None:
    annotate = n <= 16
  if annotate and n:
    mid = (np.nanmax(m) + np.nanmin(m)) / 2
    for i in range(n):
      for j in range(n):
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="black" if m[i, j] > mid else "white")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, dpi=120, format="png")
  fileio.atomic_write_bytes(str(path), buf.getvalue())  # `--out-dir` may be gs://
  return str(path)
