"""GLUE tasks from TFDS in T5's text-to-text formats (glue/*:2.0.0).

Names: spot_glue_<task>_v200. MNLI has "validation" = validation_matched and
also exposes validation_matched / validation_mismatched / test_* splits.

Besides the nine tasks, the two T5 registers from TFDS's other GLUE configs,
both cast as MNLI ("mnli hypothesis: ... premise: ...", MNLI's label words) and
neither with a train split: spot_glue_mnli_mismatched_v200 (MNLI's mismatched
validation and test sets as "validation"/"test", read from glue/mnli, so that a
mixture's evaluation reports MNLI-mm beside MNLI-m) and spot_glue_ax_v200 (the
GLUE diagnostic set: test split only, unlabelled, no metrics, as T5; what a
GLUE server submission needs predictions for). And spot_glue_wnli_v200_simple_eval,
T5's glue_wnli_v002_simple_eval: WNLI in the WSC-simple form, scored as
WSC-simple is (how the T5 paper gets its WNLI number; evaluation only, kept out
of the mixtures as tasks.super_glue's WSC-simple tasks are).
"""
import functools

from tasks import metrics as M
from tasks import postprocessors as post
from tasks import preprocessors as pre
from tasks import registry_list as reg
from tasks import super_glue

VERSION = "2.0.0"
_MNLI_LABELS = ("entailment", "neutral", "contradiction")

# name (a TFDS glue config): (label names, metrics, extra groups); label order = TFDS ClassLabel.
GLUE_TASKS = {
    "cola": (("unacceptable", "acceptable"), [M.matthews_corrcoef], ()),
    "sst2": (("negative", "positive"), [M.accuracy], ("sentiment",)),
    "mrpc": (("not_equivalent", "equivalent"), [M.f1, M.accuracy], ("paraphrase",)),
    "qqp": (("not_duplicate", "duplicate"), [M.f1, M.accuracy], ("paraphrase",)),
    "stsb": (None, [M.pearson_corrcoef, M.spearman_corrcoef], ("paraphrase",)),
    "mnli": (_MNLI_LABELS, [M.accuracy], ("nli",)),
    "qnli": (("entailment", "not_entailment"), [M.accuracy], ("nli",)),
    "rte": (("entailment", "not_entailment"), [M.accuracy], ("nli",)),
    "wnli": (("not_entailment", "entailment"), [M.accuracy], ("nli",)),
    # Evaluation/inference only (no train split), cast as MNLI as T5 does.
    "mnli_mismatched": (_MNLI_LABELS, [M.accuracy], ("nli",)),
    "ax": (_MNLI_LABELS, [], ()),  # unlabelled test split only: no metrics, as T5
}
# The 8 tasks of the GLUE mixture (WNLI is left out, as usual).
GLUE_MIXTURE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
# Members of T5's glue_v002_proportional at rate 0 that ours hold too: evaluated, never trained on.
# (T5's glue_mnli_matched_v002, also at 0 there, is our MNLI's "validation". T5's glue_ax_v002 is
# left out: every eval or infer of the mixture would then need TFDS's glue/ax prepared; infer
# spot_glue_ax_v200 on its own.)
GLUE_EVAL_ONLY_TASKS = ("mnli_mismatched",)

_DEFAULT_SPLITS = ("train", "validation", "test")
_SPLITS = {
    "mnli": {"train": "train", "validation": "validation_matched",
             "validation_matched": "validation_matched",
             "validation_mismatched": "validation_mismatched",
             "test": "test_matched",  # so that a mixture's "test" split holds MNLI-m's test set
             "test_matched": "test_matched", "test_mismatched": "test_mismatched"},
    # T5 reads TFDS's glue/mnli_mismatched config; the same rows are glue/mnli's, which MNLI's users
    # have prepared already.
    "mnli_mismatched": {"validation": "validation_mismatched", "test": "test_mismatched"},
    "ax": ("test",),
}
_TFDS_CONFIG = {"mnli_mismatched": "mnli"}


def name(task: str) -> str:
  return reg.task_name("glue", task, f"glue/{task}:{VERSION}")


def spec(task: str) -> reg.TaskSpec:
  labels, metric_fns, groups = GLUE_TASKS[task]
  tfds_name = f"glue/{_TFDS_CONFIG.get(task, task)}:{VERSION}"
  if task == "stsb":
    text, postprocess, kind = [pre.stsb], post.string_to_float, "regression"
  else:
    # T5 casts the diagnostic set (AX) as MNLI.
    benchmark = "mnli" if task.startswith("mnli") or task == "ax" else task
    text = [functools.partial(pre.glue, benchmark_name=benchmark, label_names=labels)]
    postprocess = functools.partial(post.string_label, label_names=labels)
    kind = "classification"
  return reg.TaskSpec(
      name=name(task), tfds_name=tfds_name, splits=_SPLITS.get(task, _DEFAULT_SPLITS),
      text_preprocessors=text, postprocess_fn=postprocess,
      metric_fns=list(metric_fns), kind=kind, benchmark="glue",
      groups=("glue",) + tuple(groups))


# --- T5's WNLI the WSC-simple way -----------------------------------------------------------------

WNLI_SIMPLE_EVAL = reg.task_name("glue", "wnli", f"glue/wnli:{VERSION}", "_simple_eval")


def wnli_simple_spec() -> reg.TaskSpec:
  """T5's glue_wnli_v002_simple_eval: WNLI's validation and test sets as WSC-simple examples
  ("wsc: ... *pronoun* ..." -> the candidate referent), the generated referent matched loosely with
  the candidate and compared with the label (`postprocessors.wsc_simple`, accuracy)."""
  return reg.TaskSpec(
      name=WNLI_SIMPLE_EVAL, tfds_name=f"glue/wnli:{VERSION}", splits=("validation", "test"),
      text_preprocessors=[pre.wnli_simple], postprocess_fn=post.wsc_simple,
      metric_fns=[M.accuracy], kind="qa", benchmark="glue",
      groups=("glue", super_glue.WSC_SIMPLE_GROUP))


def register(vocabulary=None, name_suffix: str = ""):
  """Registers every GLUE task, then T5's WNLI-simple evaluation task; returns their names."""
  names = [reg.add_task(spec(t), vocabulary, name_suffix).name for t in GLUE_TASKS]
  return names + [reg.add_task(wnli_simple_spec(), vocabulary, name_suffix).name]


register()
TASK_NAMES = [name(t) for t in GLUE_TASKS]
