"""SuperGLUE tasks from TFDS in T5's text-to-text formats (super_glue/*:1.0.2).

Names: spot_super_glue_<task>_v102. WSC uses TFDS's corrected "wsc.fixed"
config; AX-b and AX-g are cast as SuperGLUE RTE (test split only, as published;
AX-b's sentence1/sentence2 become premise/hypothesis, as in T5).
"""
import functools

import seqio

from tasks import metrics as M
from tasks import postprocessors as post
from tasks import preprocessors as pre
from tasks import registry_list as reg

VERSION = "1.0.2"
_BOOL = ("False", "True")
_SPLITS = ("train", "validation", "test")
_AXB_AS_RTE = {"premise": "sentence1", "hypothesis": "sentence2", "label": "label",
               "idx": "idx"}

# name: (tfds config, label names, metrics, extra groups)
SUPER_GLUE_TASKS = {
    "boolq": ("boolq", _BOOL, [M.accuracy], ("qa",)),
    "cb": ("cb", ("entailment", "contradiction", "neutral"),
           [M.accuracy, M.mean_multiclass_f1(3)], ("nli",)),
    "copa": ("copa", ("choice1", "choice2"), [M.accuracy], ("commonsense",)),
    "multirc": ("multirc", _BOOL, [M.multirc], ("qa",)),
    "record": ("record", None, [M.record], ("qa",)),
    "rte": ("rte", ("entailment", "not_entailment"), [M.accuracy], ("nli",)),
    "wic": ("wic", _BOOL, [M.accuracy], ("paraphrase",)),
    "wsc": ("wsc.fixed", _BOOL, [M.accuracy], ("commonsense",)),
    "axb": ("axb", ("entailment", "not_entailment"), [M.matthews_corrcoef], ()),
    "axg": ("axg", ("entailment", "not_entailment"), [M.accuracy], ()),
}
SUPER_GLUE_MIXTURE_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte",
                            "wic", "wsc")


def name(task: str) -> str:
  return reg.task_name("super_glue", task, f"super_glue/{task}:{VERSION}")


def spec(task: str) -> reg.TaskSpec:
  config, labels, metric_fns, groups = SUPER_GLUE_TASKS[task]
  kind = "classification"
  postprocess = functools.partial(post.string_label, label_names=labels)
  if task == "record":
    text, postprocess, kind = [pre.record], post.record, "qa"
  elif task == "wsc":
    text = [pre.wsc]
  elif task == "copa":
    text = [pre.copa]
  elif task == "multirc":
    text = [functools.partial(pre.glue, benchmark_name="multirc", label_names=labels,
                              feature_names=("question", "answer", "paragraph"))]
    postprocess = post.multirc
  elif task == "wic":
    text = [functools.partial(pre.glue, benchmark_name="wic", label_names=labels,
                              feature_names=("sentence1", "sentence2", "word"))]
  else:
    benchmark = "rte" if task in ("axb", "axg") else task
    text = [functools.partial(pre.glue, benchmark_name=benchmark, label_names=labels)]
    if task == "axb":
      # AX-b has sentence1/sentence2; T5 renames them to SuperGLUE RTE's
      # premise/hypothesis, so the text is "rte hypothesis: ... premise: ...".
      text.insert(0, functools.partial(seqio.preprocessors.rekey, key_map=_AXB_AS_RTE))
  return reg.TaskSpec(
      name=name(task), tfds_name=f"super_glue/{config}:{VERSION}",
      splits=("test",) if task in ("axb", "axg") else _SPLITS,
      text_preprocessors=text, postprocess_fn=postprocess,
      metric_fns=list(metric_fns), kind=kind, benchmark="super_glue",
      groups=("super_glue",) + tuple(groups))


def register(vocabulary=None, name_suffix: str = ""):
  """Registers every SuperGLUE task; returns their names."""
  return [reg.add_task(spec(t), vocabulary, name_suffix).name
          for t in SUPER_GLUE_TASKS]


TASK_NAMES = register()
