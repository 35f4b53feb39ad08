"""A tf.io.gfile stand-in for tests of gs:// paths: `gs://<bucket>/...` maps to a local directory.

Patch it in with `monkeypatch.setattr(spot_jax.fileio, "gfile", lambda: LocalGfile(root))`. `used`
records which calls a test made, so it can check that a path went through gfile at all.
"""
import os
import shutil
import types


class LocalGfile:
  def __init__(self, root, bucket: str = "gs://bucket"):
    self.root = str(root)
    self.bucket = bucket.rstrip("/")
    self.used = set()

  def _p(self, path, name=None):
    assert path.startswith(self.bucket), path
    if name:
      self.used.add(name)
    return os.path.join(self.root, path[len(self.bucket):].lstrip("/"))

  def exists(self, path):
    return os.path.exists(self._p(path, "exists"))

  def stat(self, path):
    return types.SimpleNamespace(length=os.path.getsize(self._p(path, "stat")))

  def isdir(self, path):
    return os.path.isdir(self._p(path, "isdir"))

  def listdir(self, path):
    return os.listdir(self._p(path, "listdir"))

  def makedirs(self, path):
    os.makedirs(self._p(path, "makedirs"), exist_ok=True)

  def GFile(self, path, mode):  # noqa: N802 (tf's name)
    local = self._p(path, "GFile")
    if mode[0] in "wa":  # GCS has no directories to create first
      os.makedirs(os.path.dirname(local), exist_ok=True)
    return open(local, mode)

  def rename(self, src, dst, overwrite=False):
    assert overwrite
    os.replace(self._p(src, "rename"), self._p(dst))

  def rmtree(self, path):
    shutil.rmtree(self._p(path, "rmtree"))

  def remove(self, path):
    os.remove(self._p(path, "remove"))

  def walk(self, top):
    for d, dirs, files in os.walk(self._p(top, "walk")):
      yield f"{self.bucket}/" + os.path.relpath(d, self.root).replace(os.sep, "/"), dirs, files


def serve_bucket(monkeypatch, root, bucket: str = "gs://bucket"):
  """Point the byte-range reads of gs:// safetensors (tensorstore's kvstore, not tf.io.gfile) at the local
  directory `root`, as LocalGfile(root, bucket) does for tf.io.gfile: `gs://<bucket>/x` is `root/x`."""
  from spot_jax.checkpoints import hf
  prefix = bucket.rstrip("/") + "/"

  def store(path):
    assert path.startswith(prefix), path
    return {"driver": "file", "path": os.path.abspath(str(root)) + "/"}, path[len(prefix):]
  monkeypatch.setattr(hf, "gcs_object_store", store)
