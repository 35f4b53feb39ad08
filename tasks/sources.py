"""SPoT source tasks that TFDS provides (Vu et al. 2022, Table 7).

MNLI, QQP, QNLI, SST-2 come from tasks.glue and ReCoRD, MultiRC from
tasks.super_glue; this module adds the rest. TFDS lacks CxC (Crisscrossed
Captions); register it from files with tasks.user_data. Splits that a dataset
names differently are aliased: "validation" = DROP/RACE "dev",
Yelp "test" (Yelp has no validation split); WinoGrande "train" = "train_xl".
"""
import functools

from tasks import glue
from tasks import metrics as M
from tasks import postprocessors as post
from tasks import preprocessors as pre
from tasks import registry_list as reg
from tasks import super_glue

_TVT = ("train", "validation", "test")
_NLI3 = ("entailment", "neutral", "contradiction")


def _spec(benchmark, task, tfds_name, splits, text, postprocess, metric_fns,
          kind, groups, tokenized=False):
  return reg.TaskSpec(
      name=reg.task_name(benchmark, task, tfds_name), tfds_name=tfds_name,
      splits=splits, text_preprocessors=text, postprocess_fn=postprocess,
      metric_fns=metric_fns, kind=kind, benchmark=benchmark,
      groups=("sources",) + tuple(groups), tokenized=tokenized)


def _nli(benchmark, task, tfds_name, labels, splits=_TVT, premise_key="premise"):
  # The input's name is SPoT's (prompt_tuning/spot/data/nli.py): "anli_r1", "doc_nli", "snli".
  return _spec(benchmark, task, tfds_name, splits,
               [functools.partial(pre.nli, benchmark_name=f"{benchmark}_{task}" if task else benchmark,
                                  label_names=labels, premise_key=premise_key)],
               functools.partial(post.string_label, label_names=labels),
               [M.accuracy], "classification", ("nli",))


def _mc(benchmark, task, tfds_name, splits, fn, groups, train_examples=None):
  spec = _spec(benchmark, task, tfds_name, splits, [fn], post.option_index,
               [M.accuracy], "multiple_choice", groups)
  spec.train_examples = train_examples
  return spec


# RACE's train questions (its TFDS rows are articles, each with several questions): the RACE paper's
# counts (Lai et al., EMNLP 2017, Table 1), for the examples-proportional mixing rate.
RACE_TRAIN_QUESTIONS = {"high": 62445, "middle": 25421}


def specs():
  """The TFDS-backed source task specs (not counting GLUE/SuperGLUE ones)."""
  out = [
      _spec("c4", "span_corruption", "c4/en:3.1.0", ("train", "validation"),
            pre.c4_preprocessors("span_corruption"), None, [], "lm", ("lm",),
            tokenized=True),
      _spec("c4", "prefix_lm", "c4/en:3.1.0", ("train", "validation"),
            pre.c4_preprocessors("prefix_lm"), None, [], "lm", ("lm",),
            tokenized=True),
      _spec("squad", None, "squad/v1.1:3.0.0", ("train", "validation"),
            [pre.squad], post.qa, [M.squad], "qa", ("qa",)),
      _spec("drop", None, "drop:2.0.0", {"train": "train", "validation": "dev"},
            [pre.drop], post.qa, [M.squad], "qa", ("qa",)),
      _mc("winogrande", None, "winogrande:1.2.0",
          {"train": "train_xl", "validation": "validation", "test": "test"},
          pre.winogrande, ("commonsense",)),
      _mc("hellaswag", None, "hellaswag:1.1.0", _TVT, pre.hellaswag, ("commonsense",)),
      _mc("cosmos_qa", None, "cosmos_qa:1.0.0", _TVT, pre.cosmos_qa,
          ("qa", "commonsense")),
      _spec("yelp_polarity", None, "yelp_polarity_reviews:0.2.0",
            {"train": "train", "validation": "test", "test": "test"},
            [functools.partial(pre.single_text_classification,
                               benchmark_name="yelp_polarity_reviews", text_key="text",
                               field_name="text",
                               label_names=("negative", "positive"))],
            functools.partial(post.string_label, label_names=("negative", "positive")),
            [M.accuracy], "classification", ("sentiment",)),
      _nli("snli", None, "snli:1.1.0", _NLI3),
      _nli("doc_nli", None, "doc_nli:1.0.0", ("not_entailment", "entailment")),
  ]
  for level in ("high", "middle"):
    out.append(_mc("race", level, f"race/{level}:2.0.0",
                   {"train": "train", "validation": "dev", "test": "test"},
                   pre.race, ("qa",), train_examples=RACE_TRAIN_QUESTIONS[level]))
  for r in ("r1", "r2", "r3"):
    out.append(_nli("anli", r, f"anli/{r}:0.1.0", _NLI3, premise_key="context"))
  return out


def register(vocabulary=None, name_suffix: str = ""):
  return [reg.add_task(s, vocabulary, name_suffix).name for s in specs()]


TASK_NAMES = register()

C4_SPAN_CORRUPTION = "spot_c4_span_corruption_v310"
C4_PREFIX_LM = "spot_c4_prefix_lm_v310"

# The SPoT paper's source tasks, as registered here (CxC is missing: no TFDS).
SPOT_SOURCE_TASKS = (
    C4_PREFIX_LM,
    "spot_doc_nli_v100",
    "spot_yelp_polarity_v020",
    glue.name("mnli"), glue.name("qqp"), glue.name("qnli"), glue.name("sst2"),
    super_glue.name("record"), super_glue.name("multirc"),
    "spot_squad_v300", "spot_drop_v200", "spot_winogrande_v120",
    "spot_hellaswag_v110", "spot_cosmos_qa_v100",
    "spot_race_high_v200", "spot_race_middle_v200",
)
# Further TFDS tasks the paper's transferability study also used.
EXTRA_SOURCE_TASKS = ("spot_anli_r1_v010", "spot_anli_r2_v010",
                      "spot_anli_r3_v010", "spot_snli_v110",
                      C4_SPAN_CORRUPTION)
MISSING_FROM_TFDS = ("CxC (Crisscrossed Captions)",)
