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

Only spot_jax's own imports are checked (those of its modules, of its `tasks` and `bench` packages and
of its commands, `python -m spot_jax.train` included): the finder looks past importlib's frames at the
module that imports. A user's own `import tasks` (their Celery or invoke tasks.py, a notebook that uses
spot_jax.checkpoints) after `import spot_jax` gets the user's module, as without spot_jax.

A foreign `tasks` (`bench`) already imported (in `sys.modules`, which no finder is asked about) is
refused where spot_jax comes to use its own: `check_loaded` (the commands' start-up, get_task) and the
finder, for a submodule (`tasks.vocab`) spot_jax imports of a user's package of that name. A user's
plain tasks.py imported first otherwise reads as Python's own "cannot import name ... from 'tasks'
(PATH)".

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
_HERE = os.path.realpath(__file__)
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


def loaded_origin(name: str) -> Optional[str]:
  """The file of the module `name` (`tasks` or `bench`) in sys.modules when it is not spot_jax's own
  (a user's, imported first), else None."""
  module = sys.modules.get(name)
  origin = getattr(module, "__file__", None) if module is not None else None
  if not origin or not os.path.isfile(own_init(name)) or _same_file(origin, own_init(name)):
    return None
  return origin


def check_loaded(*names: str) -> None:
  """ShadowedPackageError when a module of the user's already stands in sys.modules as spot_jax's
  `tasks` / `bench` (all of GUARDED without names): for spot_jax's code that is about to use its own."""
  for name in names or sorted(GUARDED):
    origin = loaded_origin(name)
    if origin is not None:
      raise ShadowedPackageError(shadow_message(name, origin) + f" (it was imported before spot_jax needed "
                                 f"its own {name!r}: import your module under the new name too)",
                                 name=name, path=origin)


_IMPORTLIB_DIR = os.path.dirname(os.path.realpath(importlib.__file__))
_OWN_DIRS = tuple(os.path.join(os.path.realpath(_ROOT), n) + os.sep for n in ("spot_jax",) + tuple(sorted(GUARDED)))


def _is_importlib(filename: str) -> bool:
  """importlib's frames (frozen, or its package's files: import_module) and this module's."""
  if filename.startswith("<frozen importlib"):
    return True
  real = os.path.realpath(filename)
  return real == _HERE or os.path.dirname(real) == _IMPORTLIB_DIR


def _imported_by_spot_jax() -> bool:
  """Whether the code importing now (the first frame past importlib's own and this module's) is
  spot_jax's: a file of spot_jax's packages (spot_jax, its `tasks` and `bench`; a command run as
  `python -m spot_jax.train` included) or a module named spot_jax.*. A user's module named `tasks` is
  not spot_jax's, so only files count for those two names."""
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None and _is_importlib(frame.f_code.co_filename):
    frame = frame.f_back
  if frame is None:
    return False
  name = frame.f_globals.get("__name__")
  if isinstance(name, str) and name.partition(".")[0] == "spot_jax":
    return True
  return os.path.realpath(frame.f_code.co_filename).startswith(_OWN_DIRS)


def check_user_module(name: str) -> None:
  """Raises ShadowedPackageError when `name` (a MIXTURE_OR_TASK_MODULE, `tasks --module`) would be a
  user's module in the current directory or on sys.path that spot_jax's own `tasks`/`bench` stands for."""
  foreign = foreign_origin(name, [os.getcwd()] + sys.path)
  if foreign:
    raise ShadowedPackageError(shadow_message(name.split(".")[0], foreign))


class _Finder(importlib.abc.MetaPathFinder):
  """See the module docstring. Class attribute `spot_jax_import_guard` marks it (a reload installs
  no second one)."""
  spot_jax_import_guard = True

  def find_spec(self, fullname, path=None, target=None):
    if fullname not in GUARDED or path is not None:
      top = fullname.partition(".")[0]
      # spot_jax's `import tasks.vocab` where a user's package `tasks` was imported first.
      if path is not None and top in GUARDED and loaded_origin(top) and _imported_by_spot_jax():
        check_loaded(top)
      return None
    own = own_init(fullname)
    if not os.path.isfile(own):  # spot_jax installed without it: nothing to protect
      return None
    if not _imported_by_spot_jax():  # the user's own `import tasks`: theirs, as without spot_jax
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

