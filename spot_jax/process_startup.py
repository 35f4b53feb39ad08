"""The start-up of a multi-process run: every process learns whether every other one started.

Each process of a `jax.distributed` run publishes the outcome of its start-up (gin parsing through
user task registration) in the distributed coordination service's key-value store, and reads every
other process's before going on:

* `"ok <sha256>"`: it started; the digest is of its shared gin settings (`gin_utils.shared_settings`),
  whose full text is published beside it and read only when the digests differ;
* `"error <message>"`: it stopped, with that message.

So a process that stops at start-up (a gin typo on one command line, a file missing on one host) stops
every process within seconds, each naming it (`process 1 stopped at start-up: ...`), where before the
others waited at their first collective until JAX's timeouts (minutes) ended them with an error that
did not say why. The key-value store needs no XLA backend and no collective, so it also works when a
process never reaches one.

The coordination service runs inside process 0: when process 0 itself fails, it waits (at most
`TIMEOUT_S`) until every other process has read its outcome before exiting, so that the others
read its message rather than a lost connection.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, List, Optional

# How long a process waits for another's start-up outcome (gin parsing and task registration take
# seconds; a slow file system or user task module may take longer). SPOT_JAX_STARTUP_TIMEOUT_S sets it.
TIMEOUT_S = 300

_PREFIX = "spot_jax/startup"
_rounds = 0  # `configure` may run more than once in a process: each gets its own keys


def env_seconds(name: str) -> Optional[int]:
  """A whole number of seconds (1 or more) from the environment variable `name`; None when unset.
  Anything else is refused (`SystemExit`) when jax.distributed starts (`gin_utils.init_distributed`)."""
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    seconds = int(float(value))
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise SystemExit(f"{name}={value!r} must be a number of seconds, 1 or more")
  return seconds


def _timeout_ms() -> int:
  seconds = env_seconds("SPOT_JAX_STARTUP_TIMEOUT_S")
  return (TIMEOUT_S if seconds is None else seconds) * 1000


def _state():
  """jax.distributed's state when this is a run of several processes, else None (no jax import
  when jax.distributed was never started)."""
  import sys  # pylint: disable=g-import-not-at-top
  distributed = sys.modules.get("jax._src.distributed")
  if distributed is None:
    return None
  state = distributed.global_state
  return state if state.client is not None and (state.num_processes or 1) > 1 else None


def error_text(error: BaseException) -> str:
  """An error as one line, without a leading `PROG: error: ` and the traceback hint."""
  if isinstance(error, SystemExit):
    if getattr(error, "message", None):  # gin_utils.FlagError: argparse's refusal, its status 2
      text = error.message
    elif isinstance(error.code, str):
      text = error.code
    else:
      return f"exited with status {error.code}"
  elif isinstance(error, KeyboardInterrupt):
    return "interrupted"
  else:
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    if not (text and isinstance(error, ValueError)):  # the jobs' ValueErrors name the problem and fix
      text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  text = re.sub(r"^[\w.\-]+: error: ", "", text.strip())
  text = text.replace("(SPOT_JAX_TRACEBACK=1 shows the traceback)", "")
  text = " ".join(line.strip() for line in text.splitlines()
                  if line.strip() and not line.strip().startswith("In call to configurable"))
  return text if len(text) <= 2000 else text[:1997] + "..."


class StartupFailed(SystemExit):
  """Another process stopped at start-up (or never said how its start-up ended)."""


class Outcomes:
  """Context manager around a process's start-up. Set `.settings` (the shared gin settings text) once
  gin is final. On leaving: an error inside is published and re-raised; without one, the settings
  digest is published, every other process's outcome read, and `StartupFailed` (a SystemExit with
  `PROG: error: ...`) raised if one stopped or their settings differ. Does nothing in a run of one
  process."""

  def __init__(self, prog: str, differ_message=None):
    self.prog = prog
    self.settings: Optional[str] = None
    self._differ_message = differ_message  # (list of settings texts) -> message, '' when they agree

  def __enter__(self):
    global _rounds
    self._state = _state()
    self._round = _rounds
    _rounds += 1
    return self

  def _key(self, kind: str, pid: int) -> str:
    return f"{_PREFIX}/{self._round}/{kind}/{pid}"

  def __exit__(self, kind, error, tb):
    state = self._state
    if state is None:
      return False
    client, me, n = state.client, state.process_id, state.num_processes
    others = [p for p in range(n) if p != me]
    if error is not None:
      try:
        client.key_value_set(self._key("outcome", me), "error " + error_text(error))
        client.key_value_set(self._key("done", me), "1")
        if me == 0 and not isinstance(error, KeyboardInterrupt):
          # The coordination service lives in this process: stay until the others have read.
          for p in others:
            client.blocking_key_value_get(self._key("done", p), _timeout_ms())
      except Exception:  # pylint: disable=broad-except  (its own error is the one to show)
        pass
      return False
    text = self.settings or ""
    digest = hashlib.sha256(text.encode()).hexdigest()
    if self.settings is not None:
      client.key_value_set(self._key("settings", me), text)
    client.key_value_set(self._key("outcome", me), "ok " + digest)
    outcomes: Dict[int, str] = {me: "ok " + digest}
    message = ""
    try:
      for p in others:
        outcomes[p] = self._read(client, self._key("outcome", p), p)
      failed: Dict[str, List[int]] = {}
      for p in sorted(outcomes):
        if outcomes[p].startswith("error "):
          failed.setdefault(outcomes[p][len("error "):], []).append(p)
      if failed:
        message = "; ".join(f"{_processes(ps)} stopped at start-up: {said}" for said, ps in failed.items())
      elif len(set(outcomes.values())) > 1 and self._differ_message is not None:
        message = self._differ_message(
            [text if p == me else self._read(client, self._key("settings", p), p) for p in range(n)])
    finally:  # read all it needs: process 0 (the service) may go
      try:
        client.key_value_set(self._key("done", me), "1")
      except Exception:  # pylint: disable=broad-except
        pass
    if message:
      raise StartupFailed(f"{self.prog}: error: {message}")
    return False

  def _read(self, client, key: str, p: int) -> str:
    try:
      return client.blocking_key_value_get(key, _timeout_ms())
    except Exception as e:  # pylint: disable=broad-except  (JAX's runtime error: timeout, lost service)
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      if "DEADLINE_EXCEEDED" in first or "timed out" in first:
        why = (f"process {p} did not finish its start-up within {_timeout_ms() / 1000:g} s (see its "
               "output; SPOT_JAX_STARTUP_TIMEOUT_S sets this wait)")
      else:
        why = f"lost the run's coordination service while waiting for the start-up of process {p}: {first[:300]}"
      raise StartupFailed(f"{self.prog}: error: {why}") from None


def _processes(ids: List[int]) -> str:
  return f"process {ids[0]}" if len(ids) == 1 else "processes " + ", ".join(map(str, ids))
