"""Checks of a gin configuration that gin itself does not make: each catches a setting that would
otherwise be ignored without a word (a file whose macro a later include sets back, a macro no file
reads, a binding of a parameter the jobs pass themselves) or a value gin would only reject deep in a
job (an unquoted string, a mistyped parameter, NUM_PARTITIONS). `gin_utils` calls them as it parses."""
from __future__ import annotations

import difflib
import os
import pathlib
import re
import tokenize
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import gin
from gin import config_parser

from spot_jax import prompt_tuning_compat
from spot_jax.gin_flags import shell_binding

# T5X's module-of-tasks macro: spot_jax imports it too, so prompt-tuning command lines keep working.
TASK_MODULE_MACRO = "MIXTURE_OR_TASK_MODULE"


_MACRO_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#.*)?$")
# A parameter binding on a line of its own (`spot_jax.model_config.dtype = 'float32'`, scoped `train/...`).
_BINDING_LINE = re.compile(r"^((?:[A-Za-z_][\w.]*/)*[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)\s*=\s*(.*?)\s*(?:#.*)?$")
_INCLUDE_LINE = re.compile(r"^include\s+['\"]([^'\"]+)['\"]")

# The project's gin files in the order the README gives them (T5X's): variant, prompt initializer, size,
# bfloat16 setting, run file, partitioning. The first pattern a file of gin/ matches gives its place.
_PLACES = (("models/sizes/*.gin", 2), ("models/*_bf16.gin", 3), ("models/*.gin", 0), ("prompts/*.gin", 1),
           ("runs/*.gin", 4), ("partitioning/*.gin", 5))


def _place(path: str, gin_dir: str) -> Optional[int]:
  """The place of one of the project's gin files in the documented order; None for any other file."""
  import fnmatch  # pylint: disable=g-import-not-at-top
  try:
    relative = pathlib.Path(path).resolve().relative_to(pathlib.Path(gin_dir).resolve()).as_posix()
  except (ValueError, OSError):
    return None
  return next((place for pattern, place in _PLACES if fnmatch.fnmatch(relative, pattern)), None)


class _Setting(NamedTuple):
  """One setting of a name in a gin file, as `_macro_setters` finds it."""
  text: str  # the value as written (a value of several lines on one line, comments left out)
  value: Any  # gin's reading of it (`@name()` and `%NAME` as tuples), or _UNPARSED
  chain: tuple  # the includes (as written) through which the file sets it; () for the file's own line
  origin: str  # the file whose own line sets it: the file itself, or the end of `chain`


_UNPARSED = object()  # a value gin's parser does not take alone (gin will say so when it parses)


def _full_selector(selector: str) -> str:
  """A configurable's selector (scopes kept) with the configurable's full name from gin's registry:
  `model_config` is `spot_jax.model_config` once spot_jax.config is imported. As written when gin knows
  no configurable or more than one by it."""
  scope, slash, name = selector.rpartition("/")
  try:
    matches = gin.config._REGISTRY.matching_selectors(name)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except  (a name gin cannot match: compared as written)
    matches = []
  return scope + slash + (matches[0] if len(matches) == 1 else name)


def _full_name(name: str) -> str:
  """A macro as written; a parameter binding (`model_config.dtype`) with its configurable's full name."""
  configurable, dot, param = name.rpartition(".")
  return _full_selector(configurable) + dot + param if dot else name


class _References(config_parser.ParserDelegate):
  """gin's parser with references kept as comparable tuples (gin's own delegate makes objects that
  compare by identity, and needs the macros and configurables of a parse)."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return ("@", _full_selector(scoped_configurable_name), evaluate)

  def macro(self, macro_name):
    return ("%", macro_name)


def _parse_value(text: str) -> Any:
  """gin's reading of one value's text; raises tokenize.TokenError while a bracket is still open."""
  parser = config_parser.ConfigParser(text, _References())
  value = parser.parse_value()
  if parser.current_token.type not in (tokenize.NEWLINE, tokenize.ENDMARKER):
    raise SyntaxError(f"more than one value: {text!r}")
  return value


def _without_comments(text: str) -> str:
  """A value of several lines on one line, its comments left out (for messages)."""
  lines = text.splitlines()
  try:
    for token in tokenize.generate_tokens(iter(line + "\n" for line in lines).__next__):
      if token.type == tokenize.COMMENT:
        row, col = token.start
        lines[row - 1] = lines[row - 1][:col]
  except (tokenize.TokenError, SyntaxError):
    pass
  return " ".join(line.strip() for line in lines if line.strip())


def _read_value(first: str, line: str, following: Sequence[str]) -> Tuple[str, Any, int]:
  """(text without comments, gin's reading, how many of `following` lines it takes) of the value that
  starts on `line` after its `=` (`first`: the text there as a regex cut it, kept for a value gin's
  parser does not take, which is compared by that text)."""
  start = line.partition("=")[2].lstrip()
  for taken in range(0, min(len(following), 500) + 1):
    text = "\n".join([start, *following[:taken]])
    try:
      return _without_comments(text), _parse_value(text), taken
    except tokenize.TokenError:  # a bracket still open: the value goes on on the next line
      continue
    except Exception:  # pylint: disable=broad-except  (gin will say what is wrong with it)
      break
  return first, _UNPARSED, 0


def _same_value(a: _Setting, b: _Setting) -> bool:
  """Whether two settings give one value, as gin reads them (`'x'` and `"x"` are one; so are two
  dicts written over several lines that differ after their first line only when their values do)."""
  if a.value is not _UNPARSED and b.value is not _UNPARSED:
    return a.value == b.value
  return a.text == b.text


def _macro_setters(path: str, search_paths: Sequence[str], _depth: int = 0) -> Dict[str, _Setting]:
  """`{name: _Setting}` of the macros and parameter bindings a local gin file sets, the last setting of
  each in gin's reading order, a binding under its configurable's full name (`_full_name`). A file that
  cannot be read here sets nothing (gin will say why)."""
  try:
    text = pathlib.Path(path).read_text()
  except (OSError, ValueError):
    return {}
  setters = {}
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    line = lines[i]
    i += 1
    include = _INCLUDE_LINE.match(line)
    if include and _depth < 10:
      found = next((c for c in [include.group(1)] + [os.path.join(b, include.group(1)) for b in search_paths]
                    if os.path.isfile(c)), None)
      for name, setting in (_macro_setters(found, search_paths, _depth + 1) if found else {}).items():
        setters.pop(name, None)  # keeps gin's reading order: the last setting of a name comes last
        setters[name] = setting._replace(chain=(include.group(1),) + setting.chain)
    found_setting = _MACRO_LINE.match(line) or _BINDING_LINE.match(line)
    if found_setting:
      value_text, value, taken = _read_value(found_setting.group(2), line, lines[i:])
      i += taken
      name = _full_name(found_setting.group(1))
      setters.pop(name, None)
      setters[name] = _Setting(value_text, value, (), path)
  return setters


class _Owner(NamedTuple):
  """The `--gin_file` whose setting of a name stands so far."""
  given: str  # as given
  path: str  # as resolved
  setting: _Setting
  place: Optional[int]  # the place (`_PLACES`) of the file that sets the value: setting.origin's


def check_file_order(gin_files: Sequence[str], resolved: Sequence[str], search_paths: Sequence[str],
                     runs_dir: str) -> None:
  """Refuses a `--gin_file` whose setting (a macro or a parameter binding) a later `--gin_file` sets
  again: later files win, so `--gin_file=partitioning/model_parallel_4.gin --gin_file=runs/prompt_train.gin`
  ended with the NUM_PARTITIONS = 1 of the run file's `include 'partitioning/data_parallel.gin'`, a
  user's task file given before the run file ended with its `MIXTURE_OR_TASK_NAME = %gin.REQUIRED`, and
  `--gin_file=models/gpu_bf16.gin --gin_file=models/t5_1_1.gin` trained with the variant's float32
  FROZEN_DTYPE and activations beside the fused attention (half the GPU setting).

  Refused when the later file is a run file (gin/runs/); when it is another of the project's files
  (`runs_dir`'s parent) and the file that set the value before (the earlier file's own line, or the
  project file at the end of its include chain) is the user's own or comes later in the documented
  order (`_PLACES`: variant, prompts, size, bfloat16, runs, partitioning); or when it sets the value
  through an include over an earlier file's own line. Otherwise later wins, as it says: a user's file
  (its own lines) after any file; one user file's include undone by another's; two project files of
  one place (`partitioning/model_parallel_4.gin` then `partitioning/model_parallel_2.gin`); a project
  file after a user's file that includes project files of its place or before
  (`my_model.gin` with `include 'models/t5_1_1.gin'`, then `models/gpu_bf16.gin`, as T5X users wrap
  the project's files)."""
  gin_dir = os.path.dirname(os.path.abspath(runs_dir))
  owner: Dict[str, _Owner] = {}
  for given, path in zip(gin_files, resolved):
    setters = _macro_setters(path, search_paths)
    is_run_file = os.path.dirname(os.path.abspath(path)) == os.path.abspath(runs_dir)
    place = _place(path, gin_dir)
    undone = []  # (name, the earlier owner, the later setting)
    for name, setting in setters.items():
      before = owner.get(name)
      if before and not _same_value(before.setting, setting) and (
          is_run_file or (setting.chain and not before.setting.chain) or
          (place is not None and (before.place is None or place < before.place))):
        undone.append((name, before, setting))
    if undone:
      _refuse_order(given, undone, search_paths)
    for name, setting in setters.items():
      owner[name] = _Owner(given, path, setting, _place(setting.origin, gin_dir))


def _refuse_order(given: str, undone: list, search_paths: Sequence[str]) -> None:
  """The refusal of `check_file_order`: every setting of the first earlier file that `given` undoes,
  macros first, with the order to use and the bindings that would do the same."""
  earlier, earlier_path = undone[0][1].given, undone[0][1].path
  undone = sorted((u for u in undone if u[1].path == earlier_path),
                  key=lambda u: re.fullmatch(r"[A-Z][A-Z0-9_]*", u[0]) is None)  # macros first
  (name, before, setting), rest = undone[0], undone[1:]
  def through(chain):
    return f" through its include of {', which includes '.join(chain)}" if chain else ""
  also = (f" (and {', '.join(f'{n} = {b.setting.text} back to {s.text}' for n, b, s in rest)})"
          if rest else "")
  every = len(undone) == len(_macro_setters(earlier_path, search_paths))
  effect = "have no effect" if every else "be applied only in part"
  bindings = " ".join(shell_binding(n, b.setting.text) for n, b, _ in undone)
  raise SystemExit(
      f"--gin_file={earlier} sets {name} = {before.setting.text}{through(before.setting.chain)}, but the "
      f"later --gin_file={given} sets it back to {setting.text}{through(setting.chain)}{also}, and later "
      f"files win: {earlier} would {effect}. Give --gin_file={earlier} after --gin_file={given}, or set "
      f"{bindings} (a --gin.NAME=VALUE binding wins wherever it stands)")


def unquoted_string_binding(bindings: Sequence[str]) -> str:
  """The first binding whose value is a bare word or path (`--gin.MODEL_DIR=/tmp/run`): the shell ate
  no quotes gin could see, and gin says only "Unable to parse value (line 2)"."""
  import ast  # pylint: disable=g-import-not-at-top
  for binding in bindings:
    name, _, value = binding.partition("=")
    value = value.strip()
    if not value or value[0] in "@%'\"([{-+." or value in ("True", "False", "None"):
      continue
    try:
      ast.literal_eval(value)
    except (ValueError, SyntaxError):
      name = name.strip()
      return (f"the value of {name} is not quoted: {value!r} is read as gin code, not a string. Quote it "
              f"inside the shell's quotes: {shell_binding(name, repr(value))}")
  return ""


def close_parameters(message: str) -> str:
  """' Did you mean ...?' for gin's "Configurable 'X' doesn't have a parameter named 'y'"."""
  m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message)
  if not m:
    return ""
  import inspect  # pylint: disable=g-import-not-at-top
  try:
    fn = gin.config._REGISTRY.get_match(m.group(1)).wrapped  # pylint: disable=protected-access
    names = list(inspect.signature(fn).parameters)
  except Exception:  # pylint: disable=broad-except  (a hint only)
    return ""
  close = difflib.get_close_matches(m.group(2), names, n=3)
  return f"\nDid you mean {', '.join(close)}?" if close else ""


def file_that_fails(files: Sequence[str], error_type: type) -> Optional[str]:
  """The first of `files` that fails to parse alone with `error_type` (a tokenizer error does not say
  which file it came from), or None when none does (then the command line's bindings did)."""
  for path in files:
    gin.clear_config()
    try:
      gin.parse_config_file(path, skip_unknown=True)
    except error_type:
      return path
    except Exception:  # pylint: disable=broad-except  (another error: not the file that failed so)
      continue
  gin.clear_config()
  return None


def _macros_set_in(path: str) -> list:
  """The macros a gin file sets on a line of its own (`NAME = value`)."""
  from spot_jax import fileio  # pylint: disable=g-import-not-at-top
  try:
    with fileio.open_file(path, "r") as f:
      text = f.read()
  except Exception:  # pylint: disable=broad-except  (parsed already; a read that fails now: not checked)
    return []
  return re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", text, re.M)


def check_macros_are_read(bindings: Sequence[str], user_files: Sequence[str] = ()) -> None:
  """A macro that no gin file reads would be ignored silently: set on the command line
  (`--gin.TRAIN_STEP=5` for TRAIN_STEPS) or in a user's own gin file (`user_files`: not the project's,
  whose macros some runs leave unread). Refuse it, naming the macros that are read. Call after
  `parse_gin`."""
  config = gin.config_str()
  read = set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", config))
  defined = set(re.findall(r"^([A-Z][A-Z0-9_]*) = ", config, re.M))
  where = [(binding.split("=", 1)[0].strip(), "on the command line") for binding in bindings]
  where += [(name, f"in {path}") for path in user_files for name in _macros_set_in(path)]
  for name, place in where:
    if name == TASK_MODULE_MACRO:  # imported by `configure`, as T5X does
      continue
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and name not in read:
      close = difflib.get_close_matches(name, sorted((read | defined) - {name}), n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      if prompt_tuning_compat.macro_hint(name):
        hint = f" (T5X/prompt-tuning macro: {prompt_tuning_compat.macro_hint(name)}.)"
      raise SystemExit(f"gin macro {name} is set {place} but no gin file of this run reads "
                       f"it (as %{name}), so it would have no effect.{hint}")


# Parameters of configurables that the jobs always pass themselves: gin lets a caller's argument win,
# so a binding of one (`--gin.spot_jax.partitioning.make_mesh.num_partitions=8`) would be ignored without
# a word. Each with what sets it instead. tests/test_gin_utils.py finds these from the call sites in
# spot_jax/ and fails on one missing here.
PASSED_BY_THE_JOBS = {
    "spot_jax.partitioning.make_mesh": {
        "num_partitions": "set NUM_PARTITIONS (e.g. --gin.NUM_PARTITIONS=2, or "
                          "--gin_file=partitioning/model_parallel_2.gin after the run file)",
        "devices": "the mesh is over every device of the run"},
    "spot_jax.input_pipeline.get_batches": {
        "mixture_or_task_name": "set MIXTURE_OR_TASK_NAME",
        "task_feature_lengths": "set TASK_FEATURE_LENGTHS",
        "split": "training reads the split 'train'",
        "batch_size": "set BATCH_SIZE (the global batch)",
        "seed": "set SEED",
        "skip_batches": "a resumed run skips the batches of the steps it restores",
        "shard_index": "each process reads the rows of its devices in the mesh",
        "num_shards": "each process reads the rows of its devices in the mesh"},
}


def check_bindings_are_used() -> None:
  """Refuses a binding (command line or gin file) of a parameter in PASSED_BY_THE_JOBS, naming what
  sets it. Call after `parse_gin`."""
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    for param in params:
      instead = PASSED_BY_THE_JOBS.get(selector, {}).get(param)
      if instead:
        name = f"{scope + '/' if scope else ''}{selector}.{param}"
        raise SystemExit(f"the binding {name} would have no effect: the jobs pass {param} to "
                         f"{selector.rsplit('.', 1)[-1]} themselves; {instead}")


def check_num_partitions() -> None:
  """NUM_PARTITIONS's type and range, in the words of `partitioning.make_mesh` for every job, before the
  job starts (its divisibility by the devices is checked when the mesh is made)."""
  value = prompt_tuning_compat.query_macros(["NUM_PARTITIONS"])
  if "NUM_PARTITIONS" in value:
    from spot_jax import partitioning  # pylint: disable=g-import-not-at-top
    error = partitioning.num_partitions_error(value["NUM_PARTITIONS"])
    if error:
      raise SystemExit(error)
