"""Keeps a user's module named `tasks` (or `bench`) from silently standing in for spot_jax's own.

spot_jax ships two top-level packages beside itself: `tasks` (its seqio task registry) and `bench`.
`tasks.py` is also the usual name of a user's seqio task module, and Python finds one in the current
directory (`python -m ...`) before spot_jax's. `install()` (run by `import spot_jax`) puts a finder
first on `sys.meta_path` that, for those two top-level names only, looks where the import would go:

- spot_jax's own package (the sibling of this package's folder, in a checkout, an editable install
  or site-packages): imported as usual;
- anything else with a file (a `tasks.py`, a `tasks/__init__.py`): `ShadowedPackageError`, naming that
  file, spot_jax's package and the fix;
- nothing, or only a plain folder of that name (a namespace package): spot_jax's own.

Every other import passes after one membership test.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import Iterable, Optional

GUARDED = frozenset({"tasks", "bench"})
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WHAT = {"tasks": "its seqio task registry", "bench": "its benchmarks"}


class ShadowedPackageError(ImportError):
  """A module of the user's would be imported as spot_jax's top-level `tasks` or `bench`."""


def own_init(name: str) -> str:
  """spot_jax's own `NAME/__init__.py` (beside the `spot_jax` folder)."""
  return os.path.join(_ROOT, name, "__init__.py")


def _same_file(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


def _has_file(spec) -> bool:
  return spec is not None and spec.has_location and spec.origin is not None


def shadow_message(name: str, origin: str) -> str:
  fix = (f"rename your module (e.g. my_{name}.py)" +
         (" and pass --gin.MIXTURE_OR_TASK_MODULE=\"'my_tasks'\"" if name == "tasks" else ""))
  return (f"the module {name!r} found at {origin} shadows spot_jax's own top-level package {name!r} "
          f"({_WHAT.get(name, 'part of spot_jax')}, {own_init(name)}): {fix}")


def foreign_origin(name: str, paths: Iterable[str]) -> Optional[str]:
  """The file of the first module `name` in `paths` (sys.path entries) that is not spot_jax's own,
  or None. For a MIXTURE_OR_TASK_MODULE that names `tasks`: a user's module there is what was meant,
  even where spot_jax's is imported first."""
  name = name.split(".")[0]
  if name not in GUARDED:
    return None
  for entry in paths:
    spec = importlib.machinery.PathFinder.find_spec(name, [entry])
    if _has_file(spec) and not _same_file(spec.origin, own_init(name)):
      return spec.origin
  return None


class _Finder(importlib.abc.MetaPathFinder):
  """See the module docstring. Class attribute `spot_jax_import_guard` marks it (a reload installs
  no second one)."""
  spot_jax_import_guard = True

  def find_spec(self, fullname, path=None, target=None):
    if fullname not in GUARDED or path is not None:
      return None
    own = own_init(fullname)
    if not os.path.isfile(own):  # spot_jax installed without it: nothing to protect
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if _has_file(spec):
      if _same_file(spec.origin, own):
        return spec
      raise ShadowedPackageError(shadow_message(fullname, spec.origin), name=fullname, path=spec.origin)
    # Not on sys.path (an editable install's own finder maps it) or only a plain folder of that name.
    return importlib.util.spec_from_file_location(fullname, own,
                                                  submodule_search_locations=[os.path.dirname(own)])


def install() -> None:
  if not any(getattr(f, "spot_jax_import_guard", False) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())

