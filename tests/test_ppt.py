"""Tests for tasks.ppt: PPT pre-training formats, balance, determinism."""

import collections
import random

import pytest
import seqio

from spot_jax import input_pipeline
from tasks import bundled
from tasks import ppt

DOCS = [
    ["a1.", "a2.", "a3.", "a4."],
    ["b1.", "b2.", "b3."],
    ["c1.", "c2.", "c3.", "c4.", "c5."],
    ["d1."],
]


def _where(sentence, docs=DOCS):
  for d, doc in enumerate(docs):
    if sentence in doc:
      return d, doc.index(sentence)
  raise AssertionError(sentence)


def _many_docs(n=300, seed=1):
  rng = random.Random(seed)
  return [[f"s{d}_{i}." for i in range(rng.randint(1, 9))] for d in range(n)]


def test_formats_exact_text():
  assert ppt.format_nsp3("It rains.", "We stay in.", "yes") == {
      "inputs": "It rains. <extra_id_0> We stay in.",
      "targets": "<extra_id_0> yes"}
  assert ppt.format_selection("s.", ["x.", "y.", "z."], 1) == {
      "inputs": "s. <extra_id_0> A. x. B. y. C. z.",
      "targets": "<extra_id_0> B"}
  assert ppt.format_multiple_choice("Is it?", ["no", "yes"], 1) == {
      "inputs": "question: Is it? options: A. no B. yes answer: <extra_id_0>",
      "targets": "<extra_id_0> B"}
  with pytest.raises(ValueError, match="2..16"):
    ppt.format_multiple_choice("q", ["x"] * 17, 0)


def test_read_documents(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("First one. Second one!\nThird\n\n\nOther doc? Yes.\n  \nLast.\n")
  assert ppt.read_documents(str(path)) == [
      ["First one.", "Second one!", "Third"], ["Other doc?", "Yes."], ["Last."]]


def test_nsp3_hand_written_documents():
  examples = list(ppt.nsp3_examples(DOCS, seed=0))
  # a: 3, b: 2, c: 4 examples; d has one sentence (only a source of "no").
  assert len(examples) == 9
  assert [(e["inputs"], e["targets"]) for e in examples] == [
      ("a2. <extra_id_0> a4.", "<extra_id_0> maybe"),
      ("a2. <extra_id_0> a3.", "<extra_id_0> yes"),
      ("a3. <extra_id_0> c5.", "<extra_id_0> no"),
      ("b3. <extra_id_0> b1.", "<extra_id_0> maybe"),
      ("b2. <extra_id_0> d1.", "<extra_id_0> no"),
      ("c1. <extra_id_0> c2.", "<extra_id_0> yes"),
      ("c4. <extra_id_0> d1.", "<extra_id_0> no"),
      ("c3. <extra_id_0> c5.", "<extra_id_0> maybe"),
      ("c4. <extra_id_0> c5.", "<extra_id_0> yes")]
  for ex in examples:
    s1, s2 = ex["inputs"].split(" <extra_id_0> ")
    (d1, i1), (d2, i2) = _where(s1), _where(s2)
    assert ex["targets"] == "<extra_id_0> " + ex["label"]
    if ex["label"] == "yes":
      assert d1 == d2 and i2 == i1 + 1
    elif ex["label"] == "maybe":
      assert d1 == d2 and abs(i1 - i2) >= 2
    else:
      assert d1 != d2
  assert collections.Counter(e["label"] for e in examples) == {
      "yes": 3, "maybe": 3, "no": 3}


def test_nsp3_balance_and_determinism():
  docs = _many_docs()
  examples = list(ppt.nsp3_examples(docs, seed=3, window=50))
  counts = collections.Counter(e["label"] for e in examples)
  assert len(examples) > 1000
  assert max(counts.values()) - min(counts.values()) <= 1
  assert examples == list(ppt.nsp3_examples(docs, seed=3, window=50))
  assert examples != list(ppt.nsp3_examples(docs, seed=4, window=50))


def test_selection_hand_written_documents():
  examples = list(ppt.selection_examples(DOCS, seed=0, num_options=3))
  assert [(e["inputs"], e["targets"]) for e in examples] == [
      ("a1. <extra_id_0> A. d1. B. a2. C. a3.", "<extra_id_0> B"),
      ("a2. <extra_id_0> A. a1. B. d1. C. a3.", "<extra_id_0> C"),
      ("a3. <extra_id_0> A. a4. B. a2. C. b2.", "<extra_id_0> A"),
      ("b1. <extra_id_0> A. a1. B. b2. C. b3.", "<extra_id_0> B"),
      ("b2. <extra_id_0> A. b3. B. c2. C. b1.", "<extra_id_0> A"),
      ("c1. <extra_id_0> A. d1. B. c5. C. c2.", "<extra_id_0> C"),
      ("c2. <extra_id_0> A. c4. B. c3. C. a4.", "<extra_id_0> B"),
      ("c3. <extra_id_0> A. b2. B. c5. C. c4.", "<extra_id_0> C"),
      ("c4. <extra_id_0> A. c5. B. c1. C. a3.", "<extra_id_0> A")]


def test_selection_six_options():
  examples = list(ppt.selection_examples(_many_docs(), seed=0))
  letters = collections.Counter(e["label"] for e in examples)
  assert sorted(letters) == list("ABCDEF")
  assert max(letters.values()) - min(letters.values()) <= 1
  for ex in examples[:200]:
    s1, rest = ex["inputs"].split(" <extra_id_0> ")
    parts = rest.split(" ")  # "A. x. B. y. ..." (sentences have no spaces)
    opts = dict(zip(parts[0::2], parts[1::2]))
    assert list(opts) == [f"{l}." for l in "ABCDEF"] and len(set(opts.values())) == 6
    answer = opts[ex["label"] + "."]
    (d1, i1), (d2, i2) = _where(s1, DOCS_MANY), _where(answer, DOCS_MANY)
    assert d1 == d2 and i2 == i1 + 1


DOCS_MANY = _many_docs()


def test_unified_multiple_choice_option_counts():
  examples = list(ppt.multiple_choice_examples(DOCS_MANY, seed=0))
  sizes = collections.Counter()
  for ex in examples:
    assert ex["inputs"].startswith("question: ")
    assert ex["inputs"].endswith(" answer: <extra_id_0>")
    n = ex["inputs"].split(" options: ")[1].count(".") // 2
    assert 2 <= n <= 16 and ex["label"] in ppt.LETTERS[:n]
    sizes[n] += 1
  assert sorted(sizes) == list(range(2, 17))


def test_registered_tasks_batch():
  names = ppt.register_ppt_tasks("test_ppt_bundled",
                                 text_file=bundled.CORPUS_PATH,
                                 vocabulary=bundled.get_vocabulary())
  assert names == ["test_ppt_bundled_nsp3", "test_ppt_bundled_nss",
                   "test_ppt_bundled_mc"]
  lengths = {"inputs": 256, "targets": 8}
  vocab = bundled.get_vocabulary()
  for name in names:
    task = seqio.get_mixture_or_task(name)
    assert task.num_input_examples("train") > 1000
    ds = task.get_dataset(lengths, split="validation", shuffle=False,
                          try_in_mem_cache=False)
    batch = next(seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
                 .batch(2).as_numpy_iterator())
    assert batch["encoder_input_tokens"].shape == (2, 256)
    target = vocab.decode(batch["decoder_target_tokens"][0].tolist())
    assert target.startswith("<extra_id_0>")
    assert task.postprocess_fn(target) in ppt.NSP_LABELS + tuple(ppt.LETTERS)
    # The trainer's path: a seeded, shuffled, sharded train split (seqio hands the dataset_fn a seed).
    train = next(input_pipeline.get_batches(name, {"inputs": 64, "targets": 8}, "train", batch_size=4,
                                            seed=3, num_shards=2, shard_index=1))
    assert train["encoder_input_tokens"].shape == (2, 64)
  with pytest.raises(ValueError, match="exactly one"):
    ppt.register_ppt_tasks("x", text_file="a", tfds_name="b")
