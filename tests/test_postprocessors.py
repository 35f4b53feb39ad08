"""Postprocessors turn decoded text into metric inputs."""
import importlib.util  # noqa: F401

import numpy as np

from tasks import postprocessors as post


def test_string_label():
  names = ("entailment", "not_entailment")
  assert post.string_label(b"not_entailment", names) == 1
  assert post.string_label(" entailment ", names) == 0
  assert post.string_label("maybe", names) == -1


def test_string_to_float():
  assert post.string_to_float(b"3.8") == 3.8
  assert post.string_to_float("three") == -1.0


def test_option_index():
  ex = {"options": np.array([b"trophy", b"case"]), "label": np.int32(1)}
  assert post.option_index(b"case", example=ex, is_target=True) == 1
  assert post.option_index(b"trophy", example=ex) == 0
  assert post.option_index(b"box", example=ex) == -1
  # Two options of one text (DPR has such pairs): spelling the gold one is right, as T5's string compare.
  same = {"options": np.array([b"the man", b"the man"]), "label": np.int32(1)}
  assert post.option_index(b"the man", example=same) == 1
  assert post.option_index(b"the man", example={**same, "label": np.int32(-1)}) == 0  # unlabelled


def test_qa_and_record():
  ex = {"answers": np.array([b"me", b"Mario"]), "idx/passage": np.int32(3),
        "idx/query": np.int32(4)}
  assert post.qa(b"Mario", example=ex) == "Mario"
  assert post.qa(b"me", example=ex, is_target=True) == ["me", "Mario"]
  assert post.record(b"me", example=ex, is_target=True) == {
      "group": (3, 4), "answers": ["me", "Mario"]}


def test_multirc():
  ex = {"idx/paragraph": np.int32(0), "idx/question": np.int32(2)}
  assert post.multirc(b"True", example=ex, is_target=True) == {"value": 1, "group": (0, 2)}
  assert post.multirc(b"nope", example=ex) == {"value": -1}


def test_rank_classification():
  ex = {"idx": np.array([5, 2], np.int32), "is_correct": np.bool_(True)}
  assert post.rank_classification(b"x", example=ex, is_target=True) == (5, 2, True)
  assert post.rank_classification(-1.5, example=ex) == -1.5
