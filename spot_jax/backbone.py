"""A small frozen T5 backbone for the offline demo, pretrained here by our own code and cached.

Why: a tiny T5 with random weights is too weak for soft prompts to matter, and no pretrained
checkpoint can be downloaded offline. So the demo first trains every weight of a tiny T5 1.1 on a
mixture of (a) T5 span corruption over the bundled corpus and (b) the bundled tasks' training
splits, each behind a textual task prefix ("movie sentiment: review: ..." → "positive"), as T5's
multi-task pretraining did. The backbone thereby holds the skills and a prompt only has to select
one. Tasks listed in `holdout_tasks` (the demo's target) are left out of (b), so what a target
prompt gains from a related source prompt is transfer, not memory.

The result is a T5X checkpoint (`spot_jax.checkpoints.write_t5x`) under
`<cache>/<key>/checkpoint_<steps>/` plus `backbone.json`, written last (its presence marks a
complete entry). `key` hashes the config, the data files and FORMAT_VERSION, so a change to any of
them pretrains again; anything else reuses the cached weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio
from spot_jax.config import T5Config

FORMAT_VERSION = 1
BACKBONE_JSON = "backbone.json"
CACHE_ENV = "SPOT_JAX_CACHE"
PAD, EOS = 0, 1
EXTRA_IDS = 100  # T5 sentinels after the SentencePiece pieces (seqio's extra_ids)

# Textual task prefixes of the multi-task part: a prompt learns to stand in for one of them.
TASK_PREFIXES = {
    "movie": "movie sentiment:",
    "product": "product sentiment:",
    "restaurant": "restaurant sentiment:",
    "topic": "news topic:",
    "nli": "entailment:",
    "number": "compare numbers:",
}
# Auxiliary tasks on the same inputs, so that the input format alone does not reveal the task and
# a prompt has to select the skill: "review domain" asks which domain a review is from.
AUX_PREFIXES = {"review_domain": "review domain:"}
SENTIMENT = ("movie", "product", "restaurant")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Everything that decides the pretrained weights (all of it goes into the cache key)."""
  d_model: int = 64
  num_heads: int = 4
  head_dim: int = 16
  d_ff: int = 128
  num_encoder_layers: int = 4  # the encoder does the understanding; 4 layers learn negation/contrast
  num_decoder_layers: int = 2
  vocab_size: int = 1152  # 1000 pieces + 100 sentinels, padded to a multiple of 128
  tasks: Tuple[str, ...] = ("movie", "product", "restaurant", "topic", "nli", "number")
  holdout_tasks: Tuple[str, ...] = ("restaurant",)
  aux_tasks: Tuple[str, ...] = ("review_domain",)
  steps: int = 1000
  batch_size: int = 32
  learning_rate: float = 2e-3
  warmup_steps: int = 50
  span_corruption_rate: float = 0.35  # share of each batch that is span corruption
  noise_density: float = 0.15
  mean_span_length: float = 3.0
  input_length: int = 40
  target_length: int = 16
  seed: int = 0

  def t5_config(self) -> T5Config:
    return T5Config(vocab_size=self.vocab_size, d_model=self.d_model, num_heads=self.num_heads,
                    head_dim=self.head_dim, d_ff=self.d_ff, num_encoder_layers=self.num_encoder_layers,
                    num_decoder_layers=self.num_decoder_layers, feed_forward="gated-gelu",
                    tie_word_embeddings=False, dropout_rate=0.0)

  def supervised_tasks(self) -> Tuple[str, ...]:
    return tuple(t for t in self.tasks if t not in self.holdout_tasks)


def default_data_dir() -> str:
  """tasks/data of this checkout, found without importing `tasks` (which loads TensorFlow)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("tasks")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the `tasks` package (bundled data) is not importable; run from the "
                            "spot_jax checkout or install it with `pip install -e .`")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def default_cache_dir() -> str:
  root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "spot_jax")
  return os.path.join(root, "demo_backbone")


def data_files(config: BackboneConfig, data_dir: str) -> List[str]:
  """The files whose bytes decide the pretraining data: vocabulary, corpus, supervised train splits."""
  files = [os.path.join(data_dir, "bundled_spm.model"), os.path.join(data_dir, "corpus.txt")]
  files += [os.path.join(data_dir, t, "train.tsv") for t in config.supervised_tasks()]
  for f in files:
    if not os.path.exists(f):
      raise FileNotFoundError(f"bundled data file {f} is missing; regenerate it with "
                              "`python tasks/make_bundled_data.py`")
  return files


def cache_key(config: BackboneConfig, data_dir: Optional[str] = None) -> str:
  """Hash of FORMAT_VERSION, the config and the data bytes (16 hex digits)."""
  data_dir = data_dir or default_data_dir()
  h = hashlib.sha256()
  h.update(json.dumps({"format_version": FORMAT_VERSION, "config": dataclasses.asdict(config)},
                      sort_keys=True).encode())
  for f in data_files(config, data_dir):
    with open(f, "rb") as fh:
      h.update(os.path.basename(os.path.dirname(f)).encode() + b"/" + os.path.basename(f).encode())
      h.update(hashlib.sha256(fh.read()).digest())
  return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Data: tokenized once into fixed-shape numpy arrays (no TensorFlow in the loop).

class _Tokenizer:
  def __init__(self, data_dir: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.sp = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "bundled_spm.model"))
    self.base = self.sp.GetPieceSize()

  def encode(self, text: str) -> List[int]:
    return list(self.sp.encode(text))

  def sentinel(self, k: int) -> int:
    """`<extra_id_k>` as seqio numbers it: the last ids, counting down."""
    return self.base + EXTRA_IDS - 1 - k


def _read_tsv(path: str) -> List[Dict[str, str]]:
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def _templates() -> Dict[str, str]:
  # The same input templates the seqio tasks use (tasks/make_bundled_data.py), read without
  # importing the `tasks` package.
  return {"movie": "review: {review}", "product": "review: {review}",
          "restaurant": "review: {review}", "topic": "headline: {headline}",
          "nli": "premise: {premise} hypothesis: {hypothesis}",
          "number": "numbers: {first} and {second}"}


def supervised_examples(config: BackboneConfig, data_dir: str, tok: _Tokenizer):
  """[(input ids, target ids)] of the prefixed multi-task part (train splits only)."""
  out = []
  templates = _templates()
  for task in config.supervised_tasks():
    if task not in TASK_PREFIXES:
      raise ValueError(f"unknown bundled task {task!r}; known: {sorted(TASK_PREFIXES)}")
    for row in _read_tsv(os.path.join(data_dir, task, "train.tsv")):
      text = TASK_PREFIXES[task] + " " + templates[task].format(**row)
      out.append((tok.encode(text) + [EOS], tok.encode(row["label"]) + [EOS]))
      if "review_domain" in config.aux_tasks and task in SENTIMENT:
        text = AUX_PREFIXES["review_domain"] + " " + templates[task].format(**row)
        out.append((tok.encode(text) + [EOS], tok.encode(task) + [EOS]))
  return out


def _documents(data_dir: str) -> List[str]:
  with open(os.path.join(data_dir, "corpus.txt"), encoding="utf-8") as f:
    text = f.read()
  return [" ".join(d.split("\n")) for d in text.split("\n\n") if d.strip()]


def span_corrupt(ids: Sequence[int], rng: random.Random, tok: _Tokenizer, noise_density: float,
                 mean_span_length: float) -> Tuple[List[int], List[int]]:
  """T5 span corruption: spans (≈ noise_density of the tokens) → sentinels in the input, and
  `<extra_id_k> span_k ...` as the target."""
  n = len(ids)
  num_noise = max(1, int(round(n * noise_density)))
  num_spans = max(1, int(round(num_noise / mean_span_length)))
  starts = sorted(rng.sample(range(n), min(num_spans, n)))
  noise = [False] * n
  for s in starts:
    for i in range(s, min(n, s + max(1, int(round(mean_span_length))))):
      noise[i] = True
  inputs, targets, k, prev = [], [], 0, False
  for i, t in enumerate(ids):
    if noise[i]:
      if not prev:
        inputs.append(tok.sentinel(k))
        targets.append(tok.sentinel(k))
        k += 1
      targets.append(t)
    else:
      inputs.append(t)
    prev = noise[i]
  return inputs + [EOS], targets + [EOS]


def corruption_examples(config: BackboneConfig, data_dir: str, tok: _Tokenizer, count: int,
                        rng: random.Random):
  docs = [tok.encode(d) for d in _documents(data_dir)]
  window = config.input_length - 8  # room for sentinels and EOS
  out = []
  while len(out) < count:
    ids = docs[rng.randrange(len(docs))]
    start = rng.randrange(max(1, len(ids) - window + 1))
    inp, tgt = span_corrupt(ids[start:start + window], rng, tok, config.noise_density,
                            config.mean_span_length)
    if len(inp) <= config.input_length and len(tgt) <= config.target_length:
      out.append((inp, tgt))
  return out


def _pad(seqs, length: int) -> np.ndarray:
  arr = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    s = s[:length]
    if len(s) == length and s[-1] != EOS and s[-1] != PAD:
      s = s[:-1] + [EOS]
    arr[i, :len(s)] = s
  return arr


def make_batches(config: BackboneConfig, data_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
  """All pretraining batches `[steps, batch, length]` (EncDec features, deterministic per seed)."""
  data_dir = data_dir or default_data_dir()
  tok = _Tokenizer(data_dir)
  if config.vocab_size < tok.base + EXTRA_IDS:
    raise ValueError(f"vocab_size {config.vocab_size} < {tok.base} pieces + {EXTRA_IDS} sentinels")
  rng = random.Random(config.seed)
  sup = supervised_examples(config, data_dir, tok)
  n_total = config.steps * config.batch_size
  n_corrupt = int(round(n_total * config.span_corruption_rate)) if sup else n_total
  examples = corruption_examples(config, data_dir, tok, n_corrupt, rng)
  order = list(range(len(sup)))
  while len(examples) < n_total:
    rng.shuffle(order)
    examples += [sup[i] for i in order[:n_total - len(examples)]]
  rng.shuffle(examples)
  inputs = _pad([e[0] for e in examples], config.input_length)
  targets = _pad([e[1] for e in examples], config.target_length)
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  shape = (config.steps, config.batch_size)
  return {"encoder_input_tokens": inputs.reshape(shape + (-1,)),
          "decoder_input_tokens": decoder_inputs.reshape(shape + (-1,)),
          "decoder_target_tokens": targets.reshape(shape + (-1,)),
          "decoder_loss_weights": (targets > 0).astype(np.int32).reshape(shape + (-1,))}


# ---------------------------------------------------------------------------------------------------
# Full-model pretraining.

def pretrain(config: BackboneConfig, data_dir: Optional[str] = None,
             progress: Optional[Callable[[int, float], None]] = None, progress_every: int = 50):
  """Trains every weight of a fresh tiny T5; returns (T5Config, params (numpy), losses per step)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from spot_jax.model import T5, init_params  # pylint: disable=g-import-not-at-top
  from spot_jax.train_step import cross_entropy  # pylint: disable=g-import-not-at-top

  t5_config = config.t5_config()
  batches = make_batches(config, data_dir)
  params = jax.tree.map(jnp.asarray, init_params(t5_config, jax.random.PRNGKey(config.seed)))
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                max(config.steps, config.warmup_steps + 1),
                                                config.learning_rate * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
  opt_state = tx.init(params)
  model = T5(t5_config)

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
    total, count = cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])
    return total / jnp.maximum(count, 1.0)

  @jax.jit
  def step(p, s, batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  losses = []
  for i in range(config.steps):
    params, opt_state, loss = step(params, opt_state, {k: v[i] for k, v in batches.items()})
    losses.append(loss)
    if progress is not None and ((i + 1) % progress_every == 0 or i + 1 == config.steps):
      progress(i + 1, float(np.mean(jax.device_get(losses[-progress_every:]))))
  losses = [float(x) for x in jax.device_get(losses)]
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError("backbone pretraining diverged (non-finite loss); lower learning_rate")
  return t5_config, jax.device_get(params), losses


# ---------------------------------------------------------------------------------------------------
# The cache.

@dataclasses.dataclass
class Backbone:
  config: T5Config
  params: dict
  checkpoint: str  # the T5X checkpoint directory
  info: dict  # backbone.json
  reused: bool


def _read_cached(entry: str, config: BackboneConfig) -> Optional[Backbone]:
  meta_path = os.path.join(entry, BACKBONE_JSON)
  if not os.path.exists(meta_path):
    return None
  from spot_jax import checkpoints  # pylint: disable=g-import-not-at-top
  with open(meta_path) as f:
    info = json.load(f)
  ckpt = os.path.join(entry, f"checkpoint_{config.steps}")
  t5_config, params = checkpoints.read_params(ckpt, config=config.t5_config())
  return Backbone(t5_config, params, ckpt, info, reused=True)


def load_or_pretrain(config: BackboneConfig = BackboneConfig(), cache_dir: Optional[str] = None,
                     rebuild: bool = False, data_dir: Optional[str] = None,
                     log: Callable[[str], None] = print) -> Backbone:
  """The cached backbone for `config`, pretraining (and caching) it first when absent or `rebuild`."""
  data_dir = data_dir or default_data_dir()
  cache_dir = cache_dir or default_cache_dir()
  key = cache_key(config, data_dir)
  entry = os.path.join(cache_dir, key)
  if not rebuild:
    try:
      cached = _read_cached(entry, config)
    except Exception as e:  # pylint: disable=broad-except  # a damaged entry is rebuilt, not fatal
      log(f"backbone cache {entry} is unreadable ({e}); pretraining again")
      cached = None
    if cached is not None:
      log(f"backbone: reusing {cached.checkpoint} (pretrained in {cached.info['pretrain_seconds']:.0f}s, "
          f"final loss {cached.info['final_loss']:.3f})")
      return cached
  log(f"backbone: pretraining a {config.d_model}-wide {config.num_encoder_layers}+"
      f"{config.num_decoder_layers}-layer T5 for {config.steps} steps (span corruption + prefixed "
      f"tasks {', '.join(config.supervised_tasks())}; held out: {', '.join(config.holdout_tasks) or '-'})")
  t0 = time.time()

  def progress(step, loss):
    log(f"  backbone step {step:4d}/{config.steps}  loss {loss:.3f}  ({time.time() - t0:.0f}s)")

  t5_config, params, losses = pretrain(config, data_dir, progress)
  seconds = time.time() - t0
  from spot_jax import checkpoints  # pylint: disable=g-import-not-at-top
  os.makedirs(entry, exist_ok=True)
  meta_path = os.path.join(entry, BACKBONE_JSON)
  if os.path.exists(meta_path):
    os.remove(meta_path)  # the entry is incomplete until the new backbone.json lands
  ckpt = checkpoints.write_t5x(params, entry, config.steps, overwrite=True)
  window = max(1, min(50, len(losses) // 4))
  info = {"key": key, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(config),
          "t5_config": dataclasses.asdict(t5_config), "pretrain_seconds": seconds,
          "initial_loss": float(np.mean(losses[:window])), "final_loss": float(np.mean(losses[-window:])),
          "losses_every_10": [float(x) for x in losses[::10]], "task_prefixes": TASK_PREFIXES,
          "created": time.time()}
  fileio.write_json_atomic(meta_path, info, sort_keys=True)
  log(f"backbone: pretrained in {seconds:.0f}s (loss {info['initial_loss']:.3f} → "
      f"{info['final_loss']:.3f}); cached at {ckpt}")
  return Backbone(t5_config, params, ckpt, info, reused=False)


def prefixed_accuracy(t5_config: T5Config, params, task: str, split: str = "validation",
                      data_dir: Optional[str] = None, prefix: Optional[str] = None,
                      limit: Optional[int] = None) -> float:
  """Accuracy (%) of the backbone on a bundled task driven by a textual prefix instead of a prompt,
  by ranking the task's label words (first-token logits). Shows what the backbone learned. `task`:
  the bundled task's short name (`movie`) or its seqio name (`spot_bundled_movie`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from spot_jax.model import T5  # pylint: disable=g-import-not-at-top
  short = task[len("spot_bundled_"):] if task.startswith("spot_bundled_") else task
  if short not in TASK_PREFIXES:
    raise ValueError(f"{task!r} is not a bundled task: use one of {sorted(TASK_PREFIXES)} (or its seqio name, "
                     f"e.g. 'spot_bundled_{sorted(TASK_PREFIXES)[0]}')")
  task = short
  data_dir = data_dir or default_data_dir()
  tok = _Tokenizer(data_dir)
  rows = _read_tsv(os.path.join(data_dir, task, f"{split}.tsv"))[:limit]
  labels = sorted({r["label"] for r in rows})
  first = [tok.encode(l)[0] for l in labels]
  if len(set(first)) != len(first):
    raise ValueError(f"labels {labels} of {task} share a first token; cannot rank by it")
  prefix = TASK_PREFIXES[task] if prefix is None else prefix
  texts = [(prefix + " " if prefix else "") + _templates()[task].format(**r) for r in rows]
  inputs = _pad([tok.encode(t) + [EOS] for t in texts], max(len(tok.encode(t)) + 1 for t in texts))
  logits = jax.jit(T5(t5_config).apply)({"params": params}, jnp.asarray(inputs),
                               jnp.zeros((len(rows), 1), jnp.int32))
  pred = np.asarray(logits[:, 0, :])[:, first].argmax(-1)
  gold = np.array([labels.index(r["label"]) for r in rows])
  return float((pred == gold).mean() * 100)
