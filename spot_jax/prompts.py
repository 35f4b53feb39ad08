"""Where the soft prompt is created: the initializers of DESIGN.md §5, selectable from gin.

An initializer is a callable `(rng, prompt_length, d_model, embedding) -> np.ndarray [P, d] float32`,
where `embedding` is the frozen model's `[vocab, d]` token embedding (numpy). Vocabulary-dependent
initializers take the seqio vocabulary when they are configured, so this module knows no task.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import gin
import numpy as np

PromptInit = Callable[[np.random.Generator, int, int, np.ndarray], np.ndarray]


def _rng(seed_or_rng) -> np.random.Generator:
  return seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)


@gin.configurable
def random_uniform(scale: float = 0.5, minval: Optional[float] = None) -> PromptInit:
  """Uniform in [minval, scale); minval defaults to -scale, the [-0.5, 0.5] of Lester et al. (2021).

  google-research/prompt-tuning's configs use flax's `uniform(scale=0.5)`, which samples [0, 0.5):
  `minval=0.0` reproduces that range (the draws differ: numpy here, a JAX key there).
  """
  low = -scale if minval is None else minval
  if not low < scale:
    raise ValueError(f"random_uniform: minval {low} must be below scale {scale}")

  @_no_embedding
  def init(rng, prompt_length, d_model, embedding=None):
    return _rng(rng).uniform(low, scale, (prompt_length, d_model)).astype(np.float32)
  return init


@gin.configurable
def sampled_vocab(population_size: Optional[int] = 5000) -> PromptInit:
  """Rows of the embedding table drawn from the first `population_size` ids (None: all of them), as
  prompt-tuning's `from_sample_of_embeddings`: without replacement, with replacement only when the
  prompt is longer than the population."""
  if population_size is not None and population_size <= 0:
    raise ValueError(f"sampled_vocab: population_size must be a positive number of vocabulary ids (or "
                     f"None for the whole table), got {population_size}")

  def init(rng, prompt_length, d_model, embedding):
    _require_embedding(embedding, d_model, "sampled_vocab")
    population = embedding.shape[0] if population_size is None else min(population_size, embedding.shape[0])
    ids = _rng(rng).choice(population, prompt_length, replace=prompt_length > population)
    return np.asarray(embedding[ids], np.float32)
  return init


def _require_embedding(embedding, d_model, name):
  if embedding is None:
    raise ValueError(f"the {name} prompt initializer needs the frozen model's token embedding")
  if embedding.shape[1] != d_model:
    raise ValueError(f"embedding width {embedding.shape[1]} != d_model {d_model}")


def _token_ids(vocabulary, text: str) -> list:
  ids = [int(i) for i in vocabulary.encode(text)]
  if not ids:
    raise ValueError(f"{text!r} encodes to no tokens with {vocabulary}")
  return ids


@gin.configurable
def class_labels(vocabulary=gin.REQUIRED, labels: Sequence[str] = gin.REQUIRED,
                 fallback: Optional[PromptInit] = None) -> PromptInit:
  """Label i's sub-token embeddings averaged into row i (the first rows, as prompt-tuning's
  `from_embedded_list`); the remaining rows from `fallback` (default: sampled_vocab, 5000 ids).

  More labels than rows is an error here; prompt-tuning warns and drops the labels that do not fit.
  """
  fallback = fallback or sampled_vocab()

  def init(rng, prompt_length, d_model, embedding):
    _require_embedding(embedding, d_model, "class_labels")
    if len(labels) > prompt_length:
      raise ValueError(f"{len(labels)} class labels do not fit a prompt of length {prompt_length}: raise "
                       f"PROMPT_LENGTH to at least {len(labels)} or give fewer CLASS_LABELS")
    rows = [np.asarray(embedding[_token_ids(vocabulary, l)], np.float32).mean(0) for l in labels]
    rest = fallback(rng, prompt_length - len(rows), d_model, embedding)
    return np.concatenate([np.stack(rows), rest], axis=0).astype(np.float32)
  return init


@gin.configurable
def from_string(vocabulary=gin.REQUIRED, text: str = gin.REQUIRED,
                fallback: Optional[PromptInit] = None) -> PromptInit:
  """The embeddings of a string's tokens in the first rows; the rest from `fallback`."""
  fallback = fallback or sampled_vocab()

  def init(rng, prompt_length, d_model, embedding):
    _require_embedding(embedding, d_model, "from_string")
    ids = _token_ids(vocabulary, text)
    if len(ids) > prompt_length:
      raise ValueError(f"the init string has {len(ids)} tokens, more than the prompt length "
                       f"{prompt_length}; shorten it or raise PROMPT_LENGTH")
    rest = fallback(rng, prompt_length - len(ids), d_model, embedding)
    return np.concatenate([np.asarray(embedding[ids], np.float32), rest], axis=0)
  return init


@gin.configurable
def from_file(path: str = gin.REQUIRED) -> PromptInit:
  """A prompt saved earlier (SPoT transfer): `.npy`, a T5X-prompt-tuning export, PEFT or MODEL_DIR."""
  @_no_embedding
  def init(rng, prompt_length, d_model, embedding=None):
    from spot_jax import prompt_io
    prompt = prompt_io.load_prompt(path)
    _check_shape(prompt, prompt_length, d_model, path)
    return prompt
  return init


@gin.configurable
def from_files_weighted(paths: Sequence[str] = gin.REQUIRED,
                        weights: Optional[Sequence[float]] = None) -> PromptInit:
  """Σ w_k p_k over several saved prompts (SPoT's top-k weighted average); weights are normalized."""
  if weights is not None and len(weights) != len(paths):
    raise ValueError(f"{len(paths)} prompt files but {len(weights)} weights")

  @_no_embedding
  def init(rng, prompt_length, d_model, embedding=None):
    from spot_jax import prompt_io
    w = np.ones(len(paths)) if weights is None else np.asarray(weights, np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):  # a negative weight extrapolates past the prompts
      raise ValueError(f"PROMPT_WEIGHTS must be numbers >= 0 (SPoT's weights are proportional to "
                       f"similarities; a negative similarity gets weight 0), got {w.tolist()}")
    if w.sum() <= 0:
      raise ValueError(f"prompt weights must sum to a positive number, got {list(w)}")
    w = w / w.sum()
    total = np.zeros((prompt_length, d_model), np.float64)
    for p, wk in zip(paths, w):
      prompt = prompt_io.load_prompt(p)
      _check_shape(prompt, prompt_length, d_model, p)
      total += wk * prompt
    return total.astype(np.float32)
  return init


def _check_shape(prompt, prompt_length, d_model, source):
  if prompt.shape != (prompt_length, d_model):
    if prompt.ndim == 2 and prompt.shape[1] != d_model:
      fix = (f"its d_model {prompt.shape[1]} is another model size's: use a prompt trained for this "
             f"model (d_model {d_model})")
    else:
      fix = f"set PROMPT_LENGTH to {prompt.shape[0]} or use a prompt trained for this model"
    raise ValueError(f"prompt from {source} has shape {tuple(prompt.shape)} but this run expects "
                     f"[PROMPT_LENGTH={prompt_length}, d_model={d_model}]; {fix}")


def needs_embedding(init: PromptInit) -> bool:
  """Whether an initializer reads the token embedding: all but those marked `needs_embedding = False`
  (random, from saved prompts), so a user's own initializer gets the table."""
  return getattr(init, "needs_embedding", True)


def _no_embedding(init):
  init.needs_embedding = False
  return init


def make_prompt(init: PromptInit, seed, prompt_length: int, d_model: int, embedding=None) -> np.ndarray:
  """Run an initializer and check what it returns.

  `embedding` may be an array-like read on demand (the trainer passes the frozen checkpoint's lazily
  read table): it is read whole, as float32, only for an initializer that uses it. For a random or a
  transferred init, a model-parallel T5 XXL host thus reads only its shard of the 0.5 GB table (when
  the weights are placed), not the whole table too."""
  embedding = np.asarray(embedding, np.float32) if embedding is not None and needs_embedding(init) else None
  prompt = np.asarray(init(_rng(seed), prompt_length, d_model, embedding), np.float32)
  _check_shape(prompt, prompt_length, d_model, "the prompt initializer")
  if not np.isfinite(prompt).all():
    raise ValueError("the prompt initializer produced NaN or inf values")
  return prompt
