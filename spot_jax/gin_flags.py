"""A gin binding as a command-line flag a user can paste into bash (`--gin.NAME=VALUE`), for the
error messages that suggest one: the shell removes a level of quotes that gin needs kept."""
from __future__ import annotations

import io
import re
import shlex
import tokenize

# What bash leaves as it is in a word outside quotes, and what it still changes inside double quotes
# (`!`: history expansion, in an interactive shell).
_SHELL_PLAIN = re.compile(r"[\w@%+=:,./-]*")
_SHELL_DOUBLE_QUOTE_SPECIAL = re.compile(r"[\"$`\\!]")
# A gin string written in double quotes that reads the same in single quotes (no quote nor backslash).
_PLAIN_DOUBLE_QUOTED = re.compile(r'"[^"\'\\]*"')


def _single_quoted_strings(value: str) -> str:
  """`value` (gin text) with each plain string written in double quotes written in single quotes, as the
  docs write them (`"my_sent"` -> `'my_sent'`, `{"inputs": 16}` -> `{'inputs': 16}`): gin reads both the
  same, and single quotes go inside the shell's double quotes. Any other text is left as it is."""
  try:
    tokens = list(tokenize.generate_tokens(io.StringIO(value).readline))
  except (tokenize.TokenError, SyntaxError):
    return value
  strings = [t for t in tokens if t.type == tokenize.STRING and _PLAIN_DOUBLE_QUOTED.fullmatch(t.string)]
  if any(t.start[0] != 1 or t.end[0] != 1 for t in strings):
    return value
  for t in reversed(strings):
    value = f"{value[:t.start[1]]}'{t.string[1:-1]}'{value[t.end[1]:]}"
  return value


def shell_binding(name: str, value: str) -> str:
  """`--gin.NAME=VALUE` as a flag to paste into bash: gin reads `value` (gin text, as a gin file writes it)
  from it. The shell removes one level of quotes, so a gin string needs quotes inside the shell's own:
  `"my_sent"` (as a gin file may write it) becomes `--gin.NAME="'my_sent'"` (the docs' form), not
  `--gin.NAME="my_sent"`, which reaches gin as the bare word my_sent."""
  single = _single_quoted_strings(value)
  if _SHELL_PLAIN.fullmatch(single):
    return f"--gin.{name}={single}"
  if not _SHELL_DOUBLE_QUOTE_SPECIAL.search(single):
    return f'--gin.{name}="{single}"'
  for text in (value, single):  # `"$HOME"`: the shell's single quotes keep everything
    if "'" not in text:
      return f"--gin.{name}='{text}'"
  if "!" not in single:  # `'say "hi"'`: in double quotes, a backslash keeps " $ ` and itself
    escaped = re.sub(r'(["$`\\])', r"\\\1", single)
    return f'--gin.{name}="{escaped}"'
  return shlex.quote(f"--gin.{name}={value}")
