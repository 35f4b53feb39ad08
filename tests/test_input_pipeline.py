"""Task → host batches: shapes, per-process shards, deterministic resume by skipping; clear errors
for TFDS data that is not prepared and for training on a rank-classification (`_rank`) task."""
import functools

import numpy as np
import pytest

from conftest_tasks import byte_text_task
from spot_jax import input_pipeline, truncation

TASK, LENGTHS = "spot_bundled_topic", {"inputs": 32, "targets": 4}


def _take(n, **kw):
  it = input_pipeline.get_batches(TASK, LENGTHS, "train", 8, seed=3, **kw)
  return [next(it) for _ in range(n)]


def test_batches_have_the_encoder_decoder_features():
  (b,) = _take(1)
  assert set(b) == set(input_pipeline.FEATURES)
  assert b["encoder_input_tokens"].shape == (8, 32) and b["decoder_target_tokens"].shape == (8, 4)
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:], b["decoder_target_tokens"][:, :-1])
  assert (b["decoder_input_tokens"][:, 0] == 0).all()


def test_skip_resumes_the_same_stream():
  full = _take(4)
  resumed = _take(2, skip_batches=2)
  for a, b in zip(full[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_process_shards_are_half_batches_of_disjoint_examples():
  shard0 = _take(1, shard_index=0, num_shards=2)[0]["encoder_input_tokens"]
  shard1 = _take(1, shard_index=1, num_shards=2)[0]["encoder_input_tokens"]
  assert shard0.shape == shard1.shape == (4, 32)
  assert not {r.tobytes() for r in shard0} & {r.tobytes() for r in shard1}
  with pytest.raises(ValueError, match="BATCH_SIZE=8 must divide over 3 processes"):
    _take(1, shard_index=0, num_shards=3)


def test_unknown_split_and_task_are_named():
  with pytest.raises(ValueError, match="has no split 'dev'"):
    next(input_pipeline.get_batches(TASK, LENGTHS, "dev", 8))
  with pytest.raises(ValueError, match="Did you mean spot_bundled_topic"):
    input_pipeline.get_task("spot_bundled_topik")


def test_the_rank_twin_of_a_task_registered_without_it_says_how_to_get_it(tmp_path):
  """A user asked for `my_sent_rank` of a task registered with the default rank_classification=False
  and was told to pass --gin.MIXTURE_OR_TASK_MODULE, which they had passed."""
  import seqio
  from tasks import user_data
  train = tmp_path / "train.tsv"
  train.write_text("sentence\tlabel\nnice one\tpos\nawful\tneg\n")
  user_data.register_task_from_files("spot_test_my_sent", train=str(train), input_template="{sentence}",
                                     label_names=["pos", "neg"], vocabulary=seqio.ByteVocabulary(),
                                     overwrite=True)
  try:
    with pytest.raises(ValueError) as info:
      input_pipeline.get_task("spot_test_my_sent_rank")
    assert str(info.value) == (
        "unknown task or mixture 'spot_test_my_sent_rank': task 'spot_test_my_sent' is registered, but "
        "without rank classification, so it has no 'spot_test_my_sent_rank' twin. Register "
        "'spot_test_my_sent' with rank_classification=True (tasks.user_data.register_task_from_files(..., "
        "rank_classification=True, label_names=[...]), or `rank_classification = True` in its gin scope) "
        "to also get 'spot_test_my_sent_rank', or use 'spot_test_my_sent' itself (docs/user_data.md).")
    assert "MIXTURE_OR_TASK_MODULE" not in str(info.value)
    # Other unknown names keep the module hint, `_rank` ones whose base is unknown too.
    for name in ("spot_test_not_registered_rank", "spot_test_not_registered"):
      with pytest.raises(ValueError, match=rf"unknown task or mixture '{name}'\. .*"
                         r"pass --gin\.MIXTURE_OR_TASK_MODULE=\"'my_tasks'\""):
        input_pipeline.get_task(name)
    user_data.register_task_from_files("spot_test_my_sent", train=str(train), input_template="{sentence}",
                                       label_names=["pos", "neg"], vocabulary=seqio.ByteVocabulary(),
                                       rank_classification=True, overwrite=True)
    assert input_pipeline.get_task("spot_test_my_sent_rank").name == "spot_test_my_sent_rank"
  finally:
    for name in ("spot_test_my_sent", "spot_test_my_sent_rank"):
      if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)


# ------------------------------------------------------ TFDS data that is not prepared


@pytest.fixture
def empty_tfds_data_dir(tmp_path, monkeypatch):
  """TFDS pointed at an empty data dir (as a user without prepared data); builders not reused."""
  import seqio
  from tensorflow_datasets.core import constants
  data_dir = str(tmp_path / "tfds")
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setattr(constants, "DATA_DIR", data_dir)  # TFDS reads the env var at import
  monkeypatch.setattr(seqio.utils.LazyTfdsLoader, "_MEMOIZED_BUILDERS", {})
  return data_dir


def _assert_names_the_fixes(msg, task, tfds_name):
  assert f"task {task!r}" in msg and f"TFDS dataset {tfds_name}" in msg, msg
  assert "--tfds_data_dir=DIR" in msg and "TFDS_DATA_DIR" in msg, msg
  assert f"tfds build {tfds_name}" in msg, msg


def test_tfds_task_without_prepared_data_names_task_dataset_and_fixes(empty_tfds_data_dir):
  with pytest.raises(input_pipeline.DataNotPreparedError) as info:
    input_pipeline.get_batches("spot_glue_rte_v200", LENGTHS, "train", 8)
  _assert_names_the_fixes(str(info.value), "spot_glue_rte_v200", "glue/rte:2.0.0")
  assert empty_tfds_data_dir in str(info.value)
  assert isinstance(info.value, ValueError)  # CLIs print ValueErrors as one line
  # train.py checks the splits (train and eval) before any compute: the same error, with the cause.
  task = input_pipeline.get_task("spot_glue_rte_v200")
  with pytest.raises(input_pipeline.DataNotPreparedError) as info:
    input_pipeline.check_split(task, "validation")
  assert isinstance(info.value.__cause__, KeyError)


def test_a_mixture_names_its_task_without_data(empty_tfds_data_dir):
  task = input_pipeline.get_task("spot_super_glue_mix")
  with pytest.raises(input_pipeline.DataNotPreparedError) as info:
    input_pipeline.check_split(task, "train")
  msg = str(info.value)
  assert "of mixture 'spot_super_glue_mix'" in msg
  _assert_names_the_fixes(msg, "spot_super_glue_boolq_v102", "super_glue/boolq:1.0.2")


def test_tasks_without_tfds_need_no_data_dir(empty_tfds_data_dir):
  input_pipeline.check_split(input_pipeline.get_task(TASK), "train")
  assert next(input_pipeline.get_batches(TASK, LENGTHS, "train", 8))["encoder_input_tokens"].shape \
      == (8, 32)


# ------------------------------------------- rank-classification tasks are for evaluation


def test_training_on_a_rank_task_is_refused():
  for task, base in (("spot_bundled_topic_rank", "spot_bundled_topic"),
                     ("spot_glue_rte_v200_rank", "spot_glue_rte_v200")):  # no TFDS data needed
    with pytest.raises(ValueError, match=rf"{task} is a rank-classification evaluation task.*"
                       rf"Train on {base} \(the task without `_rank`\)"):
      input_pipeline.get_batches(task, LENGTHS, "train", 8)


def test_rank_tasks_are_found_by_their_rows_not_their_name():
  import seqio
  from tasks import rank_classification
  rank = seqio.get_mixture_or_task("spot_bundled_topic_rank")
  common = dict(source=rank.source, output_features=rank.output_features,
                metric_fns=rank.metric_fns)
  # The same rows under a name without `_rank`: marked preprocessor.
  seqio.TaskRegistry.add("spot_test_scored_options", preprocessors=rank.preprocessors, **common)
  # An unmarked copy of the expanding step: the `is_correct` rows and score-only metrics tell.
  unmarked = [(lambda ds, p=p: p(ds)) if hasattr(p, rank_classification.RANK_MODE_ATTR) else p
              for p in rank.preprocessors]
  seqio.TaskRegistry.add("spot_test_scored_unmarked", preprocessors=unmarked, **common)
  seqio.MixtureRegistry.add("spot_test_mix_with_rank", ["spot_bundled_topic", "spot_test_scored_options"],
                            default_rate=1.0)
  try:
    assert rank_classification.rank_mode(seqio.get_mixture_or_task("spot_test_scored_unmarked")) is None
    for name in ("spot_test_scored_options", "spot_test_scored_unmarked", "spot_test_mix_with_rank"):
      with pytest.raises(ValueError, match="spot_test_scored_.* is a rank-classification evaluation"):
        input_pipeline.get_batches(name, LENGTHS, "train", 8)
  finally:
    seqio.MixtureRegistry.remove("spot_test_mix_with_rank")
    seqio.TaskRegistry.remove("spot_test_scored_options")
    seqio.TaskRegistry.remove("spot_test_scored_unmarked")


def test_train_mode_rank_variants_and_rank_evaluation_splits_are_allowed():
  import seqio
  from tasks import rank_classification
  names = rank_classification.register(name_suffix="_trainmode_test", mode="train")
  try:
    task = seqio.get_mixture_or_task("spot_glue_rte_v200_rank_trainmode_test")
    assert rank_classification.rank_mode(task) == "train"
    input_pipeline.check_trainable(task)  # only the correct option's rows: trainable
  finally:
    for name in names:
      seqio.TaskRegistry.remove(name)
  assert rank_classification.rank_mode(seqio.get_mixture_or_task("spot_glue_rte_v200_rank")) == "eval"
  assert rank_classification.rank_mode(seqio.get_mixture_or_task("spot_glue_rte_v200")) is None
  # Scoring a rank task reads its validation/test rows: every option of each example.
  b = next(input_pipeline.get_batches("spot_bundled_topic_rank", LENGTHS, "validation", 8,
                                      shuffle=False))
  assert b["decoder_target_tokens"].shape == (8, 4)
  assert len({r.tobytes() for r in b["encoder_input_tokens"][:4]}) == 1  # 4 options, one input


# --------------------------------------------------- truncation to TASK_FEATURE_LENGTHS


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "spot_jax"]


def test_targets_cut_to_one_word_are_named_with_the_length_and_macro(caplog):
  """Found by a seqio/user-data audit: labels "very negative indeed"/"very positive indeed" with
  targets length 2 both trained silently as "v"+EOS (here bytes), an unlearnable task."""
  rows = [{"inputs": f"review {i}", "targets": ("very negative indeed", "very positive indeed")[i % 2]}
          for i in range(16)]
  name = byte_text_task("spot_test_cut_targets", rows)
  lengths = {"inputs": 16, "targets": 2}
  with caplog.at_level("WARNING", logger="spot_jax"):
    b = next(input_pipeline.get_batches(name, lengths, "train", 8, shuffle=False))
    input_pipeline.get_batches(name, lengths, "train", 8)  # warned once
  assert (b["decoder_target_tokens"][:, 0] == b["decoder_target_tokens"][0, 0]).all()  # the same target
  (msg,) = _warnings(caplog)
  assert "task 'spot_test_cut_targets'" in msg and "16 of the first 16 'train' examples" in msg, msg
  assert "targets longer than TASK_FEATURE_LENGTHS['targets']=2 tokens (up to 21 with EOS)" in msg, msg
  assert "'very negative indeed' and 'very positive indeed'" in msg, msg
  assert """--gin.TASK_FEATURE_LENGTHS="{'inputs': 16, 'targets': 21}\"""" in msg, msg
  caplog.clear()
  with caplog.at_level("WARNING", logger="spot_jax"):  # long enough: silent
    input_pipeline.get_batches(name, {"inputs": 16, "targets": 21}, "train", 8)
  assert not _warnings(caplog)


def test_inputs_cut_and_label_words_beyond_the_first_examples_are_found(caplog):
  # The first examples hold only the short label; the label words say "negative" needs 9 bytes.
  rows = [{"inputs": "x" * (40 if i < 3 else 4), "targets": "no"} for i in range(80)]
  name = byte_text_task("spot_test_cut_labels", rows, label_names=("no", "negative"))
  with caplog.at_level("WARNING", logger="spot_jax"):
    input_pipeline.get_batches(name, {"inputs": 16, "targets": 4}, "train", 8)
  msgs = _warnings(caplog)
  assert len(msgs) == 2, msgs
  inputs, targets = sorted(msgs, key=lambda m: "targets longer" in m)
  assert "3 of the first 64 'train' examples have inputs longer than TASK_FEATURE_LENGTHS['inputs']=16" \
      in inputs and "(up to 41 with EOS)" in inputs and "{'inputs': 41, 'targets': 9}" in inputs, inputs
  assert "its label words have targets longer than TASK_FEATURE_LENGTHS['targets']=4 tokens (up to 9 " \
      in targets and "'targets': 9" in targets, targets


def test_truncation_check_reads_only_the_first_examples(monkeypatch):
  import seqio
  name = byte_text_task("spot_test_cut_peek", [{"inputs": "a", "targets": "b"}] * 500)
  taken = []
  real_take = __import__("tensorflow").data.Dataset.take
  monkeypatch.setattr(__import__("tensorflow").data.Dataset, "take",
                      lambda self, n: taken.append(int(n)) or real_take(self, n))
  assert truncation.truncation_report(seqio.get_mixture_or_task(name), {"inputs": 4, "targets": 4},
                                     "train") == {}
  assert taken == [truncation.TRUNCATION_PEEK]


def _late_long_rows(n=200, every=10, start=100):
  """Short examples, and from `start` on every `every`-th one with a 40-byte input: none among the
  first TRUNCATION_PEEK (64), which were all the truncation check read."""
  return [{"inputs": "x" * (40 if i >= start and i % every == 0 else 4), "targets": "no"} for i in range(n)]


def test_long_examples_after_the_first_ones_are_counted_as_the_batches_flow(caplog):
  """A task whose long examples all come after the first 64 trained with them cut and no word said (the
  check read only the first 64). The batches now count every cut example they hand out: one warning at
  the first, and the total over the run when it closes them."""
  name = byte_text_task("spot_test_cut_late", _late_long_rows())
  with caplog.at_level("WARNING", logger="spot_jax"):
    batches = input_pipeline.get_batches(name, {"inputs": 16, "targets": 4}, "train", 8, shuffle=False,
                                         num_epochs=1)
    assert not _warnings(caplog)  # the first 64 are short: nothing to say yet
    got = list(batches)
    (first,) = _warnings(caplog)
    assert (f"task '{name}': an example in batch 13 of its 'train' data (example 101 this run read) has "
            "inputs of 41 tokens with EOS, longer than TASK_FEATURE_LENGTHS['inputs']=16") in first, first
    caplog.clear()
    assert batches.close() == batches.close()  # reported once
  assert len(got) == 25 and all(set(b) == set(input_pipeline.FEATURES) for b in got)  # the model's features only
  (total,) = _warnings(caplog)
  assert total == (f"task '{name}': 10 of the 200 'train' examples this run read (batches 1-25) had inputs "
                   "longer than TASK_FEATURE_LENGTHS['inputs']=16 tokens (up to 41 with EOS); seqio cut them "
                   "to 16 (keeping EOS). Raise it to at least 41: "
                   """--gin.TASK_FEATURE_LENGTHS="{'inputs': 41, 'targets': 4}\"""")
  np.testing.assert_array_equal(got[12]["encoder_input_tokens"][4, -1], 1)  # example 101: cut, EOS kept


def test_a_feature_cut_in_the_first_examples_is_warned_about_once_and_not_counted(caplog):
  """A task cut by design (long inputs from the first example on): the start-up warning says so and
  which examples it read; counting its inputs too would tokenize nearly every example twice (in the
  tf.data map), so its inputs are not counted, while its short targets still are."""
  name = byte_text_task("spot_test_cut_early", [{"inputs": "x" * 40, "targets": "no"}] * 80)
  with caplog.at_level("WARNING", logger="spot_jax"):
    batches = input_pipeline.get_batches(name, {"inputs": 16, "targets": 4}, "train", 8, shuffle=False,
                                         num_epochs=1)
    (start,) = _warnings(caplog)
    assert "64 of the first 64 'train' examples have inputs longer" in start and \
        "only these were read: later examples may need more" in start, start
    assert batches.truncation is not None and batches.truncation.features == ("targets",)
    got = list(batches)
    caplog.clear()
    assert batches.close() == []
  assert len(got) == 10 and not _warnings(caplog)


def test_the_count_covers_the_batches_handed_out_after_a_resume_and_in_a_mixture(caplog):
  import seqio
  late = byte_text_task("spot_test_cut_late_mix", _late_long_rows())
  short = byte_text_task("spot_test_cut_short_mix", [{"inputs": "y", "targets": "yes"}] * 50)
  mix = "spot_test_cut_mixture"
  if mix in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(mix)
  seqio.MixtureRegistry.add(mix, [(late, 1.0), (short, 1.0)])
  try:
    resumed = input_pipeline.get_batches(late, {"inputs": 16, "targets": 4}, "train", 8, shuffle=False,
                                         num_epochs=1, skip_batches=20)
    assert len(list(resumed)) == 5
    (msg,) = resumed.truncation.messages()  # batches 21-25 hold examples 160-199: 4 long ones
    assert f"task '{late}': 4 of the 40 'train' examples this run read (batches 21-25) had inputs" in msg, msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="spot_jax"):
      batches = input_pipeline.get_batches(mix, {"inputs": 16, "targets": 4}, "train", 8, seed=1)
      got = [next(batches) for _ in range(40)]
      batches.close()
    assert all(set(b) == set(input_pipeline.FEATURES) for b in got)
    # Here an input is cut exactly when it fills all 16 positions (the short ones are 5 long with EOS).
    cut = sum(int((b["encoder_input_tokens"][:, -1] != 0).sum()) for b in got)
    (total,) = [m for m in _warnings(caplog) if m.startswith(f"mixture '{mix}'")]
    assert cut > 0 and total.startswith(f"mixture '{mix}': {cut} of the 320 'train' examples this run read "
                                        "(batches 1-40) had inputs longer than"), (cut, total)
  finally:
    seqio.MixtureRegistry.remove(mix)


def test_without_the_examples_text_the_warning_says_only_the_first_examples_were_read(caplog):
  """A task that keeps no `inputs_pretokenized` cannot be counted: the start-up warning says what it read."""
  import seqio
  import tensorflow as tf
  name = "spot_test_cut_no_text"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  rows = [{"inputs": "x" * 40, "targets": "no"}] * 80
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {k: [r[k] for r in rows] for k in ("inputs", "targets")}), splits=["train"]),
      preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True) for k in ("inputs", "targets")},
      metric_fns=[])
  with caplog.at_level("WARNING", logger="spot_jax"):
    batches = input_pipeline.get_batches(name, {"inputs": 16, "targets": 4}, "train", 8)
    next(batches)
  assert batches.truncation is None and batches.close() == []
  (msg,) = _warnings(caplog)
  assert "64 of the first 64 'train' examples have inputs longer" in msg
  assert msg.endswith("(only these were read: later examples may need more)"), msg


def test_a_task_without_mt5s_vocabulary_on_mt5_names_mt5s_file():
  task = input_pipeline.get_task(TASK)
  with pytest.raises(ValueError, match=r"1100 ids but the model's vocab_size is 250112.*mc4\.250000\.100extra/"
                                       r"sentencepiece\.model .*SPOT_JAX_VOCAB"):
    input_pipeline.check_vocabulary_fits(task, 250112)
  with pytest.raises(ValueError, match=r"vocab_size is 32128") as e:
    input_pipeline.check_vocabulary_fits(task, 32128)
  assert "mc4" not in str(e.value)
