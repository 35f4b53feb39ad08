"""Tests for tasks.ppt_single_sentence: PPT's labelled single-sentence format."""

import collections
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spot_jax import input_pipeline
from tasks import bundled
from tasks import ppt
from tasks import ppt_single_sentence as pss
from tasks import user_data


_MOOD = {"awful": 0, "poor": 1, "fine": 2, "nice": 3, "superb": 4}


def _mood(sentence):
  """A toy labeller: the first mood word decides; none -> drop."""
  for word, label in _MOOD.items():
    if word in sentence:
      return label
  return None


def test_single_sentence_examples_label_fn():
  docs = [["The soup was awful.", "We sat down.", "Dessert was superb!"],
          ["A fine   view\nfrom the top.", "Service was poor."]]
  examples = list(pss.single_sentence_examples(docs, _mood))
  assert examples == [
      {"inputs": "The soup was awful. <extra_id_0>",
       "targets": "<extra_id_0> terrible", "label": "terrible"},
      {"inputs": "Dessert was superb! <extra_id_0>",
       "targets": "<extra_id_0> great", "label": "great"},
      {"inputs": "A fine view from the top. <extra_id_0>",
       "targets": "<extra_id_0> okay", "label": "okay"},
      {"inputs": "Service was poor. <extra_id_0>",
       "targets": "<extra_id_0> bad", "label": "bad"}]
  assert pss.format_single_sentence("s.", "good") == {
      "inputs": "s. <extra_id_0>", "targets": "<extra_id_0> good"}
  words = ("1", "2", "3", "4", "5")
  clipped = list(pss.single_sentence_examples(
      docs[:1], lambda s: len(s.split()), label_words=words, max_words=2))
  assert [(e["inputs"], e["label"]) for e in clipped] == [  # labels clipped text.
      ("The soup <extra_id_0>", "3"), ("We sat <extra_id_0>", "3"),
      ("Dessert was <extra_id_0>", "3")]
  # max_per_document: a seeded choice of sentences, kept in document order.
  long_doc = [[f"s{i} {w}." for i in range(10) for w in _MOOD]]
  calls = []
  def counting(s):
    calls.append(s)
    return _mood(s)
  picked = list(pss.single_sentence_examples(long_doc, counting, seed=1,
                                             max_per_document=3))
  assert len(picked) == 3 == len(calls)  # labels only what it keeps.
  order = [long_doc[0].index(e["inputs"][:-len(" <extra_id_0>")]) for e in picked]
  assert order == sorted(order)
  again = list(pss.single_sentence_examples(long_doc, _mood, seed=1,
                                            max_per_document=3))
  assert again == picked
  assert picked != list(pss.single_sentence_examples(long_doc, _mood, seed=2,
                                                     max_per_document=3))


def test_single_sentence_balance():
  rng = random.Random(0)
  # Skewed labels: class 4 about 8x as common as class 0.
  weights = [1, 2, 3, 4, 8]
  docs = [[f"d{d}s{i} {rng.choices(list(_MOOD), weights)[0]}."
           for i in range(rng.randint(1, 8))] for d in range(400)]
  plain = list(pss.single_sentence_examples(docs, _mood, max_per_document=None))
  counts = collections.Counter(e["label"] for e in plain)
  assert counts["great"] > 4 * counts["terrible"]
  balanced = list(pss.single_sentence_examples(
      docs, _mood, max_per_document=None, balance=True, window=100, seed=3))
  counts = collections.Counter(e["label"] for e in balanced)
  assert sorted(counts) == sorted(pss.SSC_LABEL_WORDS)
  assert len(set(counts.values())) == 1 and counts["terrible"] > 20
  for ex in balanced:  # a subset of the plain examples, labels untouched.
    assert ex in plain
  assert balanced == list(pss.single_sentence_examples(
      docs, _mood, max_per_document=None, balance=True, window=100, seed=3))
  assert balanced != list(pss.single_sentence_examples(
      docs, _mood, max_per_document=None, balance=True, window=100, seed=4))


def test_single_sentence_task_from_text_file(tmp_path):
  path = tmp_path / "reviews.txt"
  docs = [f"Doc {d} was {w}. Nothing else here.\nIt felt {v}."
          for d, (w, v) in enumerate(zip(list(_MOOD) * 3, list(_MOOD)[::-1] * 3))]
  path.write_text("\n\n".join(docs) + "\n")  # 15 documents, 2 labelled each.
  calls = collections.Counter()
  def label_fn(sentence):
    calls[sentence] += 1
    return _mood(sentence)
  vocab = bundled.get_vocabulary()
  name = pss.register_ppt_single_sentence("test_ppt_ssc", text_file=str(path),
                                          label_fn=label_fn, vocabulary=vocab)
  assert name == "test_ppt_ssc_ssc" and not calls  # nothing labelled yet.
  task = seqio.get_mixture_or_task(name)
  assert task.num_input_examples("train") == 28  # documents 0-8, 10-14.
  assert task.num_input_examples("validation") == 2  # document 9.
  ds = task.get_dataset({"inputs": 32, "targets": 8}, split="validation",
                        shuffle=False, try_in_mem_cache=False)
  rows = list(ds.as_numpy_iterator())
  assert [vocab.decode(r["inputs"].tolist()) for r in rows] == [
      "Doc 9 was superb. <extra_id_0>", "It felt awful. <extra_id_0>"]
  targets = [vocab.decode(r["targets"].tolist()) for r in rows]
  assert targets == ["<extra_id_0> great", "<extra_id_0> terrible"]
  assert rows[0]["targets"][-1] == 1  # eos.
  # 45 sentences (3 a document), each labelled once: counting made the
  # examples, reading reused them.
  assert sum(calls.values()) == 45

  post = [task.postprocess_fn(t, example={}, is_target=True) for t in targets]
  assert post == ["great", "terrible"]
  def score(predictions):
    preds = [task.postprocess_fn(p) for p in predictions]
    out = {}
    for fn in task.metric_fns:
      out.update(fn(post, preds))
    return out
  assert score(["<extra_id_0> great", "<extra_id_0> terrible"]) == {
      "accuracy": 100.0, "macro_f1": 100.0}
  wrong = score(["<extra_id_0> great", "<extra_id_0> good"])
  assert wrong["accuracy"] == 50.0 and wrong["macro_f1"] < 100.0
  # The trainer's path: a seeded, shuffled train split (seqio hands the dataset_fn a seed).
  train = next(input_pipeline.get_batches(name, {"inputs": 32, "targets": 8}, "train", batch_size=4,
                                          seed=3))
  assert train["encoder_input_tokens"].shape == (4, 32)
  assert vocab.decode(train["decoder_target_tokens"][0].tolist()).startswith("<extra_id_0> ")

  with pytest.raises(user_data.UserDataError, match="already registered"):
    pss.register_ppt_single_sentence("test_ppt_ssc", text_file=str(path),
                                      label_fn=label_fn, overwrite=False)


_REVIEWS = {
    "train": [("Loved it.\nWould return.", 5), ("Cold fries.", 1),
              ("It was alright, I guess.", 3), ("Never again!", 1)],
    "test": [("Best pizza in town.", 5), ("Meh.", 2)],
}


def _reviews_as_dataset(builder, split, **kwargs):
  del builder, kwargs
  rows = _REVIEWS[str(split)]
  return tf.data.Dataset.from_tensor_slices({
      "review": {"body": [t for t, _ in rows],
                 "stars": np.array([s for _, s in rows], np.int64)}})


def _raw(task, split):
  ds = task.source.get_dataset(split=split, shuffle=False)
  return [(r["inputs"].decode(), r["targets"].decode())
          for r in ds.as_numpy_iterator()]


def test_single_sentence_task_from_tfds_ratings():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  stars = {1: 0, 2: 1, 3: None, 4: 3, 5: 4}  # 3 stars: dropped.
  with tfds.testing.mock_data(as_dataset_fn=_reviews_as_dataset):
    name = pss.register_ppt_single_sentence(
        "test_ppt_ssc_tfds", tfds_name="yelp_polarity_reviews:0.2.0",
        tfds_splits={"train": "train", "validation": "test"},
        text_key="review/body", label_key="review/stars", label_map=stars,
        vocabulary=bundled.get_vocabulary())
    task = seqio.get_mixture_or_task(name)
    assert task.num_input_examples("train") is None  # streamed, not counted.
    assert _raw(task, "train") == [
        ("Loved it. Would return. <extra_id_0>", "<extra_id_0> great"),
        ("Cold fries. <extra_id_0>", "<extra_id_0> terrible"),
        ("Never again! <extra_id_0>", "<extra_id_0> terrible")]
    assert _raw(task, "validation") == [
        ("Best pizza in town. <extra_id_0>", "<extra_id_0> great"),
        ("Meh. <extra_id_0>", "<extra_id_0> bad")]
    # A label_fn over the TFDS texts' sentences instead.
    pss.register_ppt_single_sentence(
        "test_ppt_ssc_tfds_fn", tfds_name="yelp_polarity_reviews:0.2.0",
        tfds_splits={"train": "train"}, text_key="review/body",
        label_fn=lambda s: 4 if "Loved" in s else None)
    assert _raw(seqio.get_mixture_or_task("test_ppt_ssc_tfds_fn_ssc"), "train") == [
        ("Loved it. <extra_id_0>", "<extra_id_0> great")]
    # A rating label_map does not cover: an error naming the value and fix.
    records = pss._tfds_rated("yelp_polarity_reviews:0.2.0", "train",
                              "review/body", "review/stars", {5: 4}, None, None)
    with pytest.raises(ValueError, match=r"value 1, which label_map does not "
                                         r"map; add it \(map it to None"):
      list(records)


def test_single_sentence_errors(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("One. Two.\n")
  reg = lambda **kw: pss.register_ppt_single_sentence(
      "test_ppt_ssc_bad", **{"text_file": str(path), **kw})
  with pytest.raises(ValueError, match="exactly one label source"):
    reg()
  with pytest.raises(ValueError, match="exactly one label source"):
    pss.register_ppt_single_sentence("x", tfds_name="d", label_fn=_mood,
                                     label_key="label")
  with pytest.raises(ValueError, match="exactly one of text_file= or tfds_name="):
    pss.register_ppt_single_sentence("x", label_fn=_mood)
  with pytest.raises(ValueError, match="a text file has none.*label_fn="):
    reg(label_key="label")
  with pytest.raises(ValueError, match="label_map= maps the values of label_key="):
    reg(label_fn=_mood, label_map={1: 0})
  with pytest.raises(TypeError, match="label_fn must be a function"):
    reg(label_fn="positive")
  with pytest.raises(ValueError, match=r"exactly 5 words.*got 2"):
    reg(label_fn=_mood, label_words=("bad", "good"))
  with pytest.raises(ValueError, match="must be distinct"):
    reg(label_fn=_mood, label_words=("a", "b", "c", "d", "a"))
  with pytest.raises(ValueError, match=r"label_map\[5\] gave class 5, outside 0..4"):
    pss.register_ppt_single_sentence("x", tfds_name="d", label_key="stars",
                                     label_map={1: 0, 5: 5})
  with pytest.raises(ValueError, match="max_words must be a positive int"):
    reg(label_fn=_mood, max_words=0)
  with pytest.raises(FileNotFoundError):
    reg(text_file=str(tmp_path / "missing.txt"), label_fn=_mood)
  with pytest.raises(ValueError, match="register_ppt_single_sentence"):
    ppt.register_ppt_tasks("x", text_file=str(path), formats=["ssc"])
  # Labels are checked as they are made: out of range, not an int.
  docs = [["One.", "Two."]]
  with pytest.raises(ValueError, match=r"label_fn\('One.'\) gave class 5, "
                                       r"outside 0..4.*stars - 1"):
    list(pss.single_sentence_examples(docs, lambda s: 5))
  for bad in (2.0, "good", True):
    with pytest.raises(TypeError, match="a label must be an int class index"):
      list(pss.single_sentence_examples(docs, lambda s, b=bad: b))
  with pytest.raises(TypeError, match="TFDS feature 'stars' gave '5 stars'.*"
                                      "pass label_map="):
    list(pss.rated_text_examples([("Nice.", "5 stars")],
                                 source="TFDS feature 'stars'"))
  # Through the registered task, at counting time.
  reg(label_fn=lambda s: 7)
  with pytest.raises(ValueError, match="outside 0..4"):
    seqio.get_mixture_or_task("test_ppt_ssc_bad_ssc").num_input_examples("train")
