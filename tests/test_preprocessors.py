"""Preprocessors give the exact T5 text for hand-written examples."""
import functools
import importlib.util  # noqa: F401
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
import conftest_tasks as ct  # noqa: E402
from tasks import preprocessors as pre  # noqa: E402

run = ct.run_text_preprocessor


def test_glue_rte():
  (out,) = run(functools.partial(pre.glue, benchmark_name="rte",
                                 label_names=("entailment", "not_entailment")),
               {"sentence1": "A cat sat.", "sentence2": "An animal sat.",
                "label": np.int64(0), "idx": np.int32(7)})
  assert out["inputs"] == b"rte sentence1: A cat sat. sentence2: An animal sat."
  assert out["targets"] == b"entailment"
  assert out["idx"] == 7 and out["label"] == 0
  assert list(out["options"]) == [b"entailment", b"not_entailment"]


def test_glue_keeps_the_text_as_t5_joins_it():
  # T5's `glue` joins with tf.strings.join(separator=' '): no whitespace collapsed (only SQuAD's
  # `_string_join` collapses); MultiRC's <br> becomes a space next to the one already there.
  (out,) = run(functools.partial(pre.glue, benchmark_name="rte",
                                 label_names=("entailment", "not_entailment")),
               {"sentence1": "A cat  sat.\nIt purred.", "sentence2": "An animal sat.",
                "label": np.int64(0), "idx": np.int32(7)})
  assert out["inputs"] == b"rte sentence1: A cat  sat.\nIt purred. sentence2: An animal sat."
  (out,) = run(functools.partial(pre.glue, benchmark_name="multirc", label_names=("False", "True"),
                                 feature_names=("question", "answer", "paragraph")),
               {"paragraph": "Hi. <br>Bye.", "question": "Q?", "answer": "A", "label": np.int64(1),
                "idx": {"paragraph": np.int32(1), "question": np.int32(2), "answer": np.int32(3)}})
  assert out["inputs"] == b"multirc question: Q? answer: A paragraph: Hi.  Bye."


def test_glue_sorted_keys_and_unknown_label():
  (out,) = run(functools.partial(pre.glue, benchmark_name="mnli",
                                 label_names=("entailment", "neutral", "contradiction")),
               {"premise": "P.", "hypothesis": "H.", "label": np.int64(-1),
                "idx": np.int32(0)})
  assert out["inputs"] == b"mnli hypothesis: H. premise: P."
  assert out["targets"] == b"<unk>" and out["label"] == -1


def test_multirc_strips_markup():
  (out,) = run(functools.partial(pre.glue, benchmark_name="multirc",
                                 label_names=("False", "True"),
                                 feature_names=("question", "answer", "paragraph")),
               {"paragraph": "<b>Sent 1: </b>Hi.<br><b>Sent 2: </b>Bye.",
                "question": "Q?", "answer": "A", "label": np.int64(1),
                "idx": {"paragraph": np.int32(1), "question": np.int32(2),
                        "answer": np.int32(3)}})
  assert out["inputs"] == b"multirc question: Q? answer: A paragraph: Sent 1: Hi. Sent 2: Bye."
  assert out["targets"] == b"True"
  assert (out["idx/paragraph"], out["idx/question"], out["idx/answer"]) == (1, 2, 3)


def test_multirc_strips_markup_from_every_field_as_t5():
  (out,) = run(functools.partial(pre.glue, benchmark_name="multirc",
                                 label_names=("False", "True"),
                                 feature_names=("question", "answer", "paragraph")),
               {"paragraph": "P.", "question": "<b>Who</b> left?", "answer": "Bob<br>Smith",
                "label": np.int64(0),
                "idx": {"paragraph": np.int32(0), "question": np.int32(0),
                        "answer": np.int32(0)}})
  assert out["inputs"] == b"multirc question: Who left? answer: Bob Smith paragraph: P."


@pytest.mark.parametrize("score,text", [(3.71, b"3.8"), (0.0, b"0.0"), (4.95, b"5.0"), (4.9, b"4.8"),
                                        (2.5, b"2.4")])
def test_stsb(score, text):
  (out,) = run(pre.stsb, {"sentence1": "a", "sentence2": "b",
                          "label": np.float32(score), "idx": np.int32(0)})
  assert out["inputs"] == b"stsb sentence1: a sentence2: b"
  assert out["targets"] == text


def test_wsc_marks_spans():
  (out,) = run(pre.wsc, {
      "text": "Mark told Pete many lies about himself, which Pete included in his book.",
      "span1_index": np.int32(0), "span1_text": "Mark",
      "span2_index": np.int32(11), "span2_text": "his",
      "label": np.int64(0), "idx": np.int32(0)})
  assert out["inputs"] == (b"wsc text: * Mark * told Pete many lies about himself, "
                           b"which Pete included in # his # book.")
  assert out["targets"] == b"False"


# T5's `wnli_simple` (t5/data/preprocessors.py), worked by hand for each pair: the words of both
# sentences lower-cased, split on single spaces, one trailing . , ? ! dropped; each pronoun of
# sentence1 scored by how many words right before it (read backwards) and right after it sentence2
# holds as a substring; the first best starred in sentence1 (its word split on single spaces, a
# trailing mark moved out: "her." -> "*her* ."); the target is what sentence2 has in the pronoun's
# place (regex "<before> (.+) <after>", then "^(.+) <after>", then "<before> (.+)$"), cut to its last
# article, found again in sentence2 as written, without a trailing mark or "'s".
WNLI_T5 = [
    # T5's docstring example: "it" scores 2 + 2; "the worm (.+) was tasty" fails, "^(.+) was tasty" holds.
    ("The fish ate the worm. It was tasty.", "The worm was tasty.",
     "wsc: The fish ate the worm. *It* was tasty.", "The worm"),
    # Only the words after match (3); the candidate is written as sentence2 writes it.
    ("The trophy doesn't fit into the brown suitcase because it is too large.",
     "The trophy is too large.",
     "wsc: The trophy doesn't fit into the brown suitcase because *it* is too large.", "The trophy"),
    # "him" scores 0, "he" 3: the best pronoun, not the first.
    ("John couldn't see the stage with Billy in front of him because he is so short.",
     "John is so short.",
     "wsc: John couldn't see the stage with Billy in front of him because *he* is so short.", "John"),
    # A possessive pronoun: the target loses its "'s".
    ("Bill passed the gameboy to John because his turn was over.", "Bill's turn was over.",
     "wsc: Bill passed the gameboy to John because *his* turn was over.", "Bill"),
    # The pronoun with a full stop: "*her* ."; "thanked (.+)" takes "anna", sentence2 has "Anna.".
    ("Mary gave the book to Anna, and thanked her.", "Mary thanked Anna.",
     "wsc: Mary gave the book to Anna, and thanked *her* .", "Anna"),
    # "^(.+) was tasty" takes "so the worm": cut to its last article.
    ("The fish ate the worm. It was tasty.", "So the worm was tasty.",
     "wsc: The fish ate the worm. *It* was tasty.", "the worm"),
    # "he" and "him" both score 2: T5's max() keeps the first.
    ("Tom told Ben that he should thank him.", "Tom should thank Ben.",
     "wsc: Tom told Ben that *he* should thank him.", "Tom"),
]


@pytest.mark.parametrize("sentence1,sentence2,inputs,targets", WNLI_T5)
def test_wnli_simple_matches_t5(sentence1, sentence2, inputs, targets):
  assert pre.wnli_simple_text(sentence1, sentence2) == (inputs, targets)
  (out,) = run(pre.wnli_simple, {"sentence1": sentence1, "sentence2": sentence2,
                                 "label": np.int64(1), "idx": np.int32(4)})
  assert (out["inputs"].decode(), out["targets"].decode()) == (inputs, targets)
  assert out["premise"].decode() == sentence1 and out["hypothesis"].decode() == sentence2
  assert out["label"] == 1 and out["label"].dtype == np.int32 and out["idx"] == 4


def test_wnli_simple_where_t5_would_stop():
  # No pronoun (T5's max() of nothing fails): no star, an empty target.
  assert pre.wnli_simple_text("Dogs bark.", "Cats meow.") == ("wsc: Dogs bark.", "")
  # A sentence2 word that is no valid regex ("(quietly"; T5 puts the words in its pattern unescaped
  # and fails): matched literally.
  assert pre.wnli_simple_text("Then she (quietly left.", "Then Ann (quietly left.") == (
      "wsc: Then *she* (quietly left.", "Ann")
  # Unlabelled test rows keep label -1.
  (out,) = run(pre.wnli_simple, {"sentence1": "The fish ate the worm. It was tasty.",
                                 "sentence2": "The worm was tasty.", "label": np.int64(-1),
                                 "idx": np.int32(0)})
  assert out["label"] == -1 and out["targets"] == b"The worm"


def test_copa():
  (out,) = run(pre.copa, {"premise": "The man broke his toe.", "question": "cause",
                          "choice1": "He dropped a hammer.", "choice2": "He sang.",
                          "label": np.int64(0), "idx": np.int32(0)})
  assert out["inputs"] == (b"copa choice1: He dropped a hammer. choice2: He sang. "
                           b"premise: The man broke his toe. question: cause")
  assert out["targets"] == b"choice1"


def test_record_one_example_per_answer():
  outs = run(pre.record, {
      "passage": "Obama met Merkel.\n@highlight\nThey talked\n@highlight\nNews",
      "query": "@placeholder met Merkel.", "entities": ["Obama", "Merkel"],
      "answers": ["Obama", "Barack Obama"],
      "idx": {"passage": np.int32(4), "query": np.int32(5)}})
  assert [o["targets"] for o in outs] == [b"Obama", b"Barack Obama"]
  assert outs[0]["inputs"] == (b"record query: @placeholder met Merkel. entities: Obama, "
                               b"Merkel passage: Obama met Merkel. They talked. News")
  assert list(outs[1]["answers"]) == [b"Obama", b"Barack Obama"]
  assert (outs[1]["idx/passage"], outs[1]["idx/query"]) == (4, 5)


def test_record_without_answers():
  ds = tf.data.Dataset.from_tensors({
      "passage": "P", "query": "Q", "entities": tf.constant(["E"]),
      "answers": tf.constant([], tf.string),
      "idx": {"passage": np.int32(0), "query": np.int32(0)}})
  (out,) = list(pre.record(ds).as_numpy_iterator())
  assert out["targets"] == b"<unk>"


def test_squad_pads_punctuation():
  (out,) = run(pre.squad, {"id": "x", "title": "t", "question": "Who's there?",
                           "context": "It's me, Mario.",
                           "answers": {"text": ["me", "Mario"], "answer_start": [5, 9]}})
  assert out["inputs"] == b"question: Who ' s there ? context: It ' s me , Mario . "
  assert out["targets"] == b"me"
  assert list(out["answers"]) == [b"me", b"Mario"]


def test_squad_pads_ascii_punctuation_only_as_t5():
  # T5's _pad_punctuation pads RE2 [[:punct:]] (ASCII, "_" included): "é" and
  # non-ASCII marks such as ’ “ — are left inside their words.
  (out,) = run(pre.squad, {
      "id": "x", "title": "t", "question": "Beyoncé’s “Halo”?",
      "context": "It won $5_000 — in 2009.",
      "answers": {"text": ["$5_000", "Beyoncé."], "answer_start": [7, 0]}})
  assert out["inputs"].decode() == (
      "question: Beyoncé’s “Halo” ? context: It won $ 5 _ 000 "
      "— in 2009 . ")
  assert [a.decode() for a in out["answers"]] == [" $ 5 _ 000", "Beyoncé . "]


def test_multiple_choice_winogrande():
  (out,) = run(pre.winogrande, {"sentence": "The trophy didn't fit because _ was big.",
                                "option1": "trophy", "option2": "case",
                                "label": np.int64(0)})
  assert out["inputs"] == (b"winogrande sentence: The trophy didn't fit because _ was big. "
                           b"options: (A) trophy (B) case")
  assert out["targets"] == b"trophy"


def test_race_one_example_per_question():
  outs = run(pre.race, {"article": "Art.", "questions": ["Q1?", "Q2?"],
                        "answers": ["B", "A"],
                        "options": [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
                        "example_id": "1"})
  assert [o["inputs"] for o in outs] == [
      b"race question: Q1? article: Art. options: (A) a (B) b (C) c (D) d",
      b"race question: Q2? article: Art. options: (A) e (B) f (C) g (D) h"]
  assert [o["targets"] for o in outs] == [b"b", b"e"]
  assert [o["label"] for o in outs] == [1, 0]


def test_nli_and_single_text():
  (out,) = run(functools.partial(pre.nli, benchmark_name="anli_r1",
                                 label_names=("entailment", "neutral", "contradiction"),
                                 premise_key="context"),
               {"context": "C.", "hypothesis": "H.", "label": np.int64(2), "uid": "u"})
  assert out["inputs"] == b"anli_r1 hypothesis: H. context: C."  # the SPoT code's form
  assert out["targets"] == b"contradiction"
  (out,) = run(functools.partial(pre.single_text_classification, benchmark_name="yelp_polarity_reviews",
                                 text_key="text", field_name="text",
                                 label_names=("negative", "positive")),
               {"text": "Great  food!\nReally.", "label": np.int64(1)})
  assert out["inputs"] == b"yelp_polarity_reviews text: Great food! Really."  # runs collapsed, as T5
  assert out["targets"] == b"positive"


def test_random_spans_helper_matches_t5():
  assert pre.random_spans_tokens_length(512) == (568, 114)


def test_noise_mask_density_and_sentinels():
  tf.random.set_seed(0)
  mask = pre.random_spans_noise_mask(tf.constant(100)).numpy()
  assert mask.shape == (100,) and mask.sum() == 15
  tokens = tf.constant([10, 11, 12, 13, 14, 15])
  m = tf.constant([False, True, True, False, True, False])
  assert list(pre.sentinel_replace(tokens, m, 100).numpy()) == [10, 99, 13, 98, 15]
  assert list(pre.sentinel_replace(tokens, tf.logical_not(m), 100).numpy()) == [
      99, 11, 12, 98, 14, 97]
