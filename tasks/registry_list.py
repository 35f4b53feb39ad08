"""Shared registration helpers and the `python -m tasks --list` listing.

Every spot_jax task is described by a `TaskSpec` kept in `SPECS` (so the
rank-classification variants and the mixtures can be derived from it) and is
registered through `add_task`, which replaces an existing entry of the same
name (re-registration with another vocabulary, module reloads).
"""
import dataclasses
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import seqio

from tasks import vocab as vocab_lib

SPECS: Dict[str, "TaskSpec"] = {}
TRAIN_EXAMPLES: Dict[str, int] = {}  # registered task name -> its spec's train_examples


@dataclasses.dataclass
class TaskSpec:
  """What a task is made of, before tokenization.

  kind: "classification" (fixed label words), "multiple_choice" (per-example
  options), "regression", "qa" or "lm"; the first two get rank variants.
  """
  name: str
  tfds_name: str
  splits: Union[Sequence[str], Mapping[str, str], None]
  text_preprocessors: List[Callable]
  postprocess_fn: Optional[Callable]
  metric_fns: List[Callable]
  kind: str
  benchmark: str
  groups: Sequence[str] = ()
  tokenized: bool = False  # preprocessors already tokenize (C4)
  # Train examples after preprocessing, where it makes several of one TFDS row (ReCoRD: one per
  # answer; RACE: one per question of an article). seqio's examples-proportional rate falls back to
  # the TFDS row count for an uncached task, which would under-weight these in a mixture.
  train_examples: Optional[int] = None

  @property
  def split_names(self) -> List[str]:
    if self.splits is None:
      return []
    return list(self.splits)


def version_digits(tfds_name: str) -> str:
  """"glue/rte:2.0.0" -> "200"."""
  return tfds_name.rsplit(":", 1)[1].replace(".", "")


def task_name(benchmark: str, task: Optional[str], tfds_name: str,
              suffix: str = "") -> str:
  parts = ["spot", benchmark] + ([task] if task else [])
  return "_".join(parts) + f"_v{version_digits(tfds_name)}{suffix}"


def _remove(name: str) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)


def build_task(spec: TaskSpec, vocabulary=None, name: Optional[str] = None,
               extra_preprocessors: Sequence[Callable] = (),
               postprocess_fn=None, metric_fns=None) -> seqio.Task:
  """Registers spec's task (optionally a variant) and returns it."""
  name = name or spec.name
  preprocessors = list(spec.text_preprocessors) + list(extra_preprocessors)
  if not spec.tokenized:
    preprocessors += [seqio.preprocessors.tokenize,
                      seqio.preprocessors.append_eos_after_trim]
  _remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.TfdsDataSource(tfds_name=spec.tfds_name, splits=spec.splits),
      preprocessors=preprocessors,
      output_features=vocab_lib.output_features(vocabulary),
      postprocess_fn=postprocess_fn if postprocess_fn is not None else spec.postprocess_fn,
      metric_fns=metric_fns if metric_fns is not None else spec.metric_fns,
  )


def add_task(spec: TaskSpec, vocabulary=None, name_suffix: str = "") -> seqio.Task:
  """Records the spec (default vocabulary only) and registers the task."""
  if not name_suffix:
    SPECS[spec.name] = spec
  if spec.train_examples:
    TRAIN_EXAMPLES[spec.name + name_suffix] = spec.train_examples
  return build_task(spec, vocabulary, name=spec.name + name_suffix)


def add_mixture(name: str, tasks: Sequence[str], default_rate) -> seqio.Mixture:
  _remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)


# --- listing -----------------------------------------------------------------

def _metric_names(fns) -> List[str]:
  return [getattr(f, "__name__", None) or getattr(getattr(f, "func", None), "__name__", str(f))
          for f in fns]


def entries(prefix: str = "spot_", also: Iterable[str] = ()) -> List[dict]:
  """One dict per registered spot task/mixture (and the names in `also`): name, type, splits, metrics."""
  rows = []
  also = set(also)
  for name in sorted(seqio.TaskRegistry.names()):
    if not name.startswith(prefix) and name not in also:
      continue
    task = seqio.TaskRegistry.get(name)
    splits = list(getattr(task.source, "splits", None) or [])
    rows.append({"name": name, "type": "task", "splits": splits,
                 "metrics": _metric_names(task._metric_fn_constructor_args)})  # pylint: disable=protected-access
  for name in sorted(seqio.MixtureRegistry.names()):
    if not name.startswith(prefix) and name not in also:
      continue
    mix = seqio.MixtureRegistry.get(name)
    rows.append({"name": name, "type": "mixture",
                 "splits": [f"{len(mix.tasks)} tasks" + _at_rate_zero(mix)], "metrics": []})
  return rows


def at_rate_zero(mixture, task_name: str) -> bool:
  """Whether `mixture` holds task `task_name` at a fixed rate 0: evaluated or inferred with it, never
  trained on (T5's convention; seqio's sampler never draws it). A rate function is not called: it may
  read TFDS data, and a task it happens to weigh 0 is not made evaluation-only by that."""
  rate = mixture.rate_per_task_name.get(task_name)
  return rate is not None and not callable(rate) and float(rate) == 0.0


def _at_rate_zero(mix) -> str:
  """" (K at rate 0)" for the K tasks the mixture evaluates but never trains on (`at_rate_zero`)."""
  zero = sum(1 for name in mix.rate_per_task_name if at_rate_zero(mix, name))
  return f" ({zero} at rate 0)" if zero else ""


def format_table(rows: Sequence[dict], markdown: bool = False) -> str:
  if markdown:
    lines = ["| name | type | splits | metrics |", "|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['type']} | {', '.join(r['splits'])} | "
              f"{', '.join(r['metrics'])} |" for r in rows]
  else:
    lines = [f"{r['name']:<44} {r['type']:<8} {','.join(r['splits']):<60} "
             f"{','.join(r['metrics'])}" for r in rows]
  return "\n".join(lines)
