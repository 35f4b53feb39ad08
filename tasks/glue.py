"""GLUE tasks from TFDS in T5's text-to-text formats (glue/*:2.0.0).

Names: spot_glue_<task>_v200. MNLI has "validation" = validation_matched and
also exposes validation_matched / validation_mismatched / test_* splits.
"""
import functools

from tasks import metrics as M
from tasks import postprocessors as post
from tasks import preprocessors as pre
from tasks import registry_list as reg

VERSION = "2.0.0"

# name: (label names, metrics, extra groups); label order = TFDS ClassLabel.
GLUE_TASKS = {
    "cola": (("unacceptable", "acceptable"), [M.matthews_corrcoef], ()),
    "sst2": (("negative", "positive"), [M.accuracy], ("sentiment",)),
    "mrpc": (("not_equivalent", "equivalent"), [M.f1, M.accuracy], ("paraphrase",)),
    "qqp": (("not_duplicate", "duplicate"), [M.f1, M.accuracy], ("paraphrase",)),
    "stsb": (None, [M.pearson_corrcoef, M.spearman_corrcoef], ("paraphrase",)),
    "mnli": (("entailment", "neutral", "contradiction"), [M.accuracy], ("nli",)),
    "qnli": (("entailment", "not_entailment"), [M.accuracy], ("nli",)),
    "rte": (("entailment", "not_entailment"), [M.accuracy], ("nli",)),
    "wnli": (("not_entailment", "entailment"), [M.accuracy], ("nli",)),
}
# The 8 tasks of the GLUE mixture (WNLI is left out, as usual).
GLUE_MIXTURE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")

_DEFAULT_SPLITS = ("train", "validation", "test")
_MNLI_SPLITS = {
    "train": "train", "validation": "validation_matched",
    "validation_matched": "validation_matched",
    "validation_mismatched": "validation_mismatched",
    "test_matched": "test_matched", "test_mismatched": "test_mismatched",
}


def name(task: str) -> str:
  return reg.task_name("glue", task, f"glue/{task}:{VERSION}")


def spec(task: str) -> reg.TaskSpec:
  labels, metric_fns, groups = GLUE_TASKS[task]
  tfds_name = f"glue/{task}:{VERSION}"
  if task == "stsb":
    text, postprocess, kind = [pre.stsb], post.string_to_float, "regression"
  else:
    benchmark = "mnli" if task.startswith("mnli") else task
    text = [functools.partial(pre.glue, benchmark_name=benchmark, label_names=labels)]
    postprocess = functools.partial(post.string_label, label_names=labels)
    kind = "classification"
  return reg.TaskSpec(
      name=name(task), tfds_name=tfds_name,
      splits=_MNLI_SPLITS if task == "mnli" else _DEFAULT_SPLITS,
      text_preprocessors=text, postprocess_fn=postprocess,
      metric_fns=list(metric_fns), kind=kind, benchmark="glue",
      groups=("glue",) + tuple(groups))


def register(vocabulary=None, name_suffix: str = ""):
  """Registers every GLUE task; returns their names."""
  return [reg.add_task(spec(t), vocabulary, name_suffix).name for t in GLUE_TASKS]


TASK_NAMES = register()
