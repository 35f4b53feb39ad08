"""Files on local disk or `gs://` (through tf.io.gfile, the first request to a bucket timed), and atomic writes.

One place for what every writer of this project needs: a reader never sees a half-written file or
export directory, whether it is a prompt export, a library entry, a result JSON or predictions.
TensorFlow is imported only for `gs://` paths.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from typing import Any, Dict, Optional, Tuple

import numpy as np


def is_remote(path: str) -> bool:
  return str(path).startswith("gs://")


def gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def join(*parts: str) -> str:
  return os.path.join(*[str(p) for p in parts])


def basename(path: str) -> str:
  return os.path.basename(str(path).rstrip("/"))


def exists(path: str) -> bool:
  return gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


# How long the first request to a bucket may take before spot_jax gives up: without network, tf.io.gfile
# retries a request 10 times with growing delays (minutes, with no output), and a firewall that drops
# packets makes each try wait for its connection timeout.
GCS_TIMEOUT_ENV = "SPOT_JAX_GCS_TIMEOUT"
GCS_TIMEOUT_DEFAULT_S = 60.0
_GCS_REACHED = set()  # buckets that answered in this process


class GcsUnreachable(ValueError):
  """A gs:// bucket that did not answer, or answered with an error; the message names the fix."""


def gcs_help(path: str) -> str:
  """The fix for a gs:// path that cannot be read."""
  return ("Check network access to Google Cloud Storage and the credentials tensorflow and tensorstore "
          "see (`gcloud auth application-default login` on a workstation, the VM's service account on "
          f"GCP), or copy the files to local disk (`gsutil -m cp -r {path} DIR`) and pass DIR.")


def _gcs_timeout() -> float:
  raw = os.environ.get(GCS_TIMEOUT_ENV)
  if raw is None:
    return GCS_TIMEOUT_DEFAULT_S
  try:
    return float(raw)
  except ValueError:
    raise GcsUnreachable(f"{GCS_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


def probe_gcs(path: str, gfile_: Any = None, timeout: Optional[float] = None, fix: Optional[str] = None) -> None:
  """Fail fast, naming the fix, when the bucket of a gs:// `path` does not answer.

  The first request to each bucket runs in a daemon thread and is given `timeout` seconds
  (default `$SPOT_JAX_GCS_TIMEOUT` or 60); an error or no answer raises GcsUnreachable instead
  of a bare TensorFlow error or minutes of silent retries. Later requests to a bucket that
  answered are not timed. `gfile_` defaults to tf.io.gfile. `fix` replaces the advice for a path that
  is read (an output directory is not copied to local disk but written there instead).
  """
  m = re.match(r"gs://([^/]+)", str(path))
  if m is None:
    raise GcsUnreachable(f"malformed gs:// path {path!r}; expected gs://bucket/dir")
  bucket = m.group(1)
  if bucket in _GCS_REACHED:
    return
  gfile_ = gfile_ if gfile_ is not None else gfile()  # import TF here, not inside the timed thread
  timeout = _gcs_timeout() if timeout is None else timeout
  outcome: Dict[str, Any] = {}

  def _ask():
    try:
      outcome["exists"] = gfile_.exists(path)
    except BaseException as e:  # pylint: disable=broad-except
      outcome["error"] = e

  worker = threading.Thread(target=_ask, name=f"spot_jax-gcs-probe-{bucket}", daemon=True)
  worker.start()
  worker.join(timeout)
  if worker.is_alive():
    raise GcsUnreachable(
        f"no answer from Google Cloud Storage for {path} within {timeout:g} s: this machine seems to have "
        f"no network access to GCS. {fix or gcs_help(path)} (Set {GCS_TIMEOUT_ENV}=SECONDS to wait longer.)")
  if "error" in outcome:
    e = outcome["error"]
    text = " ".join(str(e).split())[:500]
    raise GcsUnreachable(f"cannot read {path}: {type(e).__name__}: {text}. {fix or gcs_help(path)}") from e
  _GCS_REACHED.add(bucket)


def short_error(e: BaseException, limit: int = 300) -> str:
  """An orbax/TensorStore error's message without the `[tensorstore_spec='...']` it appends: kilobytes
  of JSON that bury the one line saying what is wrong."""
  text = re.sub(r"\s*\[tensorstore_spec='.*'\]", "", str(e), flags=re.DOTALL).strip() or type(e).__name__
  return text if len(text) <= limit else text[:limit] + " ..."


def check_local(path: str, what: str, fix: str) -> None:
  """Refuses a `gs://` path where only a local directory works: `os` calls would otherwise create a
  local directory named `gs:` and write there, silently."""
  if is_remote(path):
    raise ValueError(f"{path}: {what} must be a local directory, not gs:// ({fix})")


def check_not_a_file(path: str, what: str) -> None:
  """Refuses, before any compute, an output directory that exists as a file (it would fail only at the
  first write, or in an asynchronous save's background thread). A gs:// bucket that does not answer
  is named with the fix, within the GCS timeout, instead of TensorFlow's traceback."""
  if is_remote(path):
    probe_gcs(path, gfile(), fix=(
        "Check network access to Google Cloud Storage and the credentials tensorflow sees (`gcloud auth "
        "application-default login` on a workstation, the VM's service account on GCP), or write "
        f"{what} to a local directory."))
  if exists(path) and not isdir(path):
    raise NotADirectoryError(f"{path} is a file, but it must be a directory ({what}): move the file away, "
                             "or choose another directory")


# A place that cannot take a write: a full disk or quota, a read-only file system, no permission. Other
# OSErrors (EBADF, EINVAL, ...) are bugs and keep their traceback.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
UNWRITABLE_ERRNOS = NO_SPACE_ERRNOS + (errno.EROFS, errno.EACCES, errno.EPERM)
_TEMPORARY_RE = re.compile(r"\.(tmp|old)-[0-9a-f]{8}(?=/|$)")


def is_unwritable(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in UNWRITABLE_ERRNOS


def unwritable_message(error: OSError, path: Optional[str] = None) -> str:
  """One line for an `is_unwritable` error: the destination (`path`, else the error's file without the
  `.tmp-<id>` of an atomic write: the user never named that), what the OS said, and the fix."""
  where = path or (_TEMPORARY_RE.sub("", str(error.filename)) if error.filename else "")
  where = f" {where}" if where else ""
  if error.errno in (errno.EACCES, errno.EPERM):  # a read too, unless the caller says it wrote `path`
    return (f"cannot {'write' if path else 'access'}{where}: {error.strerror}: fix its permissions or "
            "choose another directory")
  fix = "free some space or choose another directory" if error.errno in NO_SPACE_ERRNOS else "choose another directory"
  return f"cannot write{where}: {error.strerror}: {fix}"


def check_writable_dir(path: str) -> None:
  """Makes the local output directory `path` and writes and removes a small file in it, so that a job
  that writes there only at its end (infer's predictions) is refused before its work, not after. The
  directories it made are removed again (a job refused later leaves nothing). An `is_unwritable`
  OSError names `path`; gs:// is not probed (its bucket is, by `check_not_a_file`)."""
  if is_remote(path):
    return
  made, parent = [], os.path.abspath(path)
  while not os.path.exists(parent) and parent != os.path.dirname(parent):
    made.append(parent)
    parent = os.path.dirname(parent)
  probe = os.path.join(path, f".write-probe-{uuid.uuid4().hex[:8]}")
  try:
    os.makedirs(path, exist_ok=True)
    with open_file(probe, "wb") as f:
      f.write(b"0")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    if is_unwritable(e):
      e.filename = path
    raise
  finally:
    with contextlib.suppress(OSError):
      os.remove(probe)
    for d in made:  # deepest first; one another writer filled since stays
      try:
        os.rmdir(d)
      except OSError:
        break


def _name_destination(error: BaseException, path: str, tmp: str) -> None:
  """An OSError of a write to `tmp` names `path`, the destination (a full disk's write error names no
  file at all)."""
  if (isinstance(error, OSError) and error.errno is not None
      and (error.filename is None or str(error.filename).startswith(tmp))):
    error.filename = path


def listdir(path: str) -> list:
  return gfile().listdir(path) if is_remote(path) else os.listdir(path)


def open_file(path: str, mode: str):
  return gfile().GFile(path, mode) if is_remote(path) else builtins.open(path, mode)


def makedirs(path: str) -> None:
  gfile().makedirs(path) if is_remote(path) else os.makedirs(path, exist_ok=True)


def walk(top: str):
  """(dirpath, dirnames, filenames) under `top`, as `os.walk` yields them."""
  return gfile().walk(top) if is_remote(top) else os.walk(top)


def rmtree(path: str) -> None:
  if is_remote(path):
    if gfile().exists(path):
      gfile().rmtree(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def rename(src: str, dst: str) -> None:
  if is_remote(src):
    gfile().rename(src, dst, overwrite=True)
  else:
    os.replace(src, dst)


def json_default(obj):
  """`json.dump(default=...)` for numpy scalars and arrays."""
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _write_durably(path: str, data: bytes) -> None:
  """Write, and on local disks fsync before the caller renames: otherwise a power loss (unlike a
  killed process) can leave the renamed name pointing at an empty file."""
  with open_file(path, "wb") as f:
    f.write(data)
    if not is_remote(path):
      f.flush()
      os.fsync(f.fileno())


def _new_token() -> str:
  """The 8 hex digits of a `.tmp-<id>` / `.old-<id>` name."""
  return uuid.uuid4().hex[:8]


def backup_name(path: str, token: Optional[str] = None) -> str:
  """`<path>.old-<id>` (`id`: `token`, else 8 random hex digits): the one name this project gives an
  earlier file or directory set aside, by `atomic_write_dir` for the moment of its swap and by
  `replace_keeping_earlier` for good. Readers of exports and library entries skip such names."""
  return f"{str(path).rstrip('/')}.old-{token or _new_token()}"


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Write to `<path>.tmp-<id>`, then rename over `path`; the temporary file is removed on failure."""
  parent = os.path.dirname(path)
  if parent:
    makedirs(parent)
  tmp = f"{path}.tmp-{_new_token()}"
  try:
    _write_durably(tmp, data)
    rename(tmp, path)
  except BaseException as e:
    _name_destination(e, path, tmp)
    if exists(tmp):
      gfile().remove(tmp) if is_remote(tmp) else os.remove(tmp)
    raise


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def _keep_aside(path: str, backup: str, data: bytes) -> None:
  """Makes `backup` hold `data`, the bytes of `path`, while `path` stays where it is: locally a hard
  link (no copy, and the file keeps its time), else (gs://, or a file system without links) an
  atomic write of the bytes."""
  if not is_remote(path):
    try:
      os.link(path, backup)
      return
    except FileExistsError:
      raise
    except OSError:
      pass  # EPERM, EXDEV, ENOTSUP, ...: a copy does it
  atomic_write_bytes(backup, data)


def _backup_of(path: str, earlier: bytes) -> Tuple[str, bool]:
  """(`backup_name(path, <first 8 hex digits of the sha256 of earlier>)`, whether it already holds
  exactly `earlier`); another content whose digest starts alike gets a random name instead."""
  backup = backup_name(path, hashlib.sha256(earlier).hexdigest()[:8])
  if exists(backup):
    if read_bytes(backup) == earlier:
      return backup, True
    backup = backup_name(path)
  return backup, False


def keep_earlier(path: str) -> Optional[str]:
  """Keeps a copy of the file `path` beside it, as `replace_keeping_earlier` names its backups
  (`<path>.old-<first 8 hex digits of its sha256>`), and leaves `path` as it is; returns the copy's
  name, or None when there is no `path`. A content kept once is not copied again. For a file that
  another writer is about to replace or rewrite in place (seqio's loggers truncate and rewrite theirs,
  so a hard link would change with it): the copy is written (atomically) before the caller goes on."""
  if not exists(path):
    return None
  earlier = read_bytes(path)
  backup, kept = _backup_of(path, earlier)
  if not kept:
    atomic_write_bytes(backup, earlier)
  return backup


def replace_keeping_earlier(path: str, data: bytes) -> Tuple[bool, Optional[str]]:
  """Writes `data` to `path` atomically (`atomic_write_bytes`) without losing an earlier file there.

  Returns `(written, backup)`. An earlier `path` with other bytes is first kept as
  `backup_name(path, <first 8 hex digits of its sha256>)` (on disk, or gs://, before `path` is
  replaced, so there is no moment without it): a file kept once is not kept again, under another name,
  by later reruns. An earlier `path` with exactly these bytes is left as it is: `(False, None)`, and
  nothing is written. `(True, None)`: there was no earlier file.
  """
  if not exists(path):
    atomic_write_bytes(path, data)
    return True, None
  earlier = read_bytes(path)
  if earlier == data:
    return False, None
  backup, kept = _backup_of(path, earlier)
  if not kept:
    _keep_aside(path, backup, earlier)
  atomic_write_bytes(path, data)
  return True, backup


def write_json_atomic(path: str, obj: Any, **dump_kwargs) -> None:
  dump_kwargs.setdefault("indent", 2)
  dump_kwargs.setdefault("default", json_default)
  atomic_write_bytes(path, json.dumps(obj, **dump_kwargs).encode())


def read_json_object(path: str) -> dict:
  """The JSON object in `path`; a ValueError naming the file otherwise (not the decoder's bare
  "line 1 column 2"). Callers add the fix, which depends on what wrote the file."""
  with open_file(path, "r") as f:
    try:
      out = json.loads(f.read())
    except ValueError as e:  # also UnicodeDecodeError: binary junk
      raise ValueError(f"{path} is not valid JSON (truncated or edited by hand?): {e}") from e
  if not isinstance(out, dict):
    raise ValueError(f"{path} holds a JSON {type(out).__name__}, not the expected object")
  return out


def atomic_write_dir(directory: str, files: dict) -> None:
  """Writes `files` {name: bytes} into a temporary sibling directory, then renames it to `directory`.

  An existing `directory` is moved aside first and deleted after the rename. Locally the window
  between the two renames is the only moment without a complete directory; on GCS a directory
  rename copies objects, so readers should ignore `*.tmp-*` names (prompt_io's readers do).
  """
  directory = directory.rstrip("/")
  parent = os.path.dirname(directory)
  if parent:
    makedirs(parent)
  token = _new_token()
  tmp = f"{directory}.tmp-{token}"
  try:
    makedirs(tmp)
    for name, data in files.items():
      _write_durably(join(tmp, name), data)
  except BaseException as e:
    _name_destination(e, directory, tmp)
    rmtree(tmp)
    raise
  old = None
  if exists(directory):
    old = backup_name(directory, token)
    rename(directory, old)
  try:
    rename(tmp, directory)
  except BaseException:
    if old is not None:
      rename(old, directory)
    rmtree(tmp)
    raise
  if old is not None:
    rmtree(old)


LOCK_NAME = ".lock"


class InUseError(ValueError):
  """Another job holds the directory (a ValueError: every command prints it as its one-line error)."""


@contextlib.contextmanager
def exclusive_lock(directory: str, what: str, wait_s: float = 0.0):
  """Holds `directory/.lock` while a job writes into `directory`: a second job on the same directory
  (two `train`s on one MODEL_DIR, two `library add`s) waits up to `wait_s` seconds, then is refused,
  instead of mixing its files with the first's. An OS lock (flock), so a job killed even by SIGKILL
  leaves no stale lock behind. Local directories only: a gs:// one is not locked (GCS has no such
  lock)."""
  if is_remote(directory):
    yield
    return
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  import logging  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    deadline, said = time.monotonic() + wait_s, False
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        if time.monotonic() >= deadline:
          waited = f" for over {wait_s:g} s" if wait_s else ""
          raise InUseError(f"{directory} is in use by another {what} ({holder}){waited}: wait for it to "
                           f"end, or use another directory") from None
        if not said:
          logging.getLogger("spot_jax").warning("%s is in use by another %s (%s): waiting for it (up to "
                                                "%g s)", directory, what, holder, wait_s)
          said = True
        time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def lock_holder(directory: str) -> Optional[str]:
  """Who holds `directory/.lock` (`exclusive_lock`), or None when nobody does; only looks, creating
  nothing (a job refused before it takes the lock leaves the directory as it was)."""
  path = os.path.join(directory, LOCK_NAME)
  if is_remote(directory) or not os.path.exists(path):
    return None
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    return None
  finally:
    os.close(fd)  # releases the shared lock, if taken
