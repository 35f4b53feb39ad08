"""seqio evaluation with greedy decoding and rank-classification scoring on the tiny model.

Expected metrics are computed independently (tokenizing by hand, decoding / scoring directly) and the
targets are chosen from the model's own outputs so that the accuracies are neither 0 nor 100.
"""
import json
import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from spot_jax import decode as D
from spot_jax import evaluation as E
from spot_jax import inference
from spot_jax import model as M
from spot_jax import scoring as S
from spot_jax.config import size_config
from mesh_setup import rows_per_device, spy_programs

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
  rows = inference.predict_task(PREDICT, CFG, params, prompt, LENGTHS, batch_size=BATCH)
  assert [r["inputs"] for r in rows] == INPUTS
  assert [r["prediction"] for r in rows] == said
  assert rows[1]["targets"] == "#wrong"
  with pytest.raises(ValueError, match="mixture"):
    inference.predict_task(MIX, CFG, params, prompt, LENGTHS)
  with pytest.raises(ValueError, match="unknown task"):
    E.evaluate("spot_test_no_such_task", CFG, params, prompt, LENGTHS)
  with pytest.raises(ValueError, match="prompt has shape"):
    E.evaluate(PREDICT, CFG, params, prompt[:, :3], LENGTHS, batch_size=BATCH)



def test_eval_infer_and_training_eval_split_batches_over_the_mesh_data_axis(setup, monkeypatch):
  """On a data 8 x model 1 mesh with batches of 16, eval (`mesh=`), training's periodic eval (the mesh
  the frozen params are placed on) and infer decode and score 2 rows per device, with the metrics,
  predictions and scores of one device. (The byte vocabulary, 259 rows, does not split over model.)"""
  from spot_jax import partitioning
  from spot_jax import train as train_lib
  from spot_jax.frozen_model import place_frozen
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 forced CPU devices")
  params, prompt, said = setup
  mesh = partitioning.make_mesh(1)
  placed, _ = place_frozen(params, CFG, mesh)
  want = E.evaluate(MIX, CFG, params, prompt, LENGTHS, batch_size=16, reuse=False)
  want_scores = inference.score_options_task(RANK, CFG, params, prompt, LENGTHS, batch_size=16)
  decoded = spy_programs(monkeypatch, D, "decode_fn")
  scored = spy_programs(monkeypatch, S, "score_fn")
  assert E.evaluate(MIX, CFG, placed, prompt, LENGTHS, batch_size=16, reuse=False, mesh=mesh) == want
  assert E.mesh_of(placed) is mesh and E.mesh_of(params) is None
  flat = train_lib._evaluate(MIX, CFG, placed, prompt, LENGTHS, "validation", 16, None)  # pylint: disable=protected-access
  assert flat == {f"{task}/{k}": v for task, metrics in want.items() for k, v in metrics.items()}
  assert [r["prediction"] for r in inference.predict_task(PREDICT, CFG, placed, prompt, LENGTHS, batch_size=16,
                                                          mesh=mesh)] == said
  got = inference.score_options_task(RANK, CFG, placed, prompt, LENGTHS, batch_size=16, mesh=mesh)
  assert [r["prediction"] for r in got] == [r["prediction"] for r in want_scores]
  np.testing.assert_allclose([r["scores"] for r in got], [r["scores"] for r in want_scores], rtol=1e-5)
  # eval, training's eval and infer: 1 predict batch (7 rows) and 1 rank batch (12 rows) each.
  assert (len(decoded), len(scored)) == (3, 3)
  programs = {id(fn): (fn, args) for fn, args in decoded + scored}
  assert len(programs) == 2  # one decode and one score program, shared by all
  for fn, args in programs.values():
    assert args[2].shape[0] == 16
    assert rows_per_device(fn, args, 2, CFG.d_model, 3 + LENGTHS["inputs"]) == (2, 2, {2})


def _rank_rows(num_examples, num_options):
  return tf.data.Dataset.from_tensor_slices({
      "idx": np.array([[e, k] for e in range(num_examples) for k in range(num_options)], np.int32),
      "is_correct": np.array([k == e % num_options for e in range(num_examples)
                              for k in range(num_options)])})


def test_take_examples_keeps_whole_rank_examples():
  ds = _rank_rows(30, 2)  # 2 options per example: 60 rows
  assert E.is_rank_dataset(ds)
  for n, want in ((5, 5), (50, 30), (1, 1)):
    ids = [tuple(r["idx"]) for r in E.take_examples(ds, n).as_numpy_iterator()]
    assert ids == [(e, k) for e in range(want) for k in range(2)], n
  assert len(list(E.take_examples(ds, None).as_numpy_iterator())) == 60
  # Not a rank dataset: N rows.
  plain = tf.data.Dataset.from_tensor_slices({"inputs": np.arange(10)})
  assert not E.is_rank_dataset(plain)
  assert len(list(E.take_examples(plain, 4).as_numpy_iterator())) == 4


def test_num_examples_counts_rank_examples_not_rows(setup):
  """num_examples=N scores the first N examples with every option, not the first N rows."""
  from tasks import metrics as TM  # pylint: disable=g-import-not-at-top
  from tasks import postprocessors as TP  # pylint: disable=g-import-not-at-top
  params, prompt, _ = setup
  name = "spot_test_eval_rank_project_metric"
  rows = list(seqio.get_mixture_or_task(RANK).source.get_dataset(split="validation")
              .as_numpy_iterator())
  _register(name, [{k: r[k] for k in ("inputs", "targets", "idx", "is_correct")} for r in rows],
            [TM.rank_classification_accuracy], TP.rank_classification)
  for task, n, metric, want in ((RANK, 2, "rank_accuracy", 50.0),
                                (name, 3, "accuracy", 100.0 * 2 / 3)):
    ev = E.PromptEvaluator(task, LENGTHS, batch_size=BATCH, num_examples=n)
    cached = ev.evaluator.cached_task_datasets[task].as_numpy_iterator()
    assert [tuple(r["idx"]) for r in cached] == [(e, k) for e in range(n)
                                                for k in range(len(OPTIONS))]
    # Even examples label the best-scored option, odd ones the worst.
    assert ev.evaluate(CFG, params, prompt)[task][metric] == pytest.approx(want)
  rank_rows = inference.load_examples(seqio.get_mixture_or_task(name), "validation", LENGTHS, 3)
  assert len(rank_rows) == 3 * len(OPTIONS)


def test_no_seqio_logger_warning_without_a_log_dir(setup, caplog):
  """Without a log_dir the evaluator is built with an explicit empty logger list and seqio's
  "'logger_cls' is empty" warning is not printed (the caller logs the metrics)."""
  import logging
  params, prompt, said = setup
  # seqio warns through absl's logger, which another test (the demo) may have set to ERROR.
  with caplog.at_level(logging.WARNING, logger="absl"):
    seqio.Evaluator(mixture_or_task_name=PREDICT, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                    eval_split="validation", sequence_length=LENGTHS)
  assert E.EMPTY_LOGGER_WARNING in caplog.text  # seqio's own behaviour: the warning reaches caplog
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="absl"):
    results = E.evaluate(PREDICT, CFG, params, prompt, LENGTHS, batch_size=BATCH, reuse=False)
  assert results[PREDICT]["accuracy"] == pytest.approx(100.0 * 4 / 7)
  assert E.EMPTY_LOGGER_WARNING not in caplog.text, caplog.text
  assert not [f for f in logging.getLogger("absl").filters if isinstance(f, E._DropEmptyLoggerWarning)]  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="needs a log_dir"):
    E.PromptEvaluator(PREDICT, LENGTHS, logger_cls=(seqio.JSONLogger,))


def test_score_options_picks_the_best_scored_option_per_example(setup):
  """Rank-classification inference: one row per example with every option's log-likelihood and the
  best-scored option. The fixture labels the best option of even examples and the worst of odd ones."""
  params, prompt, _ = setup
  rank_task, predict_task = seqio.get_mixture_or_task(RANK), seqio.get_mixture_or_task(PREDICT)
  assert inference.is_rank_task(rank_task, "validation") and not inference.is_rank_task(predict_task, "validation")
  rows = inference.score_options_task(RANK, CFG, params, prompt, LENGTHS, batch_size=BATCH)
  want = S.score(CFG, params, prompt, _enc([i for i in RANK_INPUTS for _ in OPTIONS]),
                 _tgt(OPTIONS * len(RANK_INPUTS))).reshape(len(RANK_INPUTS), -1)
  assert [r["inputs"] for r in rows] == RANK_INPUTS
  assert all(r["options"] == OPTIONS for r in rows)
  np.testing.assert_allclose([r["scores"] for r in rows], want, rtol=1e-5, atol=1e-5)
  assert [r["prediction"] for r in rows] == [OPTIONS[int(np.argmax(s))] for s in want]
  assert [r["prediction"] == r["targets"] for r in rows] == [True, False, True, False]
  two = inference.score_options_task(RANK, CFG, params, prompt, LENGTHS, batch_size=BATCH, num_examples=2)
  assert two == rows[:2]


def test_mixture_tasks_left_out_of_evaluation_are_named(setup, caplog):
  """Found by a seqio/user-data audit: seqio drops a mixture's task without the eval split (or
  without metrics) and says so at INFO only, which absl's WARNING level hides."""
  import logging
  train_only, no_metrics, mix = "spot_test_eval_train_only", "spot_test_eval_no_metrics", "spot_test_eval_left_mix"
  for registry, name in ((seqio.MixtureRegistry, mix), (seqio.TaskRegistry, train_only)):
    if name in registry.names():
      registry.remove(name)
  seqio.TaskRegistry.add(
      train_only, source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["a"], "targets": ["b"]}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=_features(), metric_fns=[accuracy])
  _register(no_metrics, [{"inputs": "a", "targets": "b"}], [])
  seqio.MixtureRegistry.add(mix, [PREDICT, train_only, no_metrics], default_rate=1.0)
  try:
    with caplog.at_level(logging.WARNING, logger="spot_jax"):
      ev = E.PromptEvaluator(mix, LENGTHS, batch_size=BATCH)
    assert ev.task_names == [PREDICT]
    assert (f"mixture {mix!r}: 2 of its tasks are left out of evaluation on 'validation': "
            f"{no_metrics} (no metric functions); {train_only} (no 'validation' split; it has ['train']). "
            "To include one, give it a 'validation' split and metric functions") in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spot_jax"):
      E.PromptEvaluator(MIX, LENGTHS, batch_size=BATCH)  # every task evaluated: no such warning
    assert "left out" not in caplog.text
    # Members at rate 0 (never trained on, as T5's GLUE mixture holds AX) take part where they can.
    seqio.MixtureRegistry.remove(mix)
    seqio.MixtureRegistry.add(mix, [(PREDICT, 1.0), (train_only, 0), (no_metrics, 0.0)])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spot_jax"):
      assert E.PromptEvaluator(mix, LENGTHS, batch_size=BATCH).task_names == [PREDICT]
    assert "left out" not in caplog.text
  finally:
    seqio.MixtureRegistry.remove(mix)
    seqio.TaskRegistry.remove(train_only)
    seqio.TaskRegistry.remove(no_metrics)


def test_evaluation_warns_when_targets_are_cut(setup, caplog):
  """The rank task's options ("yes", "no", "maybe" + EOS: up to 6 bytes) cut to 3 ids."""
  import logging
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    E.PromptEvaluator(RANK, {"inputs": 16, "targets": 3}, batch_size=BATCH)
  assert (f"task {RANK!r}: 8 of the 12 'validation' option rows have targets longer than "
          "TASK_FEATURE_LENGTHS['targets']=3 tokens (up to 6 with EOS); seqio cuts them to 3 (keeping EOS), "
          "so its metrics come from cut targets") in caplog.text, caplog.text
  assert "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 16, 'targets': 6}\"" in caplog.text


def test_num_examples_must_be_positive_or_none(setup):
  """Found by an eval/infer audit: 0 took the whole split, a negative value the whole split of a
  plain dataset and nothing of a rank one (seqio then crashed on the empty split)."""
  params, prompt, _ = setup
  plain = tf.data.Dataset.from_tensor_slices({"inputs": np.arange(10)})
  for bad in (0, -1, 1.5, "3", True):
    for ds in (plain, _rank_rows(3, 2)):
      with pytest.raises(ValueError, match=r"num_examples must be (an integer )?1 or more \(or None: the whole "
                                           r"split\)"):
        E.take_examples(ds, bad)
    with pytest.raises(ValueError, match="num_examples must be"):
      E.PromptEvaluator(PREDICT, LENGTHS, batch_size=BATCH, num_examples=bad)
    with pytest.raises(ValueError, match="num_examples must be"):
      inference.predict_task(PREDICT, CFG, params, prompt, LENGTHS, num_examples=bad)
    with pytest.raises(ValueError, match="num_examples must be"):
      inference.score_options_task(RANK, CFG, params, prompt, LENGTHS, num_examples=bad)


def _register_splits(name, splits):
  """A predict task whose `splits` are {split: [(inputs, targets)]}."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": [i for i, _ in splits[split]],
                                               "targets": [t for _, t in splits[split]]})

  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=_features(), metric_fns=[accuracy])


def test_predict_task_on_an_unlabelled_split_decodes_as_long_as_a_labelled_split(setup, caplog):
  """Found by an eval/infer audit: without feature lengths, a split whose targets are all the
  placeholder "<unk>" (an unlabelled test split) decoded only len("<unk>") + EOS tokens. Its decode
  length is now the longest target of the task's validation split (else train), with a note; a task
  with no labelled split is refused, naming TASK_FEATURE_LENGTHS."""
  import logging
  params, prompt, _ = setup
  name = "spot_test_eval_unlabelled"
  answers = ["a rather long answer", "no"]  # 20 bytes + EOS: the validation decode length
  _register_splits(name, {"train": [("x", "yes")], "validation": list(zip(INPUTS[:2], answers)),
                          "test": [(i, "<unk>") for i in INPUTS]})
  want = D.greedy_decode(CFG, params, prompt, _enc(INPUTS), len(answers[0]) + 1)
  said = [VOCAB.decode(D.trim_after_eos(t, 1)) for t in want]
  assert max(len(VOCAB.encode(s)) for s in said) > len("<unk>") + 1  # would be cut before
  with caplog.at_level(logging.INFO, logger="spot_jax"):
    rows = inference.predict_task(name, CFG, params, prompt, split="test", batch_size=BATCH)
  assert [r["prediction"] for r in rows] == said
  assert "every 'test' target is the placeholder '<unk>' (an unlabelled split), so the decode length is the " \
         "longest target of its 'validation' split: 21 tokens with EOS" in caplog.text, caplog.text
  task = seqio.get_mixture_or_task(name)
  assert inference.unlabelled_decode_length(task, "test") == 21
  assert inference.unlabelled_decode_length(task, "validation") is None  # labelled: its own targets
  assert inference.unlabelled_decode_length(task, "test", {"inputs": 16, "targets": 4}) is None  # given
  # Only unlabelled splits: nothing to take the length from.
  _register_splits(name, {"test": [(i, "<unk>") for i in INPUTS]})
  with pytest.raises(ValueError, match=r"every target of its 'test' split is the placeholder '<unk>' .*no labelled "
                                       r"split to take it from \(it has \['test'\]\). Set it: "
                                       r"--gin.TASK_FEATURE_LENGTHS=\"\{'inputs': N, 'targets': M\}\""):
    inference.predict_task(name, CFG, params, prompt, split="test", batch_size=BATCH)
  rows = inference.predict_task(name, CFG, params, prompt, {"inputs": 16, "targets": 3}, split="test", batch_size=BATCH)
  assert len(rows) == len(INPUTS)
  seqio.TaskRegistry.remove(name)


def test_eval_of_an_unlabelled_split_warns_that_its_metrics_mean_nothing():
  """An eval of a split whose targets are all "<unk>" scored predictions against the placeholder and
  printed the number without a word (left by the eval/infer audit's fixes)."""
  name = "spot_test_eval_unlabelled_warn"
  _register_splits(name, {"validation": list(zip(INPUTS, ["yes"] * len(INPUTS))),
                          "test": [(i, "<unk>") for i in INPUTS]})
  task = seqio.get_mixture_or_task(name)
  with pytest.warns(UserWarning, match=r"the 'test' split of 'spot_test_eval_unlabelled_warn' is unlabelled "
                                       r"\(every target is the placeholder '<unk>'\).*mean nothing.*EVAL_SPLIT"):
    assert inference.warn_if_unlabelled(task, "test") == [name]
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert inference.warn_if_unlabelled(task, "validation") == []
  seqio.TaskRegistry.remove(name)
