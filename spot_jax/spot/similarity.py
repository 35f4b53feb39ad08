"""Similarity between soft prompts, the signal SPoT uses to pick source tasks (DESIGN.md §7).

Prompts are numpy arrays [P, d]. Measures:
  cos_avg_tokens  SPoT: cos(mean_i a_i, mean_j b_j)
  cos_per_token   SPoT: (1/(P_a P_b)) Σ_ij cos(a_i, b_j)
  e_concat        Su et al.: 1 / (1 + ‖a − b‖_F)            (equal shapes only)
  e_average       Su et al.: 1 / (1 + mean_ij ‖a_i − b_j‖)
  c_concat        Su et al.: cos(flatten a, flatten b)      (equal shapes only)
  c_average       Su et al.: same as cos_per_token
  on              Su et al.: overlap of activated FFN neurons in the frozen model driven by each prompt
                  (needs an `activations_fn(prompt) -> array [layers, ..., d_ff]`)
All are symmetric; all but cos_per_token/c_average/e_average give 1 for a prompt against itself.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np

_EPS = 1e-12


def _pair(a, b, name: str, same_shape: bool = False):
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  if a.ndim != 2 or b.ndim != 2:
    raise ValueError(f"{name}: prompts must be [P, d], got shapes {a.shape} and {b.shape}")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"{name}: prompts have different d_model ({a.shape} vs {b.shape}); prompts of "
                     "different frozen models cannot be compared")
  if same_shape and a.shape != b.shape:
    raise ValueError(f"{name} needs prompts of equal shape, got {a.shape} and {b.shape}; use "
                     "e_average/c_average (or cos_avg_tokens) for prompts of different lengths")
  return a, b


def _cos(u: np.ndarray, v: np.ndarray) -> float:
  """Cosine; 0 when either vector is zero (no direction to compare)."""
  nu, nv = np.linalg.norm(u), np.linalg.norm(v)
  if nu < _EPS or nv < _EPS:
    return 0.0
  return float(np.dot(u, v) / (nu * nv))


def _unit_rows(x: np.ndarray) -> np.ndarray:
  n = np.linalg.norm(x, axis=-1, keepdims=True)
  return np.where(n < _EPS, 0.0, x / np.maximum(n, _EPS))


def cos_avg_tokens(a, b) -> float:
  """SPoT's cosine similarity of average tokens."""
  a, b = _pair(a, b, "cos_avg_tokens")
  return _cos(a.mean(0), b.mean(0))


def cos_per_token(a, b) -> float:
  """SPoT's per-token average cosine: mean over all (i, j) of cos(a_i, b_j)."""
  a, b = _pair(a, b, "cos_per_token")
  return float((_unit_rows(a) @ _unit_rows(b).T).mean())


def e_concat(a, b) -> float:
  """Su et al.'s Euclidean similarity of the concatenated prompts."""
  a, b = _pair(a, b, "e_concat", same_shape=True)
  return float(1.0 / (1.0 + np.linalg.norm(a - b)))


def e_average(a, b) -> float:
  """Su et al.'s Euclidean similarity averaged over all token pairs."""
  a, b = _pair(a, b, "e_average")
  d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
  return float(1.0 / (1.0 + d.mean()))


def c_concat(a, b) -> float:
  """Su et al.'s cosine of the concatenated (flattened) prompts."""
  a, b = _pair(a, b, "c_concat", same_shape=True)
  return _cos(a.ravel(), b.ravel())


def c_average(a, b) -> float:
  """Su et al.'s averaged cosine: identical to SPoT's per-token average cosine."""
  a, b = _pair(a, b, "c_average")
  return float((_unit_rows(a) @ _unit_rows(b).T).mean())


# ---------------------------------------------------------------------------------------------------
# ON: overlapping rate of activated neurons.

def _binary_layers(act, name: str) -> np.ndarray:
  x = np.asarray(act)
  if x.ndim < 2:
    raise ValueError(f"{name}: activations must be [layers, d_ff] or [layers, ..., d_ff], got {x.shape}")
  return (x.reshape(x.shape[0], -1) > 0).astype(np.float64)


def on_window_similarities(act_a, act_b, window: Optional[int] = 3) -> np.ndarray:
  """Cosine of the binarized (>0) activations per window of `window` consecutive layers.

  Windows do not overlap: layers [0, w), [w, 2w), ...; a last shorter window is kept. `window=None`
  gives one value over all layers. Activations are [layers, d_ff] or [layers, positions..., d_ff]
  (everything after the layer axis is flattened, so both must have the same positions).
  """
  a = _binary_layers(act_a, "on")
  b = _binary_layers(act_b, "on")
  if a.shape != b.shape:
    raise ValueError(f"on: activation shapes differ ({np.shape(act_a)} vs {np.shape(act_b)}); drive "
                     "both prompts through the same model with the same input")
  num_layers = a.shape[0]
  if window is None:
    window = num_layers
  if window < 1:
    raise ValueError(f"on: window must be >= 1 or None, got {window}")
  return np.array([_cos(a[s:s + window].ravel(), b[s:s + window].ravel())
                   for s in range(0, num_layers, window)])


def on_similarity(act_a, act_b, window: Optional[int] = 3) -> float:
  """ON similarity: the mean over layer windows of `on_window_similarities`."""
  return float(on_window_similarities(act_a, act_b, window).mean())


# ---------------------------------------------------------------------------------------------------
# Registry and matrices.

PROMPT_SIMILARITIES: dict = {
    "cos_avg_tokens": cos_avg_tokens,
    "cos_per_token": cos_per_token,
    "e_concat": e_concat,
    "e_average": e_average,
    "c_concat": c_concat,
    "c_average": c_average,
}
SIMILARITIES: dict = {**PROMPT_SIMILARITIES, "on": on_similarity}
DEFAULT_MEASURE = "cos_avg_tokens"


def _check_measure(measure: str) -> None:
  if measure not in SIMILARITIES:
    raise ValueError(f"unknown similarity measure {measure!r}; choose one of {sorted(SIMILARITIES)}")


def _check_on_lengths(prompts: Mapping[str, np.ndarray]) -> None:
  """ON compares activations position by position, so prompts of other lengths cannot be compared: said
  here, by name, not as differing activation shapes after the model ran (which blamed the input)."""
  lengths = {name: int(np.shape(p)[0]) for name, p in prompts.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"on: prompts of different lengths cannot be compared position by position ({lengths}); "
                     "use a prompt-only measure such as cos_avg_tokens, or prompts of one length")


def prompt_similarity(a, b, measure: str = DEFAULT_MEASURE,
               activations_fn: Optional[Callable] = None, window: Optional[int] = 3) -> float:
  """One similarity between prompts `a` and `b`; "on" needs `activations_fn(prompt) -> array`."""
  _check_measure(measure)
  if measure == "on":
    if activations_fn is None:
      raise ValueError("measure 'on' drives the frozen model with each prompt: pass activations_fn "
                       "(e.g. built on spot_jax.model.ffn_preactivations)")
    _check_on_lengths({"a": a, "b": b})
    return on_similarity(activations_fn(a), activations_fn(b), window)
  return SIMILARITIES[measure](a, b)


def similarity_matrix(prompts: Mapping[str, np.ndarray], measure: str = DEFAULT_MEASURE,
                      activations_fn: Optional[Callable] = None, window: Optional[int] = 3):
  """(names, matrix [n, n]) of pairwise similarities; names keep the mapping's order.

  For "on", `activations_fn` runs once per prompt.
  """
  _check_measure(measure)
  names = list(prompts)
  n = len(names)
  if measure == "on":
    if activations_fn is None:
      raise ValueError("measure 'on' needs activations_fn(prompt) -> [layers, ..., d_ff] activations")
    _check_on_lengths(prompts)
    items = {k: activations_fn(prompts[k]) for k in names}
    fn = lambda x, y: on_similarity(x, y, window)
  else:
    items = prompts
    fn = SIMILARITIES[measure]
  m = np.zeros((n, n), dtype=np.float64)
  for i in range(n):
    for j in range(i, n):
      m[i, j] = m[j, i] = fn(items[names[i]], items[names[j]])
  return names, m


def similarities_to(target, candidates: Mapping[str, np.ndarray], measure: str = DEFAULT_MEASURE,
                    activations_fn: Optional[Callable] = None,
                    window: Optional[int] = 3) -> dict:
  """{name: similarity(target, candidate)}; for "on" the target's activations are computed once."""
  _check_measure(measure)
  if measure == "on":
    if activations_fn is None:
      raise ValueError("measure 'on' needs activations_fn(prompt) -> [layers, ..., d_ff] activations")
    _check_on_lengths({"target": target, **candidates})
    ta = activations_fn(target)
    return {k: on_similarity(ta, activations_fn(v), window) for k, v in candidates.items()}
  fn = SIMILARITIES[measure]
  return {k: fn(target, v) for k, v in candidates.items()}


def ranked_pairs(names: Sequence[str], matrix: np.ndarray) -> list:
  """[(a, b, score)] over distinct unordered pairs, most similar first."""
  out = [(names[i], names[j], float(matrix[i, j]))
         for i in range(len(names)) for j in range(i + 1, len(names))]
  return sorted(out, key=lambda t: -t[2])
