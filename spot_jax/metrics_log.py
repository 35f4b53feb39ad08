"""Where metrics go: TensorBoard event files, a JSONL log, console lines and a progress bar.

One `MetricsLogger` per run directory serves training and evaluation alike:
  * TensorBoard: event files in `log_dir` (tags such as `train/loss`, `eval/<task>/accuracy`), written
    with TensorFlow's summary ops (the `tensorboard` package is needed only to view them);
  * `log_dir/metrics.jsonl`: one JSON object per write, `{"step": s, "time": t, "<prefix>/<name>": v}`,
    appended one whole line at a time and flushed, so a crash loses at most the line being written
    (`read_jsonl` skips a torn last line; a resumed run first drops the lines past its checkpoint,
    and marks its start for TensorBoard, which then drops those points too);
  * console: one `logging` line per write (through tqdm when a bar is shown, so lines do not tear it);
  * a tqdm progress bar with step, loss, steps/s and ETA when stderr is a terminal.
Only process 0 writes in a multi-process run (`enabled` defaults to `jax.process_index() == 0`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import sys
import time
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from spot_jax import fileio

log = logging.getLogger("spot_jax")

JSONL_NAME = "metrics.jsonl"


def _to_scalar(value: Any) -> Optional[float]:
  """A float for scalar-like values (numpy/jax scalars, seqio Scalar), else None."""
  if hasattr(value, "value") and not isinstance(value, np.ndarray):  # seqio.metrics.Scalar
    value = value.value
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, numbers.Number):
    return float(value)
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if arr.shape == () and np.issubdtype(arr.dtype, np.number):
    return float(arr)
  return None


def flatten_metrics(values: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
  """`{"a": {"b": 1}}` → `{"prefix/a/b": 1.0}`; non-scalar leaves are dropped."""
  out: Dict[str, float] = {}

  def visit(key, value):
    if isinstance(value, Mapping):
      for k, v in value.items():
        visit(f"{key}/{k}" if key else str(k), v)
      return
    scalar = _to_scalar(value)
    if scalar is not None:
      out[key] = scalar

  visit(prefix.strip("/"), values)
  return out


def _default_enabled() -> bool:
  try:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except
    return True


def _format_value(v: float) -> str:
  if math.isfinite(v) and v == int(v) and abs(v) < 1e12:
    return str(int(v))
  return f"{v:.4g}"


class ProgressBar:
  """A tqdm bar over training steps showing step, loss, steps/s and ETA.

  `disable=None` shows it only when stderr is a terminal (batch logs get the console lines instead).
  """

  def __init__(self, total: Optional[int], initial: int = 0, desc: str = "train",
               disable: Optional[bool] = None):
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    if disable is None:
      disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                     disable=disable, smoothing=0.1)
    self._step = initial
    self.disabled = bool(disable)

  def update(self, step: int, loss: Optional[float] = None, **postfix: Any) -> None:
    if step > self._step:
      self._bar.update(step - self._step)
      self._step = step
    shown = {}
    if loss is not None:
      shown["loss"] = f"{float(loss):.4g}"
    shown.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()})
    if shown:
      self._bar.set_postfix(shown, refresh=False)
    self._bar.refresh()

  def write(self, line: str) -> None:
    self._bar.write(line, file=sys.stderr)

  @property
  def rate(self) -> Optional[float]:
    """Recent steps per second, as tqdm estimates it (None before two updates)."""
    return self._bar.format_dict.get("rate")

  def close(self) -> None:
    self._bar.close()


def _mark_session_start(log_dir: str, step: int, count: int = 1) -> None:
  """Writes TensorFlow's session marker (a SessionLog START event at `step`) in an event file of its
  own. TensorBoard reads a run's files in name order and takes every START after the first for a
  restart: it drops the points at or after that step, which an interrupted run logged past its last
  checkpoint and the resumed run logs again, so they are not drawn twice. TF2's summary API has no
  call for it; TF1's FileWriter (in graph mode) writes it, into a file whose name sorts before the
  new writer's (same time stamp and host, shorter name)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  with tf.Graph().as_default():
    writer = tf.compat.v1.summary.FileWriter(log_dir)
    for _ in range(count):
      writer.add_session_log(event_pb2.SessionLog(status=event_pb2.SessionLog.START), global_step=step)
    writer.close()


class _TensorBoard:
  """Scalar summaries in TensorFlow event files, readable by TensorBoard.

  Written with the core `tf.summary.write` op plus the scalar plugin's metadata, so the separate
  `tensorboard` package (which `tf.summary.scalar` and clu's SummaryWriter need) is not required.
  """

  def __init__(self, log_dir: str, session_start: Optional[int] = None, starts: int = 1):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    self._tf = tf
    if session_start is not None:  # before the writer: its file must sort after the marker's
      _mark_session_start(log_dir, session_start, starts)
    self._writer = tf.summary.create_file_writer(log_dir)
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    tf = self._tf
    with self._writer.as_default():
      for k, v in scalars.items():
        tf.summary.write(k, tf.constant(v, tf.float32), step=step, metadata=self._metadata)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricsLogger:
  """Writes metric dicts to TensorBoard, `metrics.jsonl` and the console; drives the progress bar.

  Args:
    log_dir: the run directory (local or `gs://` for TensorBoard; the JSONL needs a local path or
      tf.io.gfile). None logs to the console only.
    total_steps / start_step: for the progress bar (None: no bar).
    enabled: False makes every method a no-op (non-zero processes); default: process 0 only.
    tensorboard / jsonl / console: turn each sink on or off.
    progress: show a bar (None: when `total_steps` is given and stderr is a terminal).
    resume_from: a resumed run's checkpoint step: `metrics.jsonl` lines of later steps, written by
      the interrupted process after its last checkpoint and about to be logged again, are dropped.
    mark_sessions: write TensorBoard's session marker at `start_step + 1` (training runs), so that
      TensorBoard drops the same later points of an interrupted run when this one resumes it.
    replace_steps / replace_tags: this run logs these steps again (an evaluation re-run into the
      same directory): the values already logged at them under tags starting with one of
      `replace_tags` (all tags when empty) are dropped first, from metrics.jsonl (a record keeps
      its other values) and from TensorBoard (`_replace_tensorboard_points`), so each log holds the
      new values once.
  """

  def __init__(self, log_dir: Optional[str], total_steps: Optional[int] = None, start_step: int = 0,
               enabled: Optional[bool] = None, tensorboard: bool = True, jsonl: bool = True,
               console: bool = True, progress: Optional[bool] = None, desc: str = "train",
               resume_from: Optional[int] = None, mark_sessions: bool = False,
               replace_steps: Collection[int] = (), replace_tags: Sequence[str] = ()):
    self.enabled = _default_enabled() if enabled is None else bool(enabled)
    self.log_dir = log_dir
    self.console = console
    self._tb = None
    self._jsonl = None
    self._bar = None
    if not self.enabled:
      return
    replaced = _replaced(replace_steps, replace_tags)
    if log_dir:
      if not log_dir.startswith("gs://"):
        os.makedirs(log_dir, exist_ok=True)
      if tensorboard:
        again = _replace_tensorboard_points(log_dir, replaced) if replaced else None
        if again is not None:  # mark_sessions is for training runs, which replace nothing
          start, starts, points = again
          self._tb = _TensorBoard(log_dir, start, starts)
          for step in sorted(points):
            self._tb.write(step, points[step])
        else:
          self._tb = _TensorBoard(log_dir, start_step + 1 if mark_sessions else None)
      if jsonl:
        self._jsonl = _open_append(os.path.join(log_dir, JSONL_NAME), resume_from, replaced)
    if total_steps is not None and progress is not False:
      self._bar = ProgressBar(total_steps, initial=start_step, desc=desc,
                              disable=None if progress is None else not progress)

  @property
  def jsonl_path(self) -> Optional[str]:
    return os.path.join(self.log_dir, JSONL_NAME) if self.log_dir else None

  def write(self, step: int, values: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
    """Logs scalars (nested dicts are flattened with '/'); returns the flat dict written."""
    flat = flatten_metrics(values, prefix)
    if not self.enabled:
      return flat
    step = int(step)
    if self._tb is not None and flat:
      self._tb.write(step, flat)
      self._tb.flush()
    if self._jsonl is not None:
      record = {"step": step, "time": round(time.time(), 3)}
      record.update({k: (v if math.isfinite(v) else str(v)) for k, v in flat.items()})
      self._jsonl.write(json.dumps(record, sort_keys=False) + "\n")
      self._jsonl.flush()
    if self._bar is not None:
      loss = flat.get(f"{prefix}/loss" if prefix else "loss")
      self._bar.update(step, loss=loss)
    if self.console:
      line = f"step {step}: " + ", ".join(f"{k}={_format_value(v)}" for k, v in flat.items())
      if self._bar is not None and not self._bar.disabled:
        self._bar.write(line)
      else:
        log.info("%s", line)
    return flat

  def progress(self, step: int, loss: Optional[float] = None) -> None:
    """Moves the bar without logging (call every step if you like; it is cheap)."""
    if self.enabled and self._bar is not None:
      self._bar.update(int(step), loss=loss)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def drop_records(path: str, steps, replaced: Optional[Callable[[str, int], bool]] = None) -> None:
  """Rewrites the JSONL log `path` (atomically) without the records whose step `steps(step)` says to
  drop, and without a torn last line; other lines are kept. With `replaced(key, step)`, the values
  it names are dropped from the other records too (a record left without values goes). No file:
  nothing to do. Also used on seqio's `<task>-metrics.jsonl` logs, whose records carry a "step" too."""
  if not fileio.exists(path):
    return
  with (fileio.open_file(path, "r") if fileio.is_remote(path) else open(path, encoding="utf-8")) as f:
    text = f.read()
  lines = text.split("\n")  # not splitlines(): a JSON string may hold U+2028, which it splits at
  kept = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record["step"])
      drop = bool(steps(step))
    except json.JSONDecodeError:
      drop = i == len(lines) - 1  # a torn last line (the process died writing it)
    except (ValueError, KeyError, TypeError):
      drop = False  # not a record of ours: left as it is
    else:
      if not drop and replaced is not None and any(replaced(k, step) for k in record):
        record = {k: v for k, v in record.items() if not replaced(k, step)}
        if set(record) <= {"step", "time"}:
          drop = True
        else:
          line = json.dumps(record, sort_keys=False)
    if not drop:
      kept.append(line + "\n")
  if "".join(kept) != text:
    fileio.atomic_write_bytes(path, "".join(kept).encode())


def drop_records_after(path: str, step: int) -> None:
  """`drop_records` of the steps after `step`: what a run resumed from its step-`step` checkpoint
  (0: a fresh start) logs again."""
  drop_records(path, lambda s: s > step)



def _replaced(steps: Collection[int], tags: Sequence[str]) -> Optional[Callable[[str, int], bool]]:
  """`replaced(tag, step)`: whether a run that logs `steps` again replaces that logged value (tags
  starting with one of `tags`; every tag when `tags` is empty). None when `steps` is empty."""
  steps = {int(s) for s in steps}
  if not steps:
    return None
  tags = tuple(tags)
  return lambda tag, step: step in steps and tag not in ("step", "time") and (
      not tags or tag.startswith(tags))


def _replace_tensorboard_points(log_dir: str, replaced: Callable[[str, int], bool]
                                ) -> Optional[Tuple[int, int, Dict[int, Dict[str, float]]]]:
  """How a run that logs some steps again drops the points `replaced(tag, step)` names from
  `log_dir`'s event files (TensorBoard has no deletion): a session START marker at the first such
  step, which drops every point at or after it from the earlier files, and those points again but
  the replaced ones, for the new writer to log after the marker. Returns (marker step, number of
  START events to write, {step: {tag: value}} to log again), or None when no point is replaced.
  TensorBoard (2.x) takes a folder's first START for the session's start and only later ones for
  restarts: a folder without one gets two."""
  scalars, has_start = _folder_scalars(log_dir)
  hits = [step for tag, points in scalars.items() for step, _ in points if replaced(tag, step)]
  if not hits:
    return None
  start = min(hits)
  again: Dict[int, Dict[str, float]] = {}
  for tag, points in scalars.items():
    for step, value in points:
      if step >= start and not replaced(tag, step):
        again.setdefault(step, {})[tag] = value
  return start, 1 if has_start else 2, again


def _open_append(path: str, resume_from: Optional[int] = None,
                 replaced: Optional[Callable[[str, int], bool]] = None):
  """Opens the log for appending, first dropping a torn last line (appended to, it would glue the next
  record onto it and corrupt both), for a run resumed from step `resume_from` the records of later
  steps, and the values `replaced(key, step)` names (one read and rewrite for all)."""
  drop_records(path, lambda s: resume_from is not None and s > resume_from, replaced)
  if fileio.is_remote(path):  # GCS objects cannot grow: tf.io.gfile emulates append
    return fileio.open_file(path, "a")
  return open(path, "a", encoding="utf-8")


def read_jsonl(path: str) -> List[Dict[str, Any]]:
  """Records of a metrics JSONL file (local or gs://); a torn (unterminated, unparsable) last line is
  skipped."""
  records = []
  with (fileio.open_file(path, "r") if fileio.is_remote(path) else open(path, encoding="utf-8")) as f:
    lines = f.read().split("\n")
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # the line being written when the process died
        continue
      raise ValueError(f"{path}:{i + 1} is not valid JSON: {line[:200]!r}") from None
  return records


def read_tensorboard_scalars(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
  """`{tag: [(step, value), ...]}` from every event file under `log_dir`, local or gs:// (for tests and
  tools), read as TensorBoard reads them: each folder's files in name order, and a session START
  after the folder's first drops the points at or after its step (an interrupted run's, redone)."""
  out: Dict[str, List[Tuple[int, float]]] = {}
  for folder, _, names in sorted(fileio.walk(log_dir)):
    for tag, points in _folder_scalars(folder, names)[0].items():
      out.setdefault(tag, []).extend(points)
  return out


class _DropTfRecordIteratorDeprecation(logging.Filter):
  """Drops TensorFlow's 5-line "tf_record_iterator (from tensorflow.python.lib.io.tf_record) is
  deprecated" warning, which `summary_iterator` (TF1's reader of event files, the one that reads them
  as they are, session markers included) triggers on its first use in a process: a re-evaluation
  into an existing EVAL_OUTPUT_DIR printed it. Any other record passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    return not ("tf_record_iterator" in message and "is deprecated" in message)


@contextlib.contextmanager
def _no_tf_record_iterator_deprecation():
  """Silences that one warning on TensorFlow's logger while the iterator is made (where TF logs it)."""
  tf_logger = logging.getLogger("tensorflow")
  dropped = _DropTfRecordIteratorDeprecation()
  tf_logger.addFilter(dropped)
  try:
    yield
  finally:
    tf_logger.removeFilter(dropped)


def _folder_scalars(folder: str, names: Optional[Sequence[str]] = None
                    ) -> Tuple[Dict[str, List[Tuple[int, float]]], bool]:
  """(`{tag: [(step, value)]}` of the event files directly in `folder` as TensorBoard reads them,
  whether they hold a session START); `names`: the folder's file names (None: listed here)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  if names is None:
    names = fileio.listdir(folder) if fileio.isdir(folder) else []
  seen: Dict[str, List[Tuple[int, float]]] = {}
  started = False
  for name in sorted(n for n in names if n.startswith("events.out.tfevents.")):
    with _no_tf_record_iterator_deprecation():  # the iterator is made here; read below
      events = tf.compat.v1.train.summary_iterator(fileio.join(folder, name))
    for event in events:
      if event.session_log.status == event_pb2.SessionLog.START:
        if started:
          seen = {k: [p for p in v if p[0] < event.step] for k, v in seen.items()}
        started = True
      for v in event.summary.value:
        value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else float(v.simple_value)
        seen.setdefault(v.tag, []).append((int(event.step), value))
  return seen, started
