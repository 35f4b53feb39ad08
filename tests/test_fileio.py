"""Atomic writes: a failed write leaves the old file or directory and no temporary behind."""
import json
import os

import numpy as np
import pytest

from spot_jax import fileio


def test_atomic_write_bytes_replaces_or_leaves_the_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / "a" / "f.bin")
  fileio.atomic_write_bytes(path, b"old")
  real_rename = fileio.rename
  monkeypatch.setattr(fileio, "rename", lambda s, d: (_ for _ in ()).throw(OSError("no space")))
  with pytest.raises(OSError, match="no space"):
    fileio.atomic_write_bytes(path, b"new")
  monkeypatch.setattr(fileio, "rename", real_rename)
  assert open(path, "rb").read() == b"old" and os.listdir(tmp_path / "a") == ["f.bin"]
  fileio.atomic_write_bytes(path, b"new")
  assert open(path, "rb").read() == b"new"


def test_write_json_atomic_handles_numpy(tmp_path):
  path = str(tmp_path / "r.json")
  fileio.write_json_atomic(path, {"b": np.float32(0.5), "a": np.arange(3)}, sort_keys=True)
  assert json.load(open(path)) == {"a": [0, 1, 2], "b": 0.5}
  assert open(path).read().index('"a"') < open(path).read().index('"b"')


def test_atomic_write_dir_swaps_whole_directories(tmp_path):
  d = str(tmp_path / "export")
  fileio.atomic_write_dir(d, {"x": b"1", "y": b"2"})
  fileio.atomic_write_dir(d, {"z": b"3"})
  assert os.listdir(d) == ["z"] and sorted(os.listdir(tmp_path)) == ["export"]


def test_local_atomic_writes_are_synced_before_the_rename(tmp_path, monkeypatch):
  """A power loss after the rename must not leave an empty file: data reaches the disk first."""
  events = []
  real_fsync, real_rename = os.fsync, fileio.rename
  monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
  monkeypatch.setattr(fileio, "rename", lambda a, b: (events.append("rename"), real_rename(a, b))[1])
  fileio.atomic_write_bytes(str(tmp_path / "a.bin"), b"abc")
  assert events == ["fsync", "rename"]
  events.clear()
  fileio.atomic_write_dir(str(tmp_path / "d"), {"x": b"1", "y": b"2"})
  assert events == ["fsync", "fsync", "rename"]
  assert (tmp_path / "d" / "y").read_bytes() == b"2"


def test_exclusive_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
  import multiprocessing
  with fileio.exclusive_lock(str(tmp_path / "run"), "training run"):
    # flock is per open file: another process (as a second `train` would be) is refused.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
      message = pool.apply(_try_lock, (str(tmp_path / "run"),))
    assert message.startswith(f"{tmp_path / 'run'} is in use by another training run (pid {os.getpid()} on ")
  with ctx.Pool(1) as pool:  # released: the next job takes it
    assert pool.apply(_try_lock, (str(tmp_path / "run"),)) == "locked"
  with fileio.exclusive_lock("gs://bucket/run", "training run"):
    pass  # not locked, and nothing is created


def _try_lock(directory):
  try:
    with fileio.exclusive_lock(directory, "training run"):
      return "locked"
  except fileio.InUseError as e:
    return str(e)


class _Unreachable:
  """tf.io.gfile offline: every call fails as TensorFlow's GCS filesystem does, or never answers."""

  def __init__(self, hang=False):
    self.hang = hang

  def exists(self, path):
    if self.hang:
      import time
      time.sleep(30)
    FailedPreconditionError = type("FailedPreconditionError", (Exception,), {})  # tf.errors' name
    raise FailedPreconditionError(f"Error executing an HTTP request: Could not resolve host: "
                                  f"www.googleapis.com\n\twhen reading metadata of {path}")

  isdir = exists


@pytest.mark.parametrize("hang", [False, True])
def test_an_unreachable_gs_output_dir_is_one_error_naming_the_fix(monkeypatch, hang):
  """A gs:// MODEL_DIR/EVAL_OUTPUT_DIR offline or without credentials: it was TensorFlow's 30-line
  traceback (or, with no answer, minutes of retries); now a ValueError, which the CLIs print as one line."""
  monkeypatch.setattr(fileio, "gfile", lambda: _Unreachable(hang))
  monkeypatch.setenv("SPOT_JAX_GCS_TIMEOUT", "0.5")
  bucket = f"gs://offline-bucket-{int(hang)}/run"  # a fresh bucket: probes are remembered per bucket
  with pytest.raises(ValueError) as e:
    fileio.check_not_a_file(bucket, "MODEL_DIR")
  text = str(e.value)
  assert bucket in text and "write MODEL_DIR to a local directory" in text and "gsutil" not in text
  assert ("no answer" in text) if hang else ("Could not resolve host" in text and "\n" not in text)


def test_check_writable_dir_leaves_nothing_and_skips_gs(tmp_path, monkeypatch):
  import errno
  out = tmp_path / "a" / "b"
  fileio.check_writable_dir(str(out))
  assert os.listdir(tmp_path) == []  # the folders it made to probe are gone again
  out.mkdir(parents=True)
  fileio.check_writable_dir(str(out))
  assert os.listdir(out) == []
  real_open = fileio.open_file

  def full(path, mode):
    if "w" in mode:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_open(path, mode)
  monkeypatch.setattr(fileio, "open_file", full)
  with pytest.raises(OSError) as e:
    fileio.check_writable_dir(str(out))
  assert fileio.unwritable_message(e.value) == (f"cannot write {out}: No space left on device: free some space "
                                                "or choose another directory") and os.listdir(out) == []
  with pytest.raises(OSError):
    fileio.check_writable_dir(str(out / "new"))
  assert os.listdir(out) == []
  monkeypatch.setattr(fileio, "gfile", lambda: pytest.fail("a gs:// directory is not probed"))
  fileio.check_writable_dir("gs://bucket/infer")


# ----------------------------------------------------------------------------------------------------
# A rerun's output does not destroy the earlier run's (infer's predictions file).

@pytest.mark.parametrize("where", ["local", "gs"])
def test_replace_keeping_earlier_keeps_other_content_once_and_leaves_identical_bytes(tmp_path, monkeypatch,
                                                                                     where):
  import hashlib
  from gfile_stub import LocalGfile
  root = tmp_path / "disk"
  root.mkdir()
  if where == "gs":
    stub = LocalGfile(root)
    monkeypatch.setattr(fileio, "gfile", lambda: stub)
    d = "gs://bucket/infer"
  else:
    d = str(root / "infer")
  path = f"{d}/t-validation.jsonl"
  local = root / "infer"

  def files():
    return {n: (local / n).read_bytes() for n in sorted(os.listdir(local))}
  assert fileio.replace_keeping_earlier(path, b"first\n") == (True, None)
  assert files() == {"t-validation.jsonl": b"first\n"}
  assert fileio.replace_keeping_earlier(path, b"first\n") == (False, None)  # the same bytes: untouched
  assert files() == {"t-validation.jsonl": b"first\n"}
  written, backup = fileio.replace_keeping_earlier(path, b"second\n")
  digest = hashlib.sha256(b"first\n").hexdigest()[:8]
  assert written and backup == f"{path}.old-{digest}"
  assert files() == {"t-validation.jsonl": b"second\n", f"t-validation.jsonl.old-{digest}": b"first\n"}
  # first -> second -> first -> second: each content is kept once, under its own name
  fileio.replace_keeping_earlier(path, b"first\n")
  fileio.replace_keeping_earlier(path, b"second\n")
  second = hashlib.sha256(b"second\n").hexdigest()[:8]
  assert files() == {"t-validation.jsonl": b"second\n", f"t-validation.jsonl.old-{digest}": b"first\n",
                     f"t-validation.jsonl.old-{second}": b"second\n"}
  if where == "gs":
    assert "GFile" in stub.used and "rename" in stub.used  # through tf.io.gfile's calls


def test_replace_keeping_earlier_never_overwrites_a_backup_of_other_bytes(tmp_path):
  """Two contents whose digests begin alike (forged here): the second backup takes a random name."""
  import hashlib
  path = str(tmp_path / "p.jsonl")
  digest = hashlib.sha256(b"earlier\n").hexdigest()[:8]
  (tmp_path / f"p.jsonl.old-{digest}").write_bytes(b"something else\n")
  (tmp_path / "p.jsonl").write_bytes(b"earlier\n")
  written, backup = fileio.replace_keeping_earlier(path, b"new\n")
  assert written and backup != f"{path}.old-{digest}" and open(backup, "rb").read() == b"earlier\n"
  assert (tmp_path / f"p.jsonl.old-{digest}").read_bytes() == b"something else\n"
  assert (tmp_path / "p.jsonl").read_bytes() == b"new\n" and len(os.listdir(tmp_path)) == 3


def test_replace_keeping_earlier_leaves_both_files_when_the_write_fails(tmp_path, monkeypatch):
  import errno
  path = str(tmp_path / "p.jsonl")
  fileio.replace_keeping_earlier(path, b"earlier\n")
  monkeypatch.setattr(fileio, "_write_durably", lambda p, d: (_ for _ in ()).throw(
      OSError(errno.ENOSPC, "No space left on device")))
  with pytest.raises(OSError) as e:
    fileio.replace_keeping_earlier(path, b"new\n")
  assert fileio.unwritable_message(e.value).startswith(f"cannot write {path}: No space left")
  assert open(path, "rb").read() == b"earlier\n"
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_keep_earlier_copies_a_file_that_is_then_rewritten_in_place(tmp_path):
  """eval keeps another prompt's seqio logs before seqio rewrites them in place (it truncates
  `<task>-<step>.jsonl`): the copy must be one, not a hard link that the rewrite would change too.
  Named as replace_keeping_earlier names its backups; a content kept once is not copied again."""
  import hashlib
  path = tmp_path / "task-000000.jsonl"
  assert fileio.keep_earlier(str(path)) is None and not list(tmp_path.iterdir())
  path.write_text("earlier\n")
  kept = fileio.keep_earlier(str(path))
  assert kept == str(path) + ".old-" + hashlib.sha256(b"earlier\n").hexdigest()[:8]
  with open(path, "w") as f:  # as seqio writes it: the same inode, truncated
    f.write("new\n")
  assert open(kept).read() == "earlier\n" and os.stat(kept).st_ino != os.stat(path).st_ino
  path.write_text("earlier\n")
  assert fileio.keep_earlier(str(path)) == kept and len(list(tmp_path.iterdir())) == 2
