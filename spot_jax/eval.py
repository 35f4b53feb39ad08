"""`python -m spot_jax.eval`: evaluate a soft prompt on a seqio task or mixture (the `t5x.eval` analogue).

  python -m spot_jax.eval --gin_file=models/t5_1_1_lm_adapted.gin --gin_file=models/sizes/base.gin \
    --gin_file=runs/prompt_eval.gin --gin.MIXTURE_OR_TASK_NAME="'spot_glue_rte_v200'" \
    --gin.CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'" \
    --gin.PROMPT_FILE="'/tmp/rte_prompt'" --gin.EVAL_OUTPUT_DIR="'/tmp/rte_eval'"

Metrics go to EVAL_OUTPUT_DIR as TensorBoard events and `metrics.jsonl` (tags `eval/<task>/<metric>`),
plus seqio's per-task JSON logs (`<task>-metrics.jsonl`, `<task>-<step>.jsonl` with every prediction).
Evaluating a step again into the same EVAL_OUTPUT_DIR replaces that step's records in all of them; where
they are another prompt's (EVAL_OUTPUT_DIR/evaluated_prompts.json says whose), copies of those files
are kept first, as `<file>.old-<id>` (a warning names them), as `infer` keeps another run's predictions.

`--gin.PROMPT_STEPS="'all'"` with PROMPT_FILE = a training MODEL_DIR evaluates every
`numpy_checkpoints/checkpoint_<step>/` export (a list of steps: those), each logged at its step, with
one model load and one seqio Evaluator (`t5x.eval` with `RestoreCheckpointConfig.mode='all'`); steps
already in EVAL_OUTPUT_DIR/metrics.jsonl are skipped, so the same command resumes a killed job, when
EVAL_OUTPUT_DIR/evaluated_prompts.json records them as of the same prompts and settings (`RECORDS`).
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np

from spot_jax import fileio
from spot_jax.config import T5Config
# What each logged step's metrics are of, and the refusal of another run's (`eval_records`).
from spot_jax.eval_records import (RECORDS, check_logged_steps, eval_settings, keep_results_of_other_prompts,
                                   logged_steps, step_record, write_records)

log = logging.getLogger("spot_jax.eval")


def load_model(checkpoint_path: Optional[str], model_config: Optional[T5Config],
               prompts: Mapping[str, np.ndarray], seed: int = 0, num_partitions: int = 1,
               frozen_dtype: str = "float32") -> Tuple[T5Config, Any, Any]:
  """(config, params placed on the mesh, mesh); every prompt of `prompts` ({where it came from:
  [P, d]}) must have the model's width, checked before a fresh initialization when the config says."""
  from spot_jax import partitioning  # pylint: disable=g-import-not-at-top
  from spot_jax import frozen_model as frozen_lib  # pylint: disable=g-import-not-at-top

  def check_width(config):
    for source, prompt in prompts.items():
      if prompt.shape[1] != config.d_model:
        raise ValueError(f"the prompt in {source} has shape {tuple(prompt.shape)} but the model's "
                         f"d_model is {config.d_model}; use a prompt trained for this model size")

  if not checkpoint_path and isinstance(model_config, T5Config):
    check_width(model_config)  # before a fresh initialization
  config, params = frozen_lib.load_frozen(checkpoint_path, model_config, seed, macro="CHECKPOINT_PATH")
  config = config.replace(dropout_rate=0.0)
  check_width(config)
  mesh = partitioning.make_mesh(num_partitions)
  params, _ = frozen_lib.place_frozen(params, config, mesh, frozen_dtype)
  return config, params, mesh


def load_model_and_prompt(checkpoint_path: Optional[str], model_config: Optional[T5Config],
                          prompt_file: Optional[str], seed: int = 0, num_partitions: int = 1,
                          frozen_dtype: str = "float32") -> Tuple[T5Config, Any, Optional[np.ndarray],
                                                                   Optional[int], Any]:
  """(config, params placed on the mesh, prompt or None, prompt step or None, mesh).

  Everything that can be wrong (checkpoint, prompt file, prompt width) is checked before compute.
  """
  from spot_jax import prompt_io  # pylint: disable=g-import-not-at-top
  prompt, step = None, None
  if prompt_file:
    prompt, source = prompt_io.load_prompt_with_source(prompt_file)
    step = source.step
  config, params, mesh = load_model(checkpoint_path, model_config,
                                    {prompt_file: prompt} if prompt is not None else {}, seed,
                                    num_partitions, frozen_dtype)
  return config, params, prompt, step, mesh


@gin.configurable
def evaluate_prompt(mixture_or_task_name: str = gin.REQUIRED, output_dir: Optional[str] = gin.REQUIRED,
                    prompt_file: Optional[str] = gin.REQUIRED, checkpoint_path: Optional[str] = None,
                    model_config: Optional[T5Config] = None,
                    task_feature_lengths: Optional[Mapping[str, int]] = None, split: str = "validation",
                    batch_size: int = 32, num_examples: Optional[int] = None, step: Optional[int] = None,
                    seed: int = 0, num_partitions: int = 1, frozen_dtype: str = "float32",
                    prompt_steps: Union[None, str, Sequence[int]] = None,
                    best_metric: Optional[str] = None) -> Dict[Any, Dict[str, Any]]:
  """Evaluates `prompt_file` (any format `prompt_io.load_prompt` reads; None: no prompt) with the
  frozen model from `checkpoint_path` (T5X or HF; None: a fresh `model_config` initialization, for
  tests) and returns `{task: {metric: value}}`. `step` labels the metrics (default: the prompt
  export's step, else 0).

  `prompt_steps` (the PROMPT_STEPS macro; default None: the above): 'all' or a list of steps, with
  `prompt_file` a training MODEL_DIR; evaluates those `numpy_checkpoints/checkpoint_<step>/` exports
  (`evaluate_prompt_steps`) and returns `{step: {task: {metric: value}}}`. `best_metric` picks the
  metric that marks each task's best step in its console table (None: the mean of the task's
  metrics, as training picks its best export).

  A step already logged in `output_dir` (an earlier evaluation) is replaced: its values of these
  tasks leave metrics.jsonl, seqio's `<task>-metrics.jsonl` and TensorBoard before the new ones are
  written. When RECORDS does not show them to be of this prompt (another prompt's, or unrecorded), the
  files holding them are first kept beside as `<file>.old-<id>`, with one warning naming them
  (`keep_results_of_other_prompts`). `num_examples` is None (all) or 1 or more, checked before any
  compute.
  """
  if prompt_steps is not None:
    check_prompt_steps(prompt_steps)
    if step is not None:
      raise ValueError(f"spot_jax.eval.evaluate_prompt.step={step} labels one prompt, but PROMPT_STEPS="
                       f"{prompt_steps!r} logs each export at its own step: unbind step")
    return evaluate_prompt_steps(mixture_or_task_name, output_dir, prompt_file, prompt_steps,
                                 checkpoint_path=checkpoint_path, model_config=model_config,
                                 task_feature_lengths=task_feature_lengths, split=split,
                                 batch_size=batch_size, num_examples=num_examples, seed=seed,
                                 num_partitions=num_partitions, frozen_dtype=frozen_dtype,
                                 best_metric=best_metric)
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from spot_jax import evaluation, inference, input_pipeline, metrics_log  # pylint: disable=g-import-not-at-top
  evaluation.check_num_examples(num_examples, "spot_jax.eval.evaluate_prompt.num_examples")
  task = evaluation.get_task(mixture_or_task_name)  # an unknown name fails before the model loads
  input_pipeline.check_split(task, split)  # so does a missing split or unprepared TFDS data
  input_pipeline.load_vocabularies(task, checkpoint_path)  # and an unreadable vocabulary
  inference.warn_if_unlabelled(task, split)
  if output_dir:
    fileio.check_not_a_file(output_dir, "EVAL_OUTPUT_DIR")
  config, params, prompt, prompt_step, mesh = load_model_and_prompt(
      checkpoint_path, model_config, prompt_file, seed, num_partitions, frozen_dtype)
  input_pipeline.check_vocabulary_fits(task, config.vocab_size, fresh_init=not checkpoint_path,
                                       checkpoint_macro="CHECKPOINT_PATH", checkpoint_path=checkpoint_path)
  step = step if step is not None else (prompt_step or 0)
  is_main = jax.process_index() == 0
  log_dir = output_dir if is_main else None
  task_names = [t.name for t in seqio.evaluation.get_valid_eval_tasks(seqio.get_subtasks(task), split)]
  record = step_record(prompt_file, prompt, eval_settings(split, task_feature_lengths, num_examples, batch_size,
                                                         checkpoint_path, model_config, frozen_dtype, seed))
  if log_dir:  # an earlier evaluation's records of this step are replaced (seqio logs before we do),
    # another prompt's first kept beside them (as infer keeps another run's predictions)
    keep_results_of_other_prompts(log_dir, task_names, step, record)
    drop_seqio_records(log_dir, task_names, [step])
  results = evaluation.evaluate(mixture_or_task_name, config, params, prompt, task_feature_lengths,
                                split=split, batch_size=batch_size, num_examples=num_examples, step=step,
                                log_dir=log_dir, mesh=mesh, reuse=False)
  if log_dir:  # before the metrics: a step logged is always recorded
    write_records(log_dir, task_names, {step: record})
  with metrics_log.MetricsLogger(output_dir, enabled=is_main, replace_steps=[step],
                                 replace_tags=eval_tags(task_names)) as logger:
    logger.write(step, results, prefix="eval")
  return results


def eval_tags(task_names: Sequence[str]) -> List[str]:
  """The prefixes of the metrics.jsonl keys and TensorBoard tags evaluating these tasks writes."""
  return [f"eval/{name}/" for name in task_names]


def drop_seqio_records(log_dir: str, task_names: Sequence[str], steps: Sequence[int]) -> None:
  """Drops the records of `steps` from seqio's `<task>-metrics.jsonl` logs in `log_dir`: an
  evaluation of those steps again (a re-run, or the step a killed run left) logs them anew, so each
  step is there once, as seqio's `<task>-<step>.jsonl` (rewritten whole) holds it once."""
  from spot_jax import metrics_log  # pylint: disable=g-import-not-at-top
  pending = {int(s) for s in steps}
  for name in task_names:
    metrics_log.drop_records(fileio.join(log_dir, f"{name}-metrics.jsonl"), lambda s: s in pending)


# ----------------------------------------------------------------------------------------------------
# Every export of a training run (PROMPT_STEPS): t5x.eval with RestoreCheckpointConfig.mode='all'.

ALL_STEPS = "all"
_STEPS_FIX = ("use --gin.PROMPT_STEPS=\"'all'\" (every export of the MODEL_DIR in PROMPT_FILE), a list of steps "
              "such as --gin.PROMPT_STEPS=[1000,2000] (those exports), or PROMPT_STEPS=None (PROMPT_FILE alone)")


def check_prompt_steps(prompt_steps) -> Union[str, List[int]]:
  """'all', or the distinct steps of a list, ascending; a ValueError naming the fix otherwise."""
  if isinstance(prompt_steps, str) and prompt_steps == ALL_STEPS:
    return ALL_STEPS

  def is_step(s):
    return isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 0

  if isinstance(prompt_steps, (list, tuple)) and prompt_steps and all(is_step(s) for s in prompt_steps):
    return sorted({int(s) for s in prompt_steps})
  why = ""
  if isinstance(prompt_steps, (list, tuple)) and not prompt_steps:
    why = " (an empty list names no step)"
  elif is_step(prompt_steps):
    why = f" (one step is a list of one: --gin.PROMPT_STEPS=[{int(prompt_steps)}])"
  raise ValueError(f"PROMPT_STEPS={prompt_steps!r} is neither 'all' nor a list of non-negative integer "
                   f"steps{why}: {_STEPS_FIX}")


def resolve_prompt_steps(model_dir: Optional[str], prompt_steps) -> List[Tuple[int, str]]:
  """[(step, export directory)], ascending, of the `numpy_checkpoints/checkpoint_<step>/` exports of
  `model_dir` (a training MODEL_DIR or its numpy_checkpoints/) that `prompt_steps` names. Every error
  (not a MODEL_DIR, no exports, a step without an export) is a message naming the fix."""
  from spot_jax import prompt_io  # pylint: disable=g-import-not-at-top
  wanted = check_prompt_steps(prompt_steps)
  label = f"PROMPT_STEPS={prompt_steps!r}"
  if not model_dir:
    raise ValueError(f"{label} evaluates the numpy exports of a training MODEL_DIR, but PROMPT_FILE is "
                     f"None: set PROMPT_FILE to the run's MODEL_DIR")
  model_dir = str(model_dir)
  if not fileio.exists(model_dir):
    raise FileNotFoundError(f"PROMPT_FILE={model_dir} does not exist; {label} needs the MODEL_DIR of a "
                            f"training run")
  if not fileio.isdir(model_dir):
    raise ValueError(f"{label} evaluates the numpy exports of a training MODEL_DIR, but PROMPT_FILE="
                     f"{model_dir} is a file: set PROMPT_FILE to the run's MODEL_DIR (the directory holding "
                     f"{prompt_io.NUMPY_CHECKPOINTS_DIR}/checkpoint_<step>/), or PROMPT_STEPS=None to "
                     f"evaluate this one prompt")
  exports = prompt_io.find_exports(model_dir).checkpoints
  if not exports:
    raise FileNotFoundError(
        f"{label}: {model_dir} holds no {prompt_io.NUMPY_CHECKPOINTS_DIR}/checkpoint_<step>/ export, so it is "
        f"not a training MODEL_DIR with numpy exports (training writes one with every SAVE_PERIOD "
        f"checkpoint). Set PROMPT_FILE to such a MODEL_DIR, or PROMPT_STEPS=None to evaluate a single "
        f"prompt file or export directory")
  if wanted == ALL_STEPS:
    return list(exports)
  have = dict(exports)
  missing = [s for s in wanted if s not in have]
  if missing:
    where = fileio.join(model_dir, prompt_io.NUMPY_CHECKPOINTS_DIR) \
        if fileio.basename(model_dir) != prompt_io.NUMPY_CHECKPOINTS_DIR else model_dir
    raise FileNotFoundError(f"{label}: no export for step{'s' if len(missing) > 1 else ''} {missing} in "
                            f"{where}; its exports are steps {sorted(have)}: pick among them, or use "
                            f"PROMPT_STEPS='all'")
  return [(s, have[s]) for s in wanted]


def _scalars(metrics: Mapping[str, Any]) -> Dict[str, float]:
  from spot_jax import metrics_log  # pylint: disable=g-import-not-at-top
  return metrics_log.flatten_metrics(metrics)


def _ranking_value(task: str, metrics: Mapping[str, Any],
                   best_metric: Optional[str]) -> Optional[Tuple[float, str]]:
  """(value, column) by which training would rank this task's result (`train._pick_metric`:
  `best_metric` when the task reports it, else the mean of its metrics); column is the metric's name
  when one metric decides, else "mean". None without scalar metrics."""
  from spot_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  flat = {f"{task}/{k}": v for k, v in _scalars(metrics).items()}
  if not flat:
    return None
  names = [k[len(task) + 1:] for k in flat]
  hits = [n for n in names if best_metric and (n == best_metric or n.endswith("/" + best_metric))]
  use = best_metric if hits else None
  value = train_lib._pick_metric(flat, use)  # pylint: disable=protected-access
  decided_by = hits if hits else names
  return value, decided_by[0] if len(decided_by) == 1 else "mean"


def best_steps(results: Mapping[int, Mapping[str, Mapping[str, Any]]],
               best_metric: Optional[str] = None) -> Dict[str, Tuple[int, float, str]]:
  """`{task: (best step, its value, the column that value is)}`, ranking each task's results as
  training ranks its exports (`_ranking_value`; higher is better, as for every metric T5 reports);
  a tie goes to the earliest step, as in training."""
  out: Dict[str, Tuple[int, float, str]] = {}
  for step in sorted(results):
    for task, metrics in results[step].items():
      ranked = _ranking_value(task, metrics, best_metric)
      if ranked is not None and np.isfinite(ranked[0]) and (task not in out or ranked[0] > out[task][1]):
        out[task] = (step, ranked[0], ranked[1])
  return out


def format_steps_table(results: Mapping[int, Mapping[str, Mapping[str, Any]]],
                       best_metric: Optional[str] = None) -> str:
  """A console table: a row per step, a column per task metric (plus `<task>/mean` where a mean of
  several metrics ranks the steps); `*` marks each task's best step (`best_steps`)."""
  best = best_steps(results, best_metric)
  columns: List[Tuple[str, str]] = []  # (task, metric or "mean")
  for step in sorted(results):
    for task, metrics in results[step].items():
      for name in _scalars(metrics):
        if (task, name) not in columns:
          columns.append((task, name))
  for task, (_, _, column) in best.items():
    if column == "mean" and (task, "mean") not in columns:
      columns.insert(max(i for i, c in enumerate(columns) if c[0] == task) + 1, (task, "mean"))

  def cell(step, task, name):
    metrics = results[step].get(task, {})
    if name == "mean":
      value = (_ranking_value(task, metrics, best_metric) or (None,))[0]
    else:
      value = _scalars(metrics).get(name)
    if value is None:
      return "-"
    mark = "*" if task in best and best[task][0] == step and best[task][2] == name else ""
    return f"{value:.4g}{mark}"

  header = ["step"] + [f"{t}/{m}" for t, m in columns]
  rows = [[str(step)] + [cell(step, t, m) for t, m in columns] for step in sorted(results)]
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]
  lines += [f"best step of {task}: {step} ({column} {value:.4g})" for task, (step, value, column) in best.items()]
  return "\n".join(lines)


def evaluate_prompt_steps(mixture_or_task_name: str, output_dir: Optional[str], model_dir: str,
                          prompt_steps: Union[str, Sequence[int]] = ALL_STEPS,
                          checkpoint_path: Optional[str] = None, model_config: Optional[T5Config] = None,
                          task_feature_lengths: Optional[Mapping[str, int]] = None,
                          split: str = "validation", batch_size: int = 32,
                          num_examples: Optional[int] = None, seed: int = 0, num_partitions: int = 1,
                          frozen_dtype: str = "float32",
                          best_metric: Optional[str] = None) -> Dict[int, Dict[str, Dict[str, Any]]]:
  """Evaluates the `numpy_checkpoints/checkpoint_<step>/` exports of the training run `model_dir`:
  'all' of them or the listed steps, ascending, and returns `{step: {task: {metric: value}}}`.

  The frozen model is loaded once and one seqio Evaluator (with its compiled decode/score programs)
  serves every step. Each step's metrics are logged at that step to `output_dir` (TensorBoard,
  metrics.jsonl, seqio's JSON logs), so TensorBoard draws a curve, and recorded in its RECORDS (the
  prompt's sha256 and the settings). Steps whose metrics.jsonl there already holds every task's
  metrics, recorded as of the same prompt and settings, are not evaluated again (their logged values
  are returned), so rerunning a killed job continues it; metrics of a step not so recorded (another
  run's exports, other settings, a directory written before RECORDS) are refused
  (`check_logged_steps`): evaluate into another `output_dir`. A table of all the steps, each task's
  best marked (`best_steps`), ends the run on the console.

  Every check (the steps, the exports, each prompt's width) runs before any compute. In a
  multi-process run process 0 decides what is skipped and writes; the others evaluate the same steps
  and return only those.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from spot_jax import evaluation, inference, input_pipeline  # pylint: disable=g-import-not-at-top
  from spot_jax import metrics_log, prompt_io  # pylint: disable=g-import-not-at-top
  check_prompt_steps(prompt_steps)
  evaluation.check_num_examples(num_examples, "spot_jax.eval.evaluate_prompt.num_examples")
  task = evaluation.get_task(mixture_or_task_name)  # an unknown name fails before the model loads
  input_pipeline.check_split(task, split)  # so does a missing split or unprepared TFDS data
  input_pipeline.load_vocabularies(task, checkpoint_path)  # and an unreadable vocabulary
  inference.warn_if_unlabelled(task, split)
  if output_dir:
    fileio.check_not_a_file(output_dir, "EVAL_OUTPUT_DIR")
  exports = resolve_prompt_steps(model_dir, prompt_steps)
  task_names = [t.name for t in seqio.evaluation.get_valid_eval_tasks(seqio.get_subtasks(task), split)]
  is_main = jax.process_index() == 0
  prompts = {d: prompt_io.load_prompt(d) for _, d in exports}  # every prompt read and checked first
  settings = eval_settings(split, task_feature_lengths, num_examples, batch_size, checkpoint_path,
                           model_config, frozen_dtype, seed)
  current = {s: step_record(d, prompts[d], settings) for s, d in exports}
  from spot_jax import process_startup  # pylint: disable=g-import-not-at-top
  with process_startup.Outcomes("spot_jax.eval"):  # process 0's refusal stops every process
    if is_main and output_dir:
      check_logged_steps(output_dir, model_dir, task_names, current)
  logged = logged_steps(output_dir, task_names) if is_main else {}
  skip = np.array([s in logged for s, _ in exports])
  if jax.process_count() > 1:  # every process must evaluate the same steps
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    skip = np.asarray(multihost_utils.broadcast_one_to_all(skip))
  done = [s for (s, _), k in zip(exports, skip) if k]
  todo = [(s, d) for (s, d), k in zip(exports, skip) if not k]
  if done:
    log.info("PROMPT_STEPS: skipping steps %s: %s already holds their metrics for %s, of the same prompts "
             "and settings (%s)", done, fileio.join(output_dir, metrics_log.JSONL_NAME), ", ".join(task_names),
             RECORDS)
  results: Dict[int, Dict[str, Dict[str, Any]]] = {s: logged[s] for s in done if s in logged}
  if todo:
    config, params, mesh = load_model(checkpoint_path, model_config, {d: prompts[d] for _, d in todo}, seed,
                                      num_partitions, frozen_dtype)
    input_pipeline.check_vocabulary_fits(task, config.vocab_size, fresh_init=not checkpoint_path,
                                         checkpoint_macro="CHECKPOINT_PATH", checkpoint_path=checkpoint_path)
    log_dir = output_dir if is_main else None
    if log_dir:  # a killed run's seqio records of the steps evaluated again (seqio logs before we do)
      drop_seqio_records(log_dir, task_names, [s for s, _ in todo])
    evaluator = evaluation.PromptEvaluator(
        mixture_or_task_name, task_feature_lengths, split, batch_size, num_examples, log_dir=log_dir,
        logger_cls=(seqio.JSONLogger,) if log_dir else ())
    with metrics_log.MetricsLogger(output_dir, enabled=is_main, replace_steps=[s for s, _ in todo],
                                   replace_tags=eval_tags(task_names)) as logger:
      for i, (step, export_dir) in enumerate(todo):
        log.info("PROMPT_STEPS: step %d (%d of %d): %s", step, i + 1, len(todo), export_dir)
        results[step] = evaluator.evaluate(config, params, prompts[export_dir], step=step, mesh=mesh)
        if log_dir:  # before the metrics: a step logged is always recorded
          write_records(log_dir, task_names, {step: current[step]})
        logger.write(step, results[step], prefix="eval")
  results = dict(sorted(results.items()))
  if is_main and results:
    log.info("PROMPT_STEPS=%r of %s on %s (%s split):\n%s", prompt_steps, model_dir, mixture_or_task_name,
             split, format_steps_table(results, best_metric))
  return results


def main(argv=None):
  from spot_jax import gin_utils  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  return gin_utils.run(gin.get_configurable(evaluate_prompt), argv, prog="spot_jax.eval")


if __name__ == "__main__":
  # Run through the importable module so gin sees `spot_jax.eval.*`, not `__main__.*`.
  from spot_jax import eval as _module
  _module.main()
