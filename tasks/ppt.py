"""PPT-style prompt pre-training tasks (Gu et al. 2022) over any text source.

PPT pre-trains soft prompts on four formats, all with targets wrapped in a
sentinel as PPT does for T5. Three are self-supervised, built from documents
split into sentences (`register_ppt_tasks`):

* NSP-3: `"s1 <extra_id_0> s2"` -> `"<extra_id_0> yes|maybe|no"`: yes = s2
  follows s1, maybe = same document but not adjacent, no = another document.
  Labels cycle through shuffled triples, so each is exactly a third.
* Next-sentence selection: `"s1 <extra_id_0> A. o1 B. o2 ... F. o6"` ->
  `"<extra_id_0> C"`: the true next sentence among six options (distractors
  from the same document and from others); the answer letter cycles through
  shuffled blocks of six.
* Unified multiple choice: `"question: s1 what comes next? options: A. ...
  answer: <extra_id_0>"` -> `"<extra_id_0> B"` with 2-16 options, the format
  into which downstream multiple-choice tasks can be cast
  (`format_multiple_choice`).

The fourth, single-sentence classification, needs labels that plain text does
not carry: `tasks.ppt_single_sentence`.

Sources: a local text file (documents separated by blank lines; each line and
each `.`/`!`/`?` ends a sentence) or a TFDS text dataset (e.g. `c4/en:3.0.1`).
Generation is plain Python with a seeded RNG: the same seed and documents (and
labels) give the same examples. Negatives come from other documents within a
window of `window` consecutive documents, so streaming sources work.
"""

import itertools
import random
import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import seqio
import tensorflow as tf

from tasks import user_data

SENTINEL = "<extra_id_0>"
LETTERS = "ABCDEFGHIJKLMNOP"  # up to 16 options.
NSP_LABELS = ("yes", "maybe", "no")
FORMATS = ("nsp3", "nss", "mc")
SSC_FORMAT = "ssc"  # the fourth format: tasks.ppt_single_sentence
VALIDATION_EVERY = 10  # text files: every 10th document goes to validation.

Document = List[str]

_SENT_END = re.compile(r"(?<=[.!?])\s+")
_SENTINELS = re.compile(r"<extra_id_\d+>")


# ------------------------------------------------------------------ reading


def split_sentences(text: str) -> List[str]:
  """Sentences of a text: each line, further split after . ! or ?."""
  out = []
  for line in text.splitlines():
    out += [s.strip() for s in _SENT_END.split(line) if s.strip()]
  return out


def read_documents(path: str) -> List[Document]:
  """Documents (lists of sentences) of a file; blank lines separate them."""
  with tf.io.gfile.GFile(path, "r") as f:
    blocks = re.split(r"\n\s*\n", f.read())
  docs = [split_sentences(b) for b in blocks]
  return [d for d in docs if d]


def _file_documents(path: str, split: str) -> List[Document]:
  docs = read_documents(path)
  keep = (lambda i: i % VALIDATION_EVERY == VALIDATION_EVERY - 1)
  if split == "train":
    return [d for i, d in enumerate(docs) if not keep(i)]
  if split == "validation":
    return [d for i, d in enumerate(docs) if keep(i)]
  raise ValueError(f"text-file PPT tasks have splits train and validation, "
                   f"not {split!r}")


def _tfds_examples(name: str, split: str, data_dir: Optional[str],
                   max_documents: Optional[int]) -> Iterator[Dict[str, Any]]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
  if max_documents:
    ds = ds.take(max_documents)
  return iter(tfds.as_numpy(ds))


def _tfds_documents(name: str, split: str, text_key: str,
                    data_dir: Optional[str],
                    max_documents: Optional[int]) -> Iterator[Document]:
  for ex in _tfds_examples(name, split, data_dir, max_documents):
    doc = split_sentences(_text(_feature(ex, text_key)))
    if doc:
      yield doc


def _feature(ex: Dict[str, Any], key: str):
  """`ex[key]`; a key with `/` also reaches nested features (`data/body`)."""
  if key in ex:
    return ex[key]
  value = ex
  for part in key.split("/"):
    if not isinstance(value, dict) or part not in value:
      raise KeyError(f"TFDS feature {key!r} not found; the examples have "
                     f"features {sorted(ex)} (nested ones as 'outer/inner').")
    value = value[part]
  return value


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _plain(value):
  """A TFDS (numpy) scalar as plain Python: bytes -> str, np.int64 -> int."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
    return value.item()
  return value


# --------------------------------------------------------------- formatting


def format_nsp3(s1: str, s2: str, label: str) -> Dict[str, str]:
  return {"inputs": f"{s1} {SENTINEL} {s2}", "targets": f"{SENTINEL} {label}"}


def _options(options: Sequence[str]) -> str:
  return " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def format_selection(s1: str, options: Sequence[str],
                     answer: int) -> Dict[str, str]:
  return {"inputs": f"{s1} {SENTINEL} {_options(options)}",
          "targets": f"{SENTINEL} {LETTERS[answer]}"}


def format_multiple_choice(question: str, options: Sequence[str],
                           answer: int) -> Dict[str, str]:
  """PPT's unified multiple-choice format (2-16 options)."""
  if not 2 <= len(options) <= len(LETTERS):
    raise ValueError(f"multiple choice needs 2..{len(LETTERS)} options, got "
                     f"{len(options)}")
  return {"inputs": f"question: {question} options: {_options(options)} "
                    f"answer: {SENTINEL}",
          "targets": f"{SENTINEL} {LETTERS[answer]}"}


# --------------------------------------------------------------- generation


def _windows(documents: Iterable[Document], window: int):
  it = iter(documents)
  while True:
    chunk = list(itertools.islice(it, window))
    if not chunk:
      return
    yield chunk


class _Cycle:
  """Yields items in freshly shuffled rounds: exact balance, random order."""

  def __init__(self, items: Sequence, rng: random.Random):
    self._items, self._rng, self._queue = list(items), rng, []

  def next(self):
    if not self._queue:
      self._queue = self._items[:]
      self._rng.shuffle(self._queue)
    return self._queue.pop()

  def put_back(self, item):
    self._queue.append(item)


def _other_sentence(rng: random.Random, chunk: List[Document], d: int) -> str:
  j = rng.choice([k for k in range(len(chunk)) if k != d])
  return rng.choice(chunk[j])


def nsp3_examples(documents: Iterable[Document], seed: int = 0,
                  window: int = 256,
                  max_per_document: int = 8) -> Iterator[Dict[str, str]]:
  """NSP-3 examples; documents need 3+ sentences (shorter ones feed `no`)."""
  rng = random.Random(f"nsp3/{seed}")
  labels = _Cycle(NSP_LABELS, rng)
  for chunk in _windows(documents, window):
    if len(chunk) < 2:
      continue
    for d, doc in enumerate(chunk):
      n = len(doc)
      if n < 3:
        continue
      for _ in range(min(n - 1, max_per_document)):
        label = labels.next()
        if label == "yes":
          i = rng.randrange(n - 1)
          s1, s2 = doc[i], doc[i + 1]
        elif label == "maybe":
          i, j = rng.choice([(i, j) for i in range(n) for j in range(n)
                             if abs(i - j) >= 2])
          s1, s2 = doc[i], doc[j]
        else:
          s1, s2 = rng.choice(doc), _other_sentence(rng, chunk, d)
        yield dict(format_nsp3(s1, s2, label), label=label)


def _choice_examples(documents, rng, window, max_per_document, num_options,
                     render):
  """Shared by selection and multiple choice: true next sentence + others."""
  for chunk in _windows(documents, window):
    if len(chunk) < 2:
      continue
    for d, doc in enumerate(chunk):
      n = len(doc)
      if n < 2:
        continue
      for i in sorted(rng.sample(range(n - 1), min(n - 1, max_per_document))):
        k = num_options()
        correct = doc[i + 1]
        same = [s for j, s in enumerate(doc)
                if j not in (i, i + 1) and s not in (correct, doc[i])]
        distractors = rng.sample(same, min(len(same), (k - 1) // 2))
        for _ in range(100 * k):
          if len(distractors) == k - 1:
            break
          s = _other_sentence(rng, chunk, d)
          if s not in (correct, doc[i]) and s not in distractors:
            distractors.append(s)
        if len(distractors) < k - 1:
          continue  # too few distinct sentences around; skip this one.
        rng.shuffle(distractors)
        answer = render.answer(k)
        options = distractors[:answer] + [correct] + distractors[answer:]
        yield render(doc[i], options, answer)


class _Render:

  def __init__(self, fmt, answer_fn):
    self._fmt, self.answer = fmt, answer_fn

  def __call__(self, s1, options, answer):
    ex = self._fmt(s1, options, answer)
    ex["label"] = LETTERS[answer]
    return ex


def selection_examples(documents: Iterable[Document], seed: int = 0,
                       window: int = 256, max_per_document: int = 8,
                       num_options: int = 6) -> Iterator[Dict[str, str]]:
  """Next-sentence selection among `num_options` (default 6: A-F)."""
  rng = random.Random(f"nss/{seed}")
  letters = _Cycle(range(num_options), rng)
  render = _Render(format_selection, lambda k: letters.next())
  return _choice_examples(documents, rng, window, max_per_document,
                          lambda: num_options, render)


def multiple_choice_examples(documents: Iterable[Document], seed: int = 0,
                             window: int = 256, max_per_document: int = 8,
                             min_options: int = 2,
                             max_options: int = 16) -> Iterator[Dict[str, str]]:
  """Unified multiple choice: which sentence comes next, 2-16 options."""
  rng = random.Random(f"mc/{seed}")
  render = _Render(
      lambda s1, o, a: format_multiple_choice(f"{s1} what comes next?", o, a),
      rng.randrange)
  return _choice_examples(documents, rng, window, max_per_document,
                          lambda: rng.randint(min_options, max_options), render)


GENERATORS = {"nsp3": nsp3_examples, "nss": selection_examples,
              "mc": multiple_choice_examples}


# -------------------------------------------------------------- seqio tasks


def _postprocess(output, example=None, is_target=False):
  """Drops sentinels so `<extra_id_0> yes` and `yes` compare equal."""
  del example, is_target
  return _SENTINELS.sub("", user_data._to_str(output)).strip()  # pylint: disable=protected-access


def _dataset_fn(gen, docs_fn, **gen_kwargs):
  """A seqio dataset_fn; seqio's own seed is ignored (ours is fixed)."""

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # our generation seed fixes the examples; seqio shuffles them after

    def examples():
      for ex in gen(docs_fn(split), **gen_kwargs):
        yield {"inputs": ex["inputs"], "targets": ex["targets"]}

    sig = {k: tf.TensorSpec([], tf.string) for k in ("inputs", "targets")}
    return tf.data.Dataset.from_generator(examples, output_signature=sig)

  return dataset_fn


def _check_source(who: str, text_file: Optional[str],
                  tfds_name: Optional[str],
                  tfds_splits: Optional[Dict[str, str]]):
  """(our split names, our split -> TFDS split or None) of a PPT source."""
  if (text_file is None) == (tfds_name is None):
    raise ValueError(f"{who}: pass exactly one of text_file= or tfds_name=.")
  if text_file is not None:
    if not tf.io.gfile.exists(text_file):
      raise FileNotFoundError(f"PPT text file {text_file!r} does not exist.")
    return ["train", "validation"], None
  tfds_splits = dict(tfds_splits or {"train": "train",
                                     "validation": "validation"})
  return list(tfds_splits), tfds_splits


def _features(vocabulary):
  vocab = user_data._vocabulary(vocabulary)  # pylint: disable=protected-access
  return {"inputs": seqio.Feature(vocab, add_eos=True),
          "targets": seqio.Feature(vocab, add_eos=True)}


def register_ppt_tasks(
    prefix: str,
    text_file: Optional[str] = None,
    tfds_name: Optional[str] = None,
    *,
    tfds_splits: Optional[Dict[str, str]] = None,
    text_key: str = "text",
    tfds_data_dir: Optional[str] = None,
    max_documents: Optional[int] = None,
    vocabulary=None,
    seed: int = 0,
    window: int = 256,
    max_per_document: int = 8,
    formats: Sequence[str] = FORMATS,
    overwrite: bool = True,
) -> List[str]:
  """Registers `<prefix>_nsp3`, `<prefix>_nss` and `<prefix>_mc` tasks.

  Args:
    prefix: task name prefix, e.g. "spot_ppt_c4".
    text_file: a local (or gs://) text file, documents separated by blank
      lines; splits train and validation (every 10th document).
    tfds_name: alternatively a TFDS text dataset with a version, e.g.
      "c4/en:3.0.1"; `tfds_splits` maps our split names to TFDS splits
      (default train/validation), `text_key` names the text feature.
    max_documents: read at most this many documents per split (TFDS).
    vocabulary: seqio Vocabulary or SentencePiece path; None = T5's default.
    seed: generation seed (examples are a pure function of seed + documents).
    window: documents per negative-sampling window.
    max_per_document: at most this many examples from one document.
    formats: which of "nsp3", "nss", "mc" to register (the single-sentence
      format needs labels: `tasks.ppt_single_sentence`).
  Returns:
    The registered task names.
  """
  splits, tfds_splits = _check_source("register_ppt_tasks", text_file,
                                      tfds_name, tfds_splits)
  if text_file is not None:
    docs_fn = lambda split: _file_documents(text_file, split)
  else:
    docs_fn = lambda split: _tfds_documents(
        tfds_name, tfds_splits[split], text_key, tfds_data_dir, max_documents)

  features = _features(vocabulary)
  names = []
  for fmt in formats:
    if fmt == SSC_FORMAT:
      raise ValueError(
          "the single-sentence format needs labels; register it with "
          "tasks.ppt_single_sentence.register_ppt_single_sentence(prefix, ..., "
          "label_fn=... or "
          "label_key=...).")
    if fmt not in GENERATORS:
      raise ValueError(f"unknown PPT format {fmt!r}; use {FORMATS}.")
    gen = GENERATORS[fmt]
    dataset_fn = _dataset_fn(gen, docs_fn, seed=seed, window=window,
                             max_per_document=max_per_document)

    counts = None
    if text_file is not None:
      counts = {s: sum(1 for _ in gen(docs_fn(s), seed=seed, window=window,
                                      max_per_document=max_per_document))
                for s in splits}
    name = f"{prefix}_{fmt}"
    task = seqio.Task(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=splits,
                                        num_input_examples=counts),
        output_features=features,
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=_postprocess, metric_fns=[user_data.accuracy])
    user_data._add(task, overwrite)  # pylint: disable=protected-access
    names.append(name)
  return names
