"""seqio evaluation with greedy decoding and rank-classification scoring on the tiny model.

Expected metrics are computed independently (tokenizing by hand, decoding / scoring directly) and the
targets are chosen from the model's own outputs so that the accuracies are neither 0 nor 100.
"""
import functools
import json
import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from spot_jax import decode as D
from spot_jax import evaluation as E
from spot_jax import model as M
from spot_jax import scoring as S
from spot_jax.config import size_config

VOCAB = seqio.ByteVocabulary()
CFG = size_config("tiny", vocab_size=VOCAB.vocab_size, dropout_rate=0.0, num_encoder_layers=1,
                  num_decoder_layers=1,
                  relative_attention_num_buckets=8, relative_attention_max_distance=16)
LENGTHS = {"inputs": 16, "targets": 6}
BATCH = 5
PREDICT, RANK, MIX = "spot_test_eval_predict", "spot_test_eval_rank", "spot_test_eval_mix"
INPUTS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
RANK_INPUTS = ["red apple", "blue sky", "green leaf", "dark night"]
OPTIONS = ["yes", "no", "maybe"]


def _features():
  return {k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")}


def _enc(texts):
  enc = np.zeros((len(texts), LENGTHS["inputs"]), np.int32)
  for r, t in enumerate(texts):
    ids = VOCAB.encode(t) + [1]
    enc[r, :len(ids)] = ids
  return enc


def _tgt(texts):
  tgt = np.zeros((len(texts), LENGTHS["targets"]), np.int32)
  for r, t in enumerate(texts):
    ids = (VOCAB.encode(t) + [1])[:LENGTHS["targets"]]
    tgt[r, :len(ids)] = ids
  return tgt


def accuracy(targets, predictions):
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def rank_target(text, example=None, is_target=False):
  if is_target:
    return int(example["idx"][0]), bool(example["is_correct"])
  return text


def rank_accuracy(targets, scores):
  best = {}
  for (ex, correct), s in zip(targets, scores):
    if ex not in best or s > best[ex][0]:
      best[ex] = (s, correct)
  return {"rank_accuracy": 100.0 * float(np.mean([c for _, c in best.values()]))}


def _register(name, rows, metric_fns, postprocess_fn=None):
  for registry in (seqio.MixtureRegistry, seqio.TaskRegistry):
    if name in registry.names():
      registry.remove(name)

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in rows[0]})

  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=_features(), metric_fns=metric_fns, postprocess_fn=postprocess_fn)


@pytest.fixture(scope="module")
def setup():
  params = M.init_params(CFG, jax.random.PRNGKey(0))
  prompt = np.random.RandomState(0).normal(size=(3, CFG.d_model)).astype(np.float32)
  # Predict task: even examples' targets are what the model says, odd ones a wrong string.
  tokens = D.greedy_decode(CFG, params, prompt, _enc(INPUTS), LENGTHS["targets"])
  said = [VOCAB.decode(list(t)) for t in tokens]
  targets = [s if i % 2 == 0 else "#wrong" for i, s in enumerate(said)]
  _register(PREDICT, [{"inputs": i, "targets": t} for i, t in zip(INPUTS, targets)], [accuracy])
  # Rank task: even examples label the best-scored option, odd ones the worst.
  rows_in = [i for i in RANK_INPUTS for _ in OPTIONS]
  rows_opt = OPTIONS * len(RANK_INPUTS)
  scores = S.score(CFG, params, prompt, _enc(rows_in), _tgt(rows_opt)).reshape(len(RANK_INPUTS), -1)
  labels = [int(np.argmax(s)) if e % 2 == 0 else int(np.argmin(s)) for e, s in enumerate(scores)]
  rows = [{"inputs": i, "targets": o, "idx": np.array([e, k], np.int32), "is_correct": k == labels[e]}
          for e, i in enumerate(RANK_INPUTS) for k, o in enumerate(OPTIONS)]
  _register(RANK, rows, [rank_accuracy], rank_target)
  if MIX in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(MIX)
  seqio.MixtureRegistry.add(MIX, [PREDICT, RANK], default_rate=1.0)
  return params, prompt, said


def test_mixture_predict_and_rank_classification(setup, tmp_path, monkeypatch):
  params, prompt, said = setup
  calls = []
  real_score = S.score
  monkeypatch.setattr(S, "score", lambda *a, **k: calls.append(a[4].shape) or real_score(*a, **k))
  results = E.evaluate(MIX, CFG, params, prompt, LENGTHS, batch_size=BATCH, step=7,
                       log_dir=str(tmp_path), reuse=False)
  assert results[PREDICT]["accuracy"] == pytest.approx(100.0 * 4 / 7)
  assert results[RANK]["rank_accuracy"] == pytest.approx(50.0)
  assert all(isinstance(v, float) for m in results.values() for v in m.values())
  assert calls == [(BATCH, LENGTHS["targets"])] * 3  # 12 rows in padded batches of 5; predict task unscored
  # seqio's JSON logger wrote the metrics and the decoded predictions.
  with open(os.path.join(tmp_path, f"{PREDICT}-metrics.jsonl")) as f:
    assert json.loads(f.readline())["step"] == 7
  with open(os.path.join(tmp_path, f"{PREDICT}-000007.jsonl")) as f:
    assert [json.loads(line)["prediction"] for line in f] == said


def test_evaluator_is_reused_and_prompt_matters(setup):
  params, prompt, _ = setup
  E._EVALUATORS.clear()  # pylint: disable=protected-access
  first = E.evaluate(PREDICT, CFG, params, prompt, LENGTHS, batch_size=BATCH)
  assert len(E._EVALUATORS) == 1  # pylint: disable=protected-access
  other = E.evaluate(PREDICT, CFG, params, prompt * 0.0 + 5.0, LENGTHS, batch_size=BATCH)
  assert len(E._EVALUATORS) == 1  # pylint: disable=protected-access
  assert first[PREDICT]["accuracy"] == pytest.approx(100.0 * 4 / 7)
  assert other[PREDICT]["accuracy"] != first[PREDICT]["accuracy"]


def test_predict_task_rows_and_errors(setup):
  params, prompt, said = setup
  rows = E.predict_task(PREDICT, CFG, params, prompt, LENGTHS, batch_size=BATCH)
  assert [r["inputs"] for r in rows] == INPUTS
  assert [r["prediction"] for r in rows] == said
  assert rows[1]["targets"] == "#wrong"
  with pytest.raises(ValueError, match="mixture"):
    E.predict_task(MIX, CFG, params, prompt, LENGTHS)
  with pytest.raises(ValueError, match="unknown task"):
    E.evaluate("spot_test_no_such_task", CFG, params, prompt, LENGTHS)
  with pytest.raises(ValueError, match="prompt has shape"):
    E.evaluate(PREDICT, CFG, params, prompt[:, :3], LENGTHS, batch_size=BATCH)
