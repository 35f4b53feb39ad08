"""T5X-style command lines: repeatable `--gin_file`, `--gin.MACRO=VALUE`, `--gin_search_paths`.

`run(fn, argv)` parses the flags, optionally starts `jax.distributed`, loads gin, checks that every
required binding is present (with a message that names the missing macro and the flag that sets it),
in a run of several processes learns whether every other process started, with the same settings
(`process_startup`), and calls the configurable `fn` with everything from gin.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import argparse
import logging
import os
import pathlib
import re
import sys
import tokenize
from typing import Callable, List, Mapping, Optional, Sequence

import gin

from spot_jax import prompt_tuning_compat

from spot_jax import fileio
from spot_jax import gin_checks
from spot_jax import import_guard
from spot_jax import process_startup

# gin/ beside the package in a checkout (editable installs too); spot_jax/gin/ in an installed wheel.
_HERE = pathlib.Path(__file__).resolve().parent
GIN_DIR = next((d for d in (_HERE.parent / "gin", _HERE / "gin") if (d / "runs").is_dir()),
               _HERE.parent / "gin")


def default_search_paths() -> List[str]:
  return [str(GIN_DIR), str(GIN_DIR.parent), os.getcwd()]


class _QuietIncludeProbe(logging.Filter):
  """gin logs an ERROR for every search-path probe of an `include` before it finds the file."""

  def filter(self, record):
    return not str(record.msg).startswith("Path not found:")


logging.getLogger().addFilter(_QuietIncludeProbe())


def _macros_left_required(path: pathlib.Path) -> list:
  """The `%gin.REQUIRED` macros of a run file, with those of the run files it includes that it
  does not set itself, in the order gin reads them."""
  text = path.read_text()
  names = []
  for inc in re.findall(r"^include\s+'(runs/[^']+\.gin)'", text, re.M):
    names += _macros_left_required(GIN_DIR / inc)
  names += re.findall(r"^([A-Z][A-Z0-9_]*)\s*=\s*%gin\.REQUIRED", text, re.M)
  set_here = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=(?!\s*%gin\.REQUIRED)", text, re.M))
  return [n for i, n in enumerate(names) if n not in set_here and n not in names[:i]]


def _required_macros() -> str:
  """`run file: MACRO, ...` for the run files' `%gin.REQUIRED` macros (included files' too), for --help."""
  lines = []
  for path in sorted((GIN_DIR / "runs").glob("*.gin")):
    names = _macros_left_required(path)
    if names:
      lines.append(f"  runs/{path.name}: {', '.join(names)}")
  return "\n".join(lines)


def gin_flags_help() -> str:
  """The --help epilog of every gin-configured command: the --gin.NAME=VALUE form and what is required."""
  return ("Gin flags: --gin_file=FILE (repeatable; gin/ is searched), --gin_search_paths=DIRS, and any "
          "gin value as --gin.NAME=VALUE (T5X's spelling), e.g. --gin.MODEL_DIR=\"'/tmp/run'\" "
          f"--gin.TRAIN_STEPS=100.\nMacros each run file requires:\n{_required_macros()}\nThe other "
          "macros and their defaults: the run file's header and body (gin/runs/), and the README's "
          "macro table.")


class FlagError(SystemExit):
  """argparse's refusal of a flag (exit status 2, as argparse's), with its message kept in `.message`,
  so that a process of a multi-process run can tell the others why it stopped (`process_startup`)."""

  def __init__(self, message: str):
    super().__init__(2)
    self.message = message


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser whose refusals raise `FlagError` (the message kept for the other processes)."""

  def error(self, message):
    self.print_usage(sys.stderr)
    text = f"{self.prog}: error: {message}"
    print(text, file=sys.stderr)
    raise FlagError(text)


def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
  p.add_argument("--coordinator_address", default=None,
                 help="multi-process: host:port of process 0 (jax.distributed); auto on Cloud TPU")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.add_argument("--jax_distributed", "--multiprocess_gpu", dest="jax_distributed", action="store_true",
                 help="call jax.distributed.initialize() with no arguments: it reads Cloud TPU metadata, "
                      "SLURM or Open MPI environments (multi-host TPU slices, multi-node GPU)")


def _distributed_flags(prog: str, argv: Sequence[str]) -> argparse.Namespace:
  """Only the flags that start jax.distributed, read before the others: a process whose other flags are
  refused has then joined the run and can tell the other processes, which otherwise wait in JAX's
  connect step (up to 5 minutes) for a process that has already exited."""
  p = ArgumentParser(prog=prog, add_help=False)
  _add_distributed_flags(p)
  return p.parse_known_args(argv)[0]


def _parser(prog: str) -> argparse.ArgumentParser:
  p = ArgumentParser(
      prog=prog, description="Gin-configured spot_jax run (T5X-style flags).",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=gin_flags_help())
  p.add_argument("--gin_file", action="append", default=[],
                 help="gin file (repeatable; later files win). Relative paths resolve against the search "
                      "paths, which include spot_jax's gin/ folder.")
  p.add_argument("--gin_search_paths", action="append", default=[],
                 help="comma-separated folders searched for gin files and includes")
  p.add_argument("--gin_bindings", action="append", default=[], help="a gin binding, e.g. 'TRAIN_STEPS=10'")
  p.add_argument("--tfds_data_dir", default=None, help="TFDS data directory (local or gs://)")
  _add_distributed_flags(p)
  return p


def split_gin_flags(argv: Sequence[str]):
  """Turns `--gin.X=Y` (T5X's spelling) into bindings `X = Y`; returns (bindings, other args)."""
  bindings, rest = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--gin."):
      body = a[len("--gin."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise SystemExit(f"flag {a} has no value; write --gin.NAME=VALUE")
        body, i = f"{body}={argv[i + 1]}", i + 1
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(a)
    i += 1
  return bindings, rest


def split_run_flags(argv: Sequence[str]):
  """Separates this module's flags (gin, TFDS, distributed) from a command's own; returns (own, ours).

  For commands such as `spot-jax spot` that add flags of their own beside the T5X-style ones.
  """
  takes_value = {}
  for action in _parser("x")._actions:  # pylint: disable=protected-access
    for option in action.option_strings:
      takes_value[option] = action.nargs != 0
  own, ours = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    a = argv[i]
    name = a.split("=", 1)[0]
    if a.startswith("--gin.") or (name in takes_value and name not in ("-h", "--help")):
      ours.append(a)
      if "=" not in a and (a.startswith("--gin.") or takes_value[name]) and i + 1 < len(argv):
        ours.append(argv[i + 1])
        i += 1
    else:
      own.append(a)
    i += 1
  return own, ours


def _resolve(path: str, search_paths: Sequence[str]) -> str:
  if os.path.isabs(path) or os.path.exists(path) or path.startswith("gs://"):
    return path
  for base in search_paths:
    candidate = os.path.join(base, path)
    if os.path.exists(candidate):
      return candidate
  raise SystemExit(f"gin file {path!r} not found in the current directory or the search paths "
                   f"{list(search_paths)}; pass --gin_search_paths=DIR." + prompt_tuning_compat.gin_file_hint(path))


# Modules that define gin configurables: imported before parsing (so bindings resolve) and before
# `gin.finalize()` locks the registry (a configurable defined after that is an error).
CONFIGURABLE_MODULES = ("spot_jax.config", "spot_jax.prompts", "spot_jax.optim", "spot_jax.partitioning",
                        "spot_jax.input_pipeline", "spot_jax.train", "spot_jax.evaluation",
                        "spot_jax.eval", "spot_jax.infer", "spot_jax.metrics_log", "spot_jax.decode",
                        "spot_jax.scoring", "tasks")


def import_configurables():
  import importlib
  for name in CONFIGURABLE_MODULES:
    if importlib.util.find_spec(name) is not None:
      importlib.import_module(name)


def _open_remote(path: str):
  return fileio.open_file(path, "r")


def _gin_resource_exists(config_path: str) -> bool:
  """gin's check for a gin file inside a Python package (`include 'pkg/sub/file.gin'`), minus two faults:
  a plain directory named like the path's head (e.g. a `runs/` or `models/` folder in the current
  directory, a namespace package with no origin) crashed gin with a TypeError in place of "not a
  package", and each check logged an INFO line on the root logger."""
  import importlib.util as util  # pylint: disable=g-import-not-at-top
  head, filename = os.path.split(config_path)
  if not head:
    return False
  try:
    spec = util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError, AttributeError):
    return False
  return bool(spec and spec.origin) and os.path.isfile(os.path.join(os.path.dirname(spec.origin), filename))


def _safe_resource_reader() -> None:
  """Swaps gin's package-resource existence check for `_gin_resource_exists` (same reader)."""
  from gin import resource_reader  # pylint: disable=g-import-not-at-top
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  for i, (reader, exists) in enumerate(readers):
    if reader is resource_reader.system_path_reader and exists is not _gin_resource_exists:
      readers[i] = (reader, _gin_resource_exists)


def _is_remote_file(path: str) -> bool:
  return fileio.is_remote(path) and fileio.exists(path)


_SEARCH_PATHS_ADDED: set = set()


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()):
  """Loads gin files and bindings; `finalize()` then reports every missing `%gin.REQUIRED`."""
  import_configurables()
  # gin opens files with `open` only (gin.tf registers tf.io.gfile, which we do not import): without
  # this a `--gin_file=gs://...` (or an `include` of one) fails with "Unable to open file".
  gin.config.register_file_reader(_open_remote, _is_remote_file)
  _safe_resource_reader()
  gin.clear_config()
  paths = list(search_paths) + default_search_paths()
  for path in paths:
    if path not in _SEARCH_PATHS_ADDED:  # gin keeps them for the process: once each, not once a parse
      gin.add_config_file_search_path(path)
      _SEARCH_PATHS_ADDED.add(path)
  files = [_resolve(f, paths) for f in gin_files]
  gin_checks.check_file_order(gin_files, files, paths, GIN_DIR / "runs")
  global USER_GIN_FILES
  USER_GIN_FILES = [f for f in files if not _is_ours(f)]
  try:
    gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, tokenize.TokenError) as e:
    unquoted = gin_checks.unquoted_string_binding(bindings)
    if unquoted:
      raise SystemExit(f"gin configuration error: {unquoted}") from None
    where = gin_checks.file_that_fails(files, type(e)) if isinstance(e, (SyntaxError, tokenize.TokenError)) else None
    raise SystemExit(f"gin configuration error: {e}" + (
        f" in {where} (an unclosed bracket or quote?)" if where and isinstance(e, tokenize.TokenError) else
        f" in {where}" if where and str(where) not in str(e) else
        " (an unclosed bracket or quote in a --gin.NAME=VALUE binding or a gin file?)"
        if isinstance(e, tokenize.TokenError) else
        gin_checks.close_parameters(str(e)) or prompt_tuning_compat.configurable_hint(str(e)))) from None
  except OSError as e:  # an `include` gin cannot find
    m = re.search(r"Unable to open file: (\S+?)\.? Searched", str(e))
    hint = prompt_tuning_compat.gin_file_hint(m.group(1)) if m else ""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # where, on one line
    raise SystemExit(f"gin configuration error: {text if len(text) <= 500 else text[:500] + '...'}{hint}") \
        from None


TASK_MODULE_MACRO = gin_checks.TASK_MODULE_MACRO
USER_GIN_FILES: List[str] = []  # the last parse's --gin_file files that are not the project's own


def _is_ours(path: str) -> bool:
  return not _is_remote_file(path) and pathlib.Path(path).resolve().is_relative_to(GIN_DIR.resolve())


def finalize_or_explain():
  try:
    gin.finalize()
  except (ValueError, RuntimeError) as e:
    raise SystemExit(explain_missing(e)) from None


def explain_missing(error: Exception) -> str:
  """The missing macro, the flag that sets it, and the gin files of gin/ that define it."""
  text = str(error).strip()
  found = (re.search(r"'([A-Za-z_][A-Za-z0-9_]*)/gin\.macro'", text) or
           re.match(r"([A-Za-z_][A-Za-z0-9_]*)/macro\.value set to `%gin\.REQUIRED`", text))
  if found is None:
    return f"missing required gin binding: {text}\nSet it with --gin.NAME=VALUE or in a --gin_file."
  name = found.group(1)
  # Files that give it a value (not %gin.REQUIRED, and not a None placeholder such as spot_target.gin's
  # MIXTURE_OR_TASK_NAME). Run files are left out: a run takes one of them, and adding another run's
  # file (prompt_train.gin to an eval) would configure the wrong job.
  pattern = re.compile(rf"^{re.escape(name)}\s*=(?!\s*(?:%gin\.REQUIRED|None)\s*(?:#.*)?$)", re.M)
  setters = sorted(str(f.relative_to(GIN_DIR)) for f in GIN_DIR.rglob("*.gin")
                   if f.parent.name != "runs" and pattern.search(f.read_text()))
  files = f", or add a --gin_file that sets it ({', '.join(setters)})" if setters else " or in a --gin_file"
  return f"missing required gin binding: the macro {name} is not set.\nSet it with --gin.{name}=...{files}."


def distributed_timeouts() -> dict:
  """jax.distributed's waits, from the environment: `SPOT_JAX_STARTUP_TIMEOUT_S` (also the start-up
  exchange's, `process_startup`) bounds the wait for every process to connect; `SPOT_JAX_HEARTBEAT_TIMEOUT_S`
  is how long a silent process (killed outright, its host lost) goes unnoticed before the others stop
  (JAX's default 100 s). Unset: JAX's defaults."""
  waits = {name: process_startup.env_seconds(env) for env, name in (
      ("SPOT_JAX_STARTUP_TIMEOUT_S", "initialization_timeout"),
      ("SPOT_JAX_HEARTBEAT_TIMEOUT_S", "heartbeat_timeout_seconds"))}
  return {name: seconds for name, seconds in waits.items() if seconds is not None}


def init_distributed(args) -> None:
  """Start jax.distributed when flags, the environment or a Cloud TPU ask for it."""
  import jax
  if args.coordinator_address or args.num_processes:
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                               **distributed_timeouts())
  elif args.jax_distributed or os.environ.get("SPOT_JAX_DISTRIBUTED") == "1":
    jax.distributed.initialize(**distributed_timeouts())


# Bound per process on purpose (each process reads its own shard of the data): never compared.
_PER_PROCESS_PARAMETERS = ("shard_index",)


def shared_settings(config: str) -> dict:
  """`{binding: value}` of a `gin.config_str()` text (one entry per binding, a value continued over
  indented lines joined into one line), less the per-process ones."""
  settings, key = {}, None
  for line in config.splitlines():
    if line[:1].isspace() and key is not None:
      settings[key] = f"{settings[key]} {line.strip()}".strip()
    elif " = " in line and not line.startswith("#"):
      key, value = line.split(" = ", 1)
      settings[key] = "" if value == "\\" else value
    else:
      key = None
  return {k: v for k, v in settings.items() if k.rsplit(".", 1)[-1] not in _PER_PROCESS_PARAMETERS}


def settings_differ_message(configs: Sequence[str], most: int = 8) -> str:
  """The bindings that differ between processes' `shared_settings` texts, with each process's value,
  and the fix; '' when they agree."""
  settings = [shared_settings(c) for c in configs]
  names = list(dict.fromkeys(k for s in settings for k in s))
  differ = [n for n in names if len({s.get(n) for s in settings}) > 1]
  if not differ:
    return ""
  def value(s, n):
    v = s.get(n, "(not set)")
    return v if len(v) <= 100 else v[:97] + "..."
  parts = [f"{n}: " + ", ".join(f"process {i} has {value(s, n)}" for i, s in enumerate(settings))
           for n in differ[:most]]
  more = f"; and {len(differ) - most} more" if len(differ) > most else ""
  return (f"the processes of this run were started with different gin settings: {'; '.join(parts)}{more}. "
          "Start every process with the same flags and gin files (only --process_id differs)")


def settings_text() -> str:
  """This process's `shared_settings`, one `binding = value` a line: what the processes of a run compare
  (`process_startup`; call once gin is final).

  Every process must run the same job, as in T5X: otherwise a process with another BATCH_SIZE or task
  trains on a mixture of the two without a word, and one with another TRAIN_STEPS hangs at a collective
  the others never reach. Equal settings cost one 64-character digest a process in the coordination
  service's key-value store; only on a mismatch are the texts read, so that the error names each
  differing binding and its values (`settings_differ_message`).
  """
  return "\n".join(f"{k} = {v}" for k, v in shared_settings(gin.config_str()).items())


# What the jobs raise for bad input (they name the problem and the fix): shown as one message, not
# under gin's 20-30 lines of traceback. SPOT_JAX_TRACEBACK=1 keeps the traceback.
# A place that cannot be written (a full disk, a read-only file system: `fileio.is_unwritable`) is shown
# as one line too, naming the path and the fix; other OSErrors are bugs and keep their traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, FloatingPointError)
# What a rerun does after such a write error, by program: train saves checkpoints as it goes.
_RERUN_NOTES = {"spot_jax.train": "; once it can write there, the same command resumes from the last checkpoint"}


def run(fn: Callable, argv: Optional[Sequence[str]] = None, prog: str = "spot_jax"):
  """Parse T5X-style flags, configure gin, and call the configurable `fn()`; bad input exits with
  `PROG: error: MESSAGE` (SystemExit)."""
  configure(argv, prog)
  with _user_errors_as_one_line(prog):
    return fn()


def plain_warnings() -> None:
  """A command's warnings as `warning: MESSAGE` lines: Python's default adds the file, line number and
  source line of the `warnings.warn` call, which tell a user of the command line nothing."""
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.formatwarning = lambda message, category, *_, **__: f"warning: {message}\n"


def configure(argv: Optional[Sequence[str]] = None, prog: str = "spot_jax",
              then: Optional[Callable[[], Mapping[str, str]]] = None) -> argparse.Namespace:
  """Parse T5X-style flags, start jax.distributed if asked, load and finalize gin, register the
  users' gin-declared tasks. Returns the parsed flags. Every refusal reads `PROG: error: MESSAGE`, as
  the jobs' own errors do, so a script can look for one form.

  `then()`, for a command with options of its own (`spot-jax spot`), runs last inside the start-up
  exchange: it parses and checks those options (use `ArgumentParser`) and returns `{name: value}` of
  what every process must agree on, compared with the gin settings. So a process whose own options
  are refused, or differ, stops every process as a gin error does."""
  try:
    return _configure(argv, prog, then)
  except import_guard.ShadowedPackageError as e:  # a user's tasks.py in place of spot_jax's `tasks`
    raise SystemExit(f"{prog}: error: {user_message(e)}") from None
  except SystemExit as e:
    if isinstance(e.code, str) and not e.code.startswith(f"{prog}: "):
      raise SystemExit(f"{prog}: error: {e.code}") from None
    raise


def _configure(argv: Optional[Sequence[str]], prog: str,
               then: Optional[Callable[[], Mapping[str, str]]] = None) -> argparse.Namespace:
  argv = sys.argv[1:] if argv is None else list(argv)
  plain_warnings()
  bindings, rest = split_gin_flags(argv)
  init_distributed(_distributed_flags(prog, rest))
  # orbax and TFDS log every save and read at INFO through absl: keep a run's console to its own lines.
  logging.getLogger("absl").setLevel(max(logging.getLogger("absl").getEffectiveLevel(), logging.WARNING))
  # In a run of several processes each publishes how its start-up ended (an error, or its settings'
  # digest) and reads the others': one that stops here (a refused flag included) stops them all at
  # once, each naming it, and different settings stop them all with the differing bindings
  # (process_startup).
  with process_startup.Outcomes(prog, settings_differ_message) as startup:
    args = _parser(prog).parse_args(rest)
    bindings = list(args.gin_bindings) + bindings
    search = [p for arg in args.gin_search_paths for p in arg.split(",") if p]
    if not args.gin_file:
      raise SystemExit(f"{prog}: error: pass at least one --gin_file (see the gin/ folder)")
    if args.tfds_data_dir:
      os.environ["TFDS_DATA_DIR"] = args.tfds_data_dir
    parse_gin(args.gin_file, bindings, search)
    with _user_errors_as_one_line(prog):  # a bad file in the user's task module
      import_guard.check_loaded()  # a user's tasks.py imported before (by their script): not spot_jax's
      prompt_tuning_compat.import_task_modules(prompt_tuning_compat.query_macros([TASK_MODULE_MACRO]).get(
          TASK_MODULE_MACRO))
    gin_checks.check_macros_are_read(bindings, USER_GIN_FILES)
    gin_checks.check_bindings_are_used()
    finalize_or_explain()
    gin_checks.check_num_partitions()
    settings = settings_text()
    steps = prompt_tuning_compat.query_macros(["TRAIN_STEPS", "INITIAL_CHECKPOINT_PATH"])
    try:
      prompt_tuning_compat.check_train_steps(steps.get("TRAIN_STEPS"), steps.get("INITIAL_CHECKPOINT_PATH"))
    except ValueError as e:
      raise SystemExit(f"{prog}: error: {e}") from None
    from tasks import user_data  # users' tasks declared in gin files register now, before any lookup
    with _user_errors_as_one_line(prog):
      user_data.register_from_gin()
    own = then() if then is not None else {}
    startup.settings = settings + "".join(f"\n{name} = {value}" for name, value in own.items())
  return args


def user_message(error: BaseException) -> str:
  """An error's own text: gin appends "In call to configurable ..." lines to errors raised inside a
  configurable, which say nothing to the user (a KeyError's text without its quotes)."""
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  return "\n".join(l for l in text.splitlines() if not l.strip().startswith("In call to configurable")).strip()


class _user_errors_as_one_line:  # pylint: disable=invalid-name
  """USER_ERRORS inside become `PROG: error: MESSAGE`: the job's, and those of registering the user's
  tasks (their module, their gin declarations: `UserDataError` names the file, the line, the fix)."""

  def __init__(self, prog: str):
    self.prog = prog

  def __enter__(self):
    return self

  def __exit__(self, kind, error, tb):
    if error is None or os.environ.get("SPOT_JAX_TRACEBACK", "") not in ("", "0"):
      return False
    if isinstance(error, import_guard.ShadowedPackageError):  # its file and the fix: no traceback to see
      raise SystemExit(f"{self.prog}: error: {user_message(error)}") from None
    error = staged_user_error(error) or error
    unwritable = unwritable_error(error)
    if unwritable is not None:
      message = fileio.unwritable_message(unwritable) + _RERUN_NOTES.get(self.prog, "")
    else:
      message = user_message(error) if isinstance(error, USER_ERRORS) else out_of_memory_message(error)
    if message is None:
      return False
    raise SystemExit(f"{self.prog}: error: {message}\n(SPOT_JAX_TRACEBACK=1 shows the traceback)") from error


# The project's errors that name their fix, raised where TensorFlow may be tracing a tf.data function
# (a vocabulary read first by seqio's tokenize map): `staged_user_error` finds them in autograph's wrapping.
_STAGED_USER_ERRORS = (("tasks.vocab", "VocabularyError"),)


def staged_user_error(error: BaseException) -> Optional[BaseException]:
  """The project's own error (`_STAGED_USER_ERRORS`: a `tasks.vocab.VocabularyError`, naming
  SPOT_JAX_VOCAB) that TensorFlow's autograph wrapped in a `StagingError` ("in user code:" and 100
  lines of frames) because it was raised while a tf.data function was traced: eval's and infer's split
  checks read the first examples before the model loads, and the vocabulary is read then. Found in the
  error's cause/context chain (gin's proxy of the StagingError first); None for any other error, and for
  a StagingError around anything else (a bug: its traceback is kept)."""
  if not any(k.__name__ == "StagingError" and k.__module__.startswith("tensorflow") for k in type(error).__mro__):
    return None
  seen = set()
  inner = error
  while inner is not None and id(inner) not in seen:
    seen.add(id(inner))
    if any((k.__module__, k.__name__) in _STAGED_USER_ERRORS for k in type(inner).__mro__):
      return inner
    inner = inner.__cause__ or inner.__context__
  return None


def unwritable_error(error: BaseException) -> Optional[OSError]:
  """`error` if `fileio.is_unwritable`, seen through gin's proxy of an error raised in a configurable (a
  subclass of its type whose errno and filename are None; the original is its `__context__`)."""
  context = error.__context__
  if (isinstance(error, OSError) and error.errno is None and context is not None
      and type(error).__mro__[1] is type(context)):
    error = context
  return error if fileio.is_unwritable(error) else None


def out_of_memory_message(error: BaseException) -> Optional[str]:
  """XLA's RESOURCE_EXHAUSTED as the fix, not 40 frames: the sizes a run sets are what fills memory
  (an infer or eval with TASK_FEATURE_LENGTHS=None pads every batch to the longest example)."""
  text = str(error)
  if type(error).__name__ not in ("JaxRuntimeError", "XlaRuntimeError") or "RESOURCE_EXHAUSTED" not in text:
    return None
  first = next((l.strip() for l in text.splitlines() if "RESOURCE_EXHAUSTED" in l), text)[:300].rstrip(".")
  return (f"out of memory on the device: {first}. Lower the batch size (BATCH_SIZE), or bound the "
          f"lengths with TASK_FEATURE_LENGTHS (None pads to the longest example: one very long row can "
          f"need this much), or shard the model over more devices (NUM_PARTITIONS)")
