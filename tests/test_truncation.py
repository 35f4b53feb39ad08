"""Examples cut to TASK_FEATURE_LENGTHS, counted over a whole evaluation or inference split.

The start-up check reads a task's first 64 examples; these tests put the long examples after them,
where only a count over the whole split finds them. (Training's count over its batches is tested in
test_input_pipeline.py, through `get_batches`.)"""
import logging

import jax
import numpy as np
import seqio

from conftest_tasks import byte_text_task
from spot_jax import evaluation, inference, truncation
from spot_jax import model as M
from spot_jax.config import size_config

LENGTHS = {"inputs": 16, "targets": 4}


def _rows(n=200, every=10, start=100):
  """Short inputs, 40 bytes from `start` on at every `every`-th example, and every 7th input exactly
  as long as LENGTHS allows (15 bytes + EOS: it fills the length and is not cut)."""
  return [{"inputs": "x" * (40 if i >= start and i % every == 0 else 15 if i % 7 == 0 else 4),
           "targets": "no"} for i in range(n)]


def _examples(name, lengths=LENGTHS, split="validation"):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1, use_cached=False)
  return task, list(ds.as_numpy_iterator())


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "spot_jax"]


def test_count_tells_cut_from_exact_fit_over_every_example():
  task, examples = _examples(byte_text_task("spot_test_count_late", _rows()))
  assert sum(len(e["inputs"]) == 16 for e in examples) > 10  # exact fits and cuts fill the length alike
  assert truncation.count_cut_examples(task, examples, LENGTHS) == {
      "inputs": {"length": 16, "cut": 10, "seen": 200, "needed": 41, "merged": []}}
  assert truncation.count_cut_examples(task, examples, {"inputs": 41, "targets": 4}) == {}
  assert truncation.count_cut_examples(task, examples, None) == {}


def test_count_names_distinct_targets_the_cut_makes_one():
  rows = [{"inputs": "a", "targets": t} for t in ("very negative", "very positive", "no", "very nice")] * 3
  task, examples = _examples(byte_text_task("spot_test_count_merged", rows))
  (report,) = truncation.count_cut_examples(task, examples, {"inputs": 8, "targets": 3}).values()
  assert report["cut"] == 9 and report["seen"] == 12 and report["needed"] == 14, report
  assert report["merged"] == [("very negative", "very positive"), ("very negative", "very nice")], report


def test_evaluation_counts_cut_examples_after_the_first_64(caplog):
  name = byte_text_task("spot_test_eval_count_late", _rows(), splits=("validation",),
                        metric_fns=[lambda targets, predictions: {"n": len(targets)}])
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    evaluation.PromptEvaluator(name, LENGTHS, batch_size=8)
  (msg,) = _warnings(caplog)
  assert (f"task {name!r}: 10 of the 200 'validation' examples have inputs longer than "
          "TASK_FEATURE_LENGTHS['inputs']=16 tokens (up to 41 with EOS); seqio cuts them to 16 (keeping EOS), "
          "so its metrics come from cut inputs. Raise it to at least 41: "
          "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 41, 'targets': 4}\"") == msg, msg
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="spot_jax"):  # only the examples evaluated are counted
    evaluation.PromptEvaluator(name, LENGTHS, batch_size=8, num_examples=120)
  (msg,) = _warnings(caplog)
  assert "2 of the 120 'validation' examples have inputs longer" in msg, msg
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    evaluation.PromptEvaluator(name, {"inputs": 41, "targets": 4}, batch_size=8)
  assert not _warnings(caplog)


def test_predictions_count_their_cut_inputs(caplog):
  vocab = seqio.ByteVocabulary()
  config = size_config("tiny", vocab_size=vocab.vocab_size, dropout_rate=0.0, num_encoder_layers=1,
                       num_decoder_layers=1, relative_attention_num_buckets=8,
                       relative_attention_max_distance=16)
  params = M.init_params(config, jax.random.PRNGKey(0))
  prompt = np.zeros((2, config.d_model), np.float32)
  name = byte_text_task("spot_test_infer_count_late", _rows(n=80, every=5, start=70),
                        splits=("validation",))
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    rows = inference.predict_task(name, config, params, prompt, LENGTHS, batch_size=40)
  assert len(rows) == 80 and rows[70]["inputs"] == "x" * 40  # the row keeps the whole text
  (msg,) = _warnings(caplog)
  assert (f"task {name!r}: 2 of the 80 'validation' examples have inputs longer than "
          "TASK_FEATURE_LENGTHS['inputs']=16 tokens (up to 41 with EOS); seqio cuts them to 16 (keeping EOS), "
          "so its predictions come from cut inputs.") in msg, msg
