"""PPT's single-sentence classification format (Gu et al. 2022), the one PPT
format that needs labels plain text does not carry.

* Single-sentence classification: `"s <extra_id_0>"` -> `"<extra_id_0> great"`,
  five sentiment classes, 1..5 stars = class indices 0..4 = label words
  terrible, bad, okay, good, great (`SSC_LABEL_WORDS`; choose your own with
  `label_words=`). PPT labelled corpus sentences with a classifier fine-tuned
  on Yelp-5; here the labels come from the user, either a function
  `label_fn(sentence) -> class index or None` (their pseudo-labeller; None
  drops the sentence) or a TFDS feature (`label_key=`, e.g. a review's star
  rating, mapped to class indices by `label_map=`). `balance=True` keeps the
  same number of examples of every class, as PPT balanced its data.

Sources, split rules, seeding and `overwrite` are those of `tasks.ppt`; this
module only adds the labels, so a labeller runs only when this task is used.
"""

import numbers
import random
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from tasks import user_data
from tasks.ppt import (_SENTINELS, SENTINEL, SSC_FORMAT, Document, _check_source, _feature, _features,
                       _file_documents, _plain, _postprocess, _text, _tfds_documents, _tfds_examples,
                       _windows)


def _tfds_rated(name: str, split: str, text_key: str, label_key: str,
                label_map: Optional[Mapping[Any, Optional[int]]],
                data_dir: Optional[str], max_documents: Optional[int]):
  """(text, label) of each TFDS example; label mapped by `label_map`."""
  for ex in _tfds_examples(name, split, data_dir, max_documents):
    label = _plain(_feature(ex, label_key))
    if label_map is not None:
      if label not in label_map:
        raise ValueError(
            f"TFDS feature {label_key!r} has the value {label!r}, which "
            f"label_map does not map; add it (map it to None to drop such "
            f"examples). label_map maps {sorted(label_map, key=repr)}.")
      label = label_map[label]
    yield _text(_feature(ex, text_key)), label



# ---------------------------------------- single-sentence classification

# Class index i (a rating of i + 1 stars) -> SSC_LABEL_WORDS[i]. Five common
# words in increasing sentiment; each is a single piece in T5's vocabulary.
SSC_LABEL_WORDS = ("terrible", "bad", "okay", "good", "great")
SSC_NUM_CLASSES = len(SSC_LABEL_WORDS)
_FN_HINT = "for a 1-5 star rating return stars - 1"
_MAP_HINT = ("pass label_map= to turn its values into class indices, e.g. "
             "label_map={1: 0, 2: 1, 3: 2, 4: 3, 5: 4} for 1-5 star ratings")

Labelled = List[Tuple[str, int]]  # one document's (text, class index) pairs.


def format_single_sentence(sentence: str, label_word: str) -> Dict[str, str]:
  """PPT's single-sentence format: `s <extra_id_0>` -> `<extra_id_0> word`."""
  return {"inputs": f"{sentence} {SENTINEL}",
          "targets": f"{SENTINEL} {label_word}"}


def check_label_words(label_words: Sequence[str]) -> Tuple[str, ...]:
  """The label words as a tuple of 5 distinct words, or a ValueError."""
  if isinstance(label_words, str):
    raise ValueError(f"label_words must be a sequence of {SSC_NUM_CLASSES} "
                     f"words, not the string {label_words!r}; e.g. "
                     f"{SSC_LABEL_WORDS}.")
  words = tuple(label_words)
  if len(words) != SSC_NUM_CLASSES:
    raise ValueError(
        f"label_words needs exactly {SSC_NUM_CLASSES} words, one for each "
        f"class 0..{SSC_NUM_CLASSES - 1} (1..5 stars), got {len(words)}: "
        f"{words!r}; e.g. {SSC_LABEL_WORDS}.")
  for w in words:
    if not isinstance(w, str) or not w.strip() or _SENTINELS.search(w):
      raise ValueError(f"label_words must be non-empty strings without "
                       f"sentinels, got {w!r} in {words!r}.")
  words = tuple(" ".join(w.split()) for w in words)
  if len(set(words)) != len(words):
    raise ValueError(f"label_words must be distinct, got {words!r}.")
  return words


def _class_index(value, source: str, fix: str) -> Optional[int]:
  """`value` as a class index 0..4, None as None, else a clear error."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"{source} gave {value!r} ({type(value).__name__}); a label must be an "
        f"int class index 0..{SSC_NUM_CLASSES - 1} (an index into "
        f"label_words) or None to drop the example; {fix}.")
  if not 0 <= value < SSC_NUM_CLASSES:
    raise ValueError(
        f"{source} gave class {value!r}, outside 0..{SSC_NUM_CLASSES - 1} (an "
        f"index into label_words); {fix}.")
  return int(value)


def _clip(text: str, max_words: Optional[int]) -> str:
  words = text.split()
  return " ".join(words[:max_words] if max_words else words)


def _label_sentences(documents: Iterable[Document],
                     label_fn: Callable[[str], Optional[int]],
                     rng: random.Random, max_per_document: Optional[int],
                     max_words: Optional[int]) -> Iterator[Labelled]:
  """Each document's labelled sentences, at most `max_per_document` of them.

  Sentences are tried in a seeded random order (document order when all fit)
  and `label_fn` is called only until the quota is full, so an expensive
  labeller sees few sentences of long documents; the kept ones stay in
  document order.
  """
  for doc in documents:
    sentences = [_clip(s, max_words) for s in doc]
    order = list(range(len(sentences)))
    if max_per_document and len(order) > max_per_document:
      rng.shuffle(order)
    kept = []
    for i in order:
      if max_per_document and len(kept) >= max_per_document:
        break
      label = _class_index(label_fn(sentences[i]),
                           f"label_fn({sentences[i]!r})", _FN_HINT)
      if label is not None:
        kept.append((i, label))
    yield [(sentences[i], label) for i, label in sorted(kept)]


def _emit(labelled: Iterable[Labelled], words: Tuple[str, ...],
          rng: random.Random, balance: bool,
          window: int) -> Iterator[Dict[str, str]]:
  """Examples of labelled documents; `balance` evens out each window."""
  if not balance:
    for doc in labelled:
      for text, label in doc:
        yield dict(format_single_sentence(text, words[label]),
                   label=words[label])
    return
  for chunk in _windows(labelled, window):
    items = [item for doc in chunk for item in doc]
    by_class = [[k for k, (_, label) in enumerate(items) if label == c]
                for c in range(SSC_NUM_CLASSES)]
    n = min(len(ks) for ks in by_class)  # the rarest class sets the count.
    for k in sorted(k for ks in by_class for k in rng.sample(ks, n)):
      text, label = items[k]
      yield dict(format_single_sentence(text, words[label]),
                 label=words[label])


def single_sentence_examples(
    documents: Iterable[Document],
    label_fn: Callable[[str], Optional[int]],
    *,
    label_words: Sequence[str] = SSC_LABEL_WORDS,
    seed: int = 0,
    max_per_document: Optional[int] = 8,
    max_words: Optional[int] = 128,
    balance: bool = False,
    window: int = 256) -> Iterator[Dict[str, str]]:
  """Single-sentence classification over sentences labelled by `label_fn`.

  Args:
    documents: lists of sentences.
    label_fn: sentence -> class index 0..4 (index into `label_words`), or
      None to drop the sentence; it sees the sentence as the model will.
    label_words: the 5 target words, class 0 (1 star) first.
    seed: seeds the choice of sentences and of the balanced subset.
    max_per_document: label and keep at most this many sentences of a document
      (None: all).
    max_words: cut longer sentences to their first `max_words` words, so that
      seqio's trimming does not cut off the sentinel (None: keep all).
    balance: keep, from each window of `window` documents, the same number of
      examples of every class (as many as its rarest class has; a window
      lacking a class gives none).
    window: documents per balancing window.
  Returns:
    An iterator of `{"inputs", "targets", "label"}` dicts, `label` the word.
  """
  words = check_label_words(label_words)
  if not callable(label_fn):
    raise TypeError(f"label_fn must be a function sentence -> class index "
                    f"0..{SSC_NUM_CLASSES - 1} or None, got {label_fn!r}.")
  rng = random.Random(f"ssc/{seed}")
  labelled = _label_sentences(documents, label_fn, rng, max_per_document,
                              max_words)
  return _emit(labelled, words, rng, balance, window)


def rated_text_examples(
    records: Iterable[Tuple[str, Optional[int]]],
    *,
    label_words: Sequence[str] = SSC_LABEL_WORDS,
    seed: int = 0,
    max_words: Optional[int] = 128,
    balance: bool = False,
    window: int = 256,
    source: str = "the label") -> Iterator[Dict[str, str]]:
  """Single-sentence classification over (text, class index or None) records.

  For data that come labelled, such as reviews with a star rating: each
  record's whole text (cut to `max_words` words) is one example, since the
  label describes the whole text. None drops a record. `seed` only matters
  with `balance` (see `single_sentence_examples`, windows of `window`
  records). `source` names the labels' origin in error messages.
  """
  words = check_label_words(label_words)
  rng = random.Random(f"ssc/{seed}")

  def labelled():
    for text, label in records:
      text = _clip(text, max_words)
      label = _class_index(label, source, _MAP_HINT)
      yield [(text, label)] if text and label is not None else []

  return _emit(labelled(), words, rng, balance, window)



class _LazyCountSource(seqio.FunctionDataSource):
  """A FunctionDataSource whose split sizes are counted when first asked."""

  def __init__(self, dataset_fn, splits, count_fn):
    super().__init__(dataset_fn, splits=splits)
    self._count_fn = count_fn

  def num_input_examples(self, split: str) -> Optional[int]:
    return self._count_fn(split)


def register_ppt_single_sentence(
    prefix: str,
    text_file: Optional[str] = None,
    tfds_name: Optional[str] = None,
    *,
    label_fn: Optional[Callable[[str], Optional[int]]] = None,
    label_key: Optional[str] = None,
    label_map: Optional[Mapping[Any, Optional[int]]] = None,
    label_words: Sequence[str] = SSC_LABEL_WORDS,
    tfds_splits: Optional[Dict[str, str]] = None,
    text_key: str = "text",
    tfds_data_dir: Optional[str] = None,
    max_documents: Optional[int] = None,
    vocabulary=None,
    seed: int = 0,
    max_per_document: Optional[int] = 8,
    max_words: Optional[int] = 128,
    balance: bool = False,
    window: int = 256,
    overwrite: bool = True,
) -> str:
  """Registers `<prefix>_ssc`, PPT's single-sentence classification task.

  Inputs `"sentence <extra_id_0>"`, targets `"<extra_id_0> great"`: one of
  five label words, class index 0..4 = 1..5 stars; postprocessing strips the
  sentinel and the metrics are accuracy and macro-F1 (the classes of
  pseudo-labelled text are rarely balanced).

  A function of its own rather than a fifth `register_ppt_tasks` format: those
  formats need nothing but text and share its negative-sampling options
  (`window`, `max_per_document`), while this one needs a label source that
  would mean nothing to them, and labelling may run a user's classifier over
  the corpus, which should happen only when this task is asked for. The
  source arguments and their split rules are the same as `register_ppt_tasks`.

  Labels come from exactly one of:
    label_fn: your labeller, sentence -> class index 0..4 (an index into
      `label_words`) or None to drop the sentence; it is called on the
      sentences of a text file or of TFDS `text_key` texts. For a text file
      the examples of a split are made once per process, when first needed
      (counting or reading), and kept, so each sentence is labelled once.
    label_key: a TFDS feature holding each example's label, such as a review's
      star rating ("a/b" names a nested feature); `label_map` maps its values
      to class indices (None drops the example), e.g. {1: 0, 2: 1, 3: 2,
      4: 3, 5: 4} for 1-5 stars, {0: 0, 1: 4} for negative/positive; without
      it the values must be class indices 0..4. Each example's whole text is
      one input, since the label describes the whole text.

  Args:
    prefix: task name prefix; the task is `<prefix>_ssc`.
    text_file: a local (or gs://) text file, documents separated by blank
      lines; splits train and validation (every 10th document). Needs label_fn.
    tfds_name: alternatively a TFDS dataset with a version; `tfds_splits` maps
      our split names to TFDS splits (default train/validation), `text_key`
      names the text feature.
    label_fn, label_key, label_map: the label source, see above.
    label_words: the 5 target words, class 0 (1 star) first; default
      `SSC_LABEL_WORDS` = terrible, bad, okay, good, great.
    max_documents: read at most this many TFDS examples per split.
    vocabulary: seqio Vocabulary or SentencePiece path; None = T5's default.
    seed: seeds which sentences of a long document are used and the balanced
      subset; examples are a pure function of seed, documents and labels.
    max_per_document: label_fn only: label and keep at most this many
      sentences of a document (None: all).
    max_words: cut texts to their first `max_words` words so that seqio's
      trimming keeps the sentinel (None: no cut).
    balance: keep the same number of examples of every class in each window
      of `window` documents (TFDS examples), as many as its rarest class has;
      a window lacking a class gives none. Off by default.
    window: documents per balancing window.
    overwrite: replace a registered task of the same name; False raises.
  Returns:
    The registered task name.
  """
  who = "register_ppt_single_sentence"
  splits, tfds_splits = _check_source(who, text_file, tfds_name, tfds_splits)
  if (label_fn is None) == (label_key is None):
    raise ValueError(
        f"{who}: pass exactly one label source: label_fn= (your labeller, "
        f"sentence -> class index 0..{SSC_NUM_CLASSES - 1} or None) or "
        f"label_key= (a TFDS feature holding the label, with label_map=).")
  if label_key is not None and text_file is not None:
    raise ValueError(
        f"{who}: label_key= names a TFDS feature; a text file has none. Pass "
        f"label_fn= to label its sentences, or register a sentence<TAB>label "
        f"file with tasks.user_data.register_task_from_files.")
  if label_map is not None and label_key is None:
    raise ValueError(f"{who}: label_map= maps the values of label_key=; "
                     f"with label_fn= return class indices directly.")
  if label_fn is not None and not callable(label_fn):
    raise TypeError(f"{who}: label_fn must be a function sentence -> class "
                    f"index 0..{SSC_NUM_CLASSES - 1} or None, got "
                    f"{label_fn!r}.")
  words = check_label_words(label_words)
  for key, value in (label_map or {}).items():
    _class_index(value, f"label_map[{key!r}]", "map each value to a class "
                 "index or to None (drop)")
  for arg, value in (("max_per_document", max_per_document),
                     ("max_words", max_words), ("window", window)):
    if value is not None and (isinstance(value, bool) or
                              not isinstance(value, int) or value < 1):
      raise ValueError(f"{who}: {arg} must be a positive int"
                       f"{'' if arg == 'window' else ' or None'}, got "
                       f"{value!r}.")

  options = dict(label_words=words, seed=seed, max_words=max_words,
                 balance=balance, window=window)

  def make(split):
    if label_key is not None:
      records = _tfds_rated(tfds_name, tfds_splits[split], text_key, label_key,
                            label_map, tfds_data_dir, max_documents)
      return rated_text_examples(
          records, source=f"TFDS feature {label_key!r}", **options)
    if text_file is not None:
      docs = _file_documents(text_file, split)
    else:
      docs = _tfds_documents(tfds_name, tfds_splits[split], text_key,
                             tfds_data_dir, max_documents)
    return single_sentence_examples(docs, label_fn,
                                    max_per_document=max_per_document,
                                    **options)

  made = {}  # text file: split -> its examples, made once.

  def examples(split):
    if text_file is None:
      return make(split)
    if split not in made:
      made[split] = [{"inputs": e["inputs"], "targets": e["targets"]}
                     for e in make(split)]
    return made[split]

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # the order is fixed by our seed; seqio shuffles the examples after

    def gen():
      for ex in examples(split):
        yield {"inputs": ex["inputs"], "targets": ex["targets"]}

    sig = {k: tf.TensorSpec([], tf.string) for k in ("inputs", "targets")}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)

  count = lambda split: len(examples(split)) if text_file is not None else None
  name = f"{prefix}_{SSC_FORMAT}"
  task = seqio.Task(
      name,
      source=_LazyCountSource(dataset_fn, splits, count),
      output_features=_features(vocabulary),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=_postprocess,
      metric_fns=[user_data.accuracy, user_data.macro_f1])
  user_data._add(task, overwrite)  # pylint: disable=protected-access
  return name
