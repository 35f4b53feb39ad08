"""SuperGLUE tasks from TFDS in T5's text-to-text formats (super_glue/*:1.0.2).

Names: spot_super_glue_<task>_v102. WSC uses TFDS's corrected "wsc.fixed"
config; AX-b and AX-g are cast as SuperGLUE RTE (test split only, as published;
AX-b's sentence1/sentence2 become premise/hypothesis, as in T5).

Next to our WSC (True/False), the WSC tasks T5's registry has, and which
T5/SPoT SuperGLUE figures use: spot_super_glue_wsc_v102_simple_train (the
examples whose candidate is the referent; target = the candidate) and
spot_super_glue_wsc_v102_simple_eval (every example; the generated referent
is matched loosely with the candidate and compared with the label), plus
spot_dpr_v110_simple (Definite Pronoun Resolution, which T5 trains WSC with;
TFDS definite_pronoun_resolution:1.1.0). The mixture of the three is
tasks.mixtures' spot_wsc_dpr_simple_mix.
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
      groups=("super_glue",) + tuple(groups),
      train_examples=RECORD_TRAIN_EXAMPLES if task == "record" else None)


# ReCoRD's train examples, one per gold answer (100730 TFDS rows): T5's count, from the weight of
# its super_glue_v102_proportional mixture (t5/data/glue_utils.py).
RECORD_TRAIN_EXAMPLES = 138854


# --- T5's WSC "simple" tasks and DPR ------------------------------------------

WSC_SIMPLE_GROUP = "t5_wsc_simple"  # kept out of the group/"everything" mixtures
DPR_TFDS_NAME = "definite_pronoun_resolution:1.1.0"
WSC_SIMPLE_TRAIN = reg.task_name("super_glue", "wsc", f"super_glue/wsc:{VERSION}",
                                 "_simple_train")
WSC_SIMPLE_EVAL = reg.task_name("super_glue", "wsc", f"super_glue/wsc:{VERSION}",
                                "_simple_eval")
DPR_SIMPLE = reg.task_name("dpr", None, DPR_TFDS_NAME, "_simple")
# Training examples (T5's mixing weights): DPR's train split, and the
# wsc.fixed train examples labelled True (the simple train task keeps only those).
DPR_TRAIN_EXAMPLES = 1322
WSC_SIMPLE_TRAIN_EXAMPLES = 259


def wsc_simple_specs():
  """Specs of T5's WSC-simple train/eval tasks and of DPR-simple."""
  wsc_tfds = f"super_glue/wsc.fixed:{VERSION}"
  groups = ("super_glue", WSC_SIMPLE_GROUP)
  return [
      reg.TaskSpec(
          name=WSC_SIMPLE_TRAIN, tfds_name=wsc_tfds, splits=("train",),
          text_preprocessors=[functools.partial(pre.wsc_simple, correct_referent_only=True)],
          postprocess_fn=None, metric_fns=[], kind="qa", benchmark="super_glue",
          groups=groups),
      reg.TaskSpec(
          name=WSC_SIMPLE_EVAL, tfds_name=wsc_tfds, splits=("validation", "test"),
          text_preprocessors=[functools.partial(pre.wsc_simple, correct_referent_only=False)],
          postprocess_fn=post.wsc_simple, metric_fns=[M.accuracy], kind="qa",
          benchmark="super_glue", groups=groups),
      # Two candidates per sentence: a multiple-choice task with a rank variant.
      reg.TaskSpec(
          name=DPR_SIMPLE, tfds_name=DPR_TFDS_NAME, splits=("train", "test"),
          text_preprocessors=[pre.dpr_simple], postprocess_fn=post.option_index,
          metric_fns=[M.accuracy], kind="multiple_choice", benchmark="dpr",
          groups=(WSC_SIMPLE_GROUP,)),
  ]


def register(vocabulary=None, name_suffix: str = ""):
  """Registers every SuperGLUE task, then T5's WSC-simple tasks and DPR-simple;
  returns their names."""
  names = [reg.add_task(spec(t), vocabulary, name_suffix).name
           for t in SUPER_GLUE_TASKS]
  return names + [reg.add_task(s, vocabulary, name_suffix).name
                  for s in wsc_simple_specs()]


register()
TASK_NAMES = [name(t) for t in SUPER_GLUE_TASKS]
WSC_SIMPLE_TASK_NAMES = [WSC_SIMPLE_TRAIN, WSC_SIMPLE_EVAL, DPR_SIMPLE]
