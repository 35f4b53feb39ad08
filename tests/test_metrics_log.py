"""Metric sinks: JSONL and TensorBoard files are written and read back; the progress bar moves."""
import io
import json
import os

import numpy as np
import pytest

from spot_jax import metrics_log as ML


def test_flatten_metrics_nested_and_scalar_types():
  flat = ML.flatten_metrics({"task_a": {"accuracy": np.float32(50.0), "hist": [1, 2]},
                             "loss": np.array(1.5), "n": 3}, prefix="eval")
  assert flat == {"eval/task_a/accuracy": 50.0, "eval/loss": 1.5, "eval/n": 3.0}


def test_jsonl_tensorboard_and_console(tmp_path, caplog):
  caplog.set_level("INFO", logger="spot_jax")
  with ML.MetricsLogger(str(tmp_path), enabled=True) as logger:
    logger.write(10, {"loss": 2.0, "steps_per_sec": 3.5}, prefix="train")
    logger.write(20, {"loss": 1.0, "steps_per_sec": 4.0}, prefix="train")
    logger.write(20, {"task": {"accuracy": 75.0}}, prefix="eval")
  records = ML.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [10, 20, 20]
  assert records[1]["train/loss"] == 1.0 and records[2]["eval/task/accuracy"] == 75.0
  scalars = ML.read_tensorboard_scalars(str(tmp_path))
  assert scalars["train/loss"] == [(10, 2.0), (20, 1.0)]
  assert scalars["eval/task/accuracy"] == [(20, 75.0)]
  assert "step 20: eval/task/accuracy=75" in caplog.text


def test_torn_last_line_is_skipped_but_corruption_elsewhere_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n" + '{"step": 2, "tra')
  assert ML.read_jsonl(str(path)) == [{"step": 1, "train/loss": 1.0}]
  path.write_text('{"step": 1\n' + json.dumps({"step": 2}) + "\n")
  with pytest.raises(ValueError, match="metrics.jsonl:1"):
    ML.read_jsonl(str(path))


def test_resume_appends_and_disabled_writes_nothing(tmp_path):
  with ML.MetricsLogger(str(tmp_path / "a"), enabled=True, tensorboard=False) as logger:
    logger.write(1, {"loss": 1.0})
  with ML.MetricsLogger(str(tmp_path / "a"), enabled=True, tensorboard=False) as logger:
    logger.write(2, {"loss": float("nan")})
  records = ML.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2] and records[1]["loss"] == "nan"
  with ML.MetricsLogger(str(tmp_path / "b"), enabled=False) as logger:
    logger.write(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "b")


def test_a_resumed_run_drops_the_lines_logged_after_its_checkpoint(tmp_path):
  """A run killed after logging step 6 but checkpointed at 4 logs 5 and 6 again when it resumes:
  the first copies go, so metrics.jsonl holds each step once (an eval line at 4 stays)."""
  with ML.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False) as logger:
    for step in range(1, 7):
      logger.write(step, {"loss": float(step)}, prefix="train")
    logger.write(4, {"accuracy": 50.0}, prefix="eval")
  with ML.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False, resume_from=4) as logger:
    for step in (5, 6):
      logger.write(step, {"loss": 10.0 * step}, prefix="train")
  records = ML.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3, 4, 4, 5, 6]
  assert [r.get("train/loss") for r in records if r["step"] > 4] == [50.0, 60.0]
  with ML.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False, resume_from=6):
    pass  # nothing after 6: the file is left as it is
  assert len(ML.read_jsonl(str(tmp_path / "metrics.jsonl"))) == 7


def test_a_resumed_run_marks_its_start_so_tensorboard_drops_the_redone_points(tmp_path):
  """TensorFlow's restart convention: a SessionLog START after a run folder's first one drops the
  points at or after its step. (TensorBoard 2.20's own loader, `plugin_event_accumulator`, read this
  folder as `[1..4, 5'..6']` when tried by hand; `read_tensorboard_scalars` follows the same rule.)"""
  import time
  with ML.MetricsLogger(str(tmp_path), enabled=True, jsonl=False, mark_sessions=True) as logger:
    for step in range(1, 7):
      logger.write(step, {"loss": float(step)}, prefix="train")
  time.sleep(1.1)  # event file names carry whole seconds: the marker must sort after the first run's
  with ML.MetricsLogger(str(tmp_path), enabled=True, jsonl=False, start_step=4, resume_from=4,
                        mark_sessions=True) as logger:
    for step in (5, 6):
      logger.write(step, {"loss": 10.0 * step}, prefix="train")
  assert ML.read_tensorboard_scalars(str(tmp_path))["train/loss"] == [
      (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0)]
  starts = sorted(f for f in os.listdir(tmp_path) if not f.endswith(".v2"))
  assert len(starts) == 2  # one marker file per run, beside the writers' files
  # Without the marker (a logger that does not mark sessions) both copies stay, as TensorBoard shows.
  with ML.MetricsLogger(str(tmp_path), enabled=True, jsonl=False) as logger:
    logger.write(5, {"loss": 0.5}, prefix="train")
  assert ML.read_tensorboard_scalars(str(tmp_path))["train/loss"][-2:] == [(6, 60.0), (5, 0.5)]


def test_logging_a_step_again_replaces_its_values_in_jsonl_and_tensorboard(tmp_path):
  """An evaluation run again into its directory (replace_steps, replace_tags) replaces the values it
  logged at that step: metrics.jsonl loses them (a record keeps other tasks' values), TensorBoard
  gets a session marker at the step (two in a folder without one: TensorBoard 2.x takes the first
  START for the session's start) and the later points again; other steps and tags stay. Found by an
  eval/infer audit (a second step-0 record and point per run)."""
  import time
  with ML.MetricsLogger(str(tmp_path), enabled=True) as logger:
    logger.write(0, {"a": {"accuracy": 1.0}, "b": {"accuracy": 2.0}}, prefix="eval")
    logger.write(5, {"a": {"accuracy": 3.0}}, prefix="eval")
  for again, value in enumerate((10.0, 20.0)):
    time.sleep(1.1)  # event file names carry whole seconds: the marker must sort after the others
    with ML.MetricsLogger(str(tmp_path), enabled=True, replace_steps=[0], replace_tags=["eval/a/"]) as logger:
      logger.write(0, {"a": {"accuracy": value}}, prefix="eval")
    records = [{k: v for k, v in r.items() if k != "time"} for r in ML.read_jsonl(str(tmp_path / "metrics.jsonl"))]
    assert records == [{"step": 0, "eval/b/accuracy": 2.0}, {"step": 5, "eval/a/accuracy": 3.0},
                       {"step": 0, "eval/a/accuracy": value}]
    scalars = ML.read_tensorboard_scalars(str(tmp_path))
    assert sorted(scalars["eval/a/accuracy"]) == [(0, value), (5, 3.0)]
    assert scalars["eval/b/accuracy"] == [(0, 2.0)]
    markers = sorted(f for f in os.listdir(tmp_path) if f.startswith("events") and not f.endswith(".v2"))
    assert len(markers) == again + 1
  from tensorflow.core.util import event_pb2
  import tensorflow as tf
  starts = [[e.step for e in tf.compat.v1.train.summary_iterator(str(tmp_path / m))
             if e.session_log.status == event_pb2.SessionLog.START] for m in markers]
  assert starts == [[0, 0], [0]]
  # A step not logged before: nothing dropped, no marker.
  with ML.MetricsLogger(str(tmp_path), enabled=True, replace_steps=[7], replace_tags=["eval/a/"]) as logger:
    logger.write(7, {"a": {"accuracy": 4.0}}, prefix="eval")
  assert len([f for f in os.listdir(tmp_path) if f.startswith("events") and not f.endswith(".v2")]) == 2
  assert sorted(ML.read_tensorboard_scalars(str(tmp_path))["eval/a/accuracy"]) == [(0, 20.0), (5, 3.0), (7, 4.0)]


def test_appending_after_a_torn_line_ends_it_first_and_a_fresh_start_drops_all(tmp_path):
  """A process killed mid-write leaves a torn last line; the next run appending to the file would
  glue its first record onto it (both lost, and the file unreadable). A fresh run (resume_from=0,
  no checkpoint yet) drops what a run killed before its first checkpoint logged."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra')
  with ML.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False) as logger:
    logger.write(3, {"loss": 1.0}, prefix="train")
  assert [r["step"] for r in ML.read_jsonl(str(path))] == [1, 3]
  path.write_text(path.read_text() + '{"step": 4, "train/loss": 0.5}')  # whole, only the newline lost
  with ML.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False) as logger:
    logger.write(5, {"loss\u2028": 1.0}, prefix="train")
  assert [r["step"] for r in ML.read_jsonl(str(path))] == [1, 3, 4, 5]
  with ML.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False, resume_from=0):
    pass
  assert ML.read_jsonl(str(path)) == []


def test_progress_bar_shows_step_loss_rate_and_eta(monkeypatch):
  buf = io.StringIO()
  monkeypatch.setattr(ML.sys, "stderr", buf)
  bar = ML.ProgressBar(total=100, initial=0, desc="train", disable=False)
  bar._bar.fp = buf  # pylint: disable=protected-access
  bar._bar.mininterval = 0  # pylint: disable=protected-access
  for step in (10, 20, 30):
    bar.update(step, loss=0.5)
  text = buf.getvalue()
  assert "30/100" in text and "loss=0.5" in text and "step/s" in text
  assert "<" in text  # elapsed<remaining (ETA)
  assert bar.rate is None or bar.rate > 0
  bar.close()


def test_reading_event_files_prints_no_tf_record_iterator_deprecation(tmp_path, monkeypatch):
  """Re-evaluating into an existing EVAL_OUTPUT_DIR (which reads its event files to replace a step's
  points) printed TensorFlow's 5-line "tf_record_iterator ... is deprecated" warning, from TF1's
  summary_iterator. That one warning is now dropped where the iterator is made; other TensorFlow
  warnings still pass."""
  import logging
  from tensorflow.python.util import deprecation
  # TF prints each deprecation once per process: as in a fresh process, whatever ran before.
  monkeypatch.setattr(deprecation, "_PRINTED_WARNING", {})
  monkeypatch.setattr(deprecation, "_PRINT_DEPRECATION_WARNINGS", True)
  seen = []

  class Collect(logging.Handler):
    def emit(self, record):
      seen.append(record.getMessage())
  tf_logger = logging.getLogger("tensorflow")
  handler = Collect(level=logging.DEBUG)
  tf_logger.addHandler(handler)
  try:
    with ML.MetricsLogger(str(tmp_path), enabled=True, console=False) as logger:
      logger.write(0, {"accuracy": 50.0}, prefix="eval/task")
    with ML.MetricsLogger(str(tmp_path), enabled=True, console=False, replace_steps=[0],
                          replace_tags=["eval/task/"]) as logger:
      logger.write(0, {"accuracy": 75.0}, prefix="eval/task")
    assert ML.read_tensorboard_scalars(str(tmp_path))["eval/task/accuracy"][-1] == (0, 75.0)
    tf_logger.warning("another TensorFlow warning")
  finally:
    tf_logger.removeHandler(handler)
  assert not [m for m in seen if "tf_record_iterator" in m], seen
  assert "another TensorFlow warning" in seen and not tf_logger.filters
