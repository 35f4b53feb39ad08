"""seqio mixtures over the spot tasks (examples-proportional, capped).

A task's rate is min(#train examples, cap) as in T5's multi-task training;
the cap keeps the large datasets (QQP, MNLI, Yelp, DocNLI, SNLI) from
swamping the small ones. C4 is left out of every mixture here.

T5's WSC-simple tasks and DPR (tasks.super_glue) are in none of those (our
WSC already is), nor is T5's WNLI-simple (tasks.glue); spot_wsc_dpr_simple_mix
mixes them as T5's wsc_dpr_simple_proportional does, and spot_super_glue_t5_mix
is T5's super_glue_v102_proportional (its fixed weights, WSC the T5 way).

Some mixtures also hold tasks at rate 0 (`eval_only_definitions`): seqio never
samples them in training (a task without the train split is skipped), but
evaluating or inferring on the mixture includes them: MNLI-mismatched wherever
MNLI is, as in T5's glue_v002_proportional (which also holds GLUE's AX, here a
task of its own: the mixture would otherwise need glue/ax prepared).
"""
import functools

import seqio

from tasks import glue, sources, super_glue  # noqa: F401
from tasks import registry_list as reg

DEFAULT_CAP = 2 ** 19  # 524288 examples, T5's examples-proportional limit


def num_train_examples(task) -> float:
  """A task's train examples after preprocessing: seqio's cached count when the task is cached, else
  the spec's count where preprocessing makes several examples of one TFDS row (ReCoRD, RACE), else
  the TFDS row count (seqio's fallback)."""
  if not task.cache_dir and task.name in reg.TRAIN_EXAMPLES:
    return float(reg.TRAIN_EXAMPLES[task.name])
  return float(seqio.mixing_rate_num_examples(task))


def _check_has_train(task) -> None:
  """A task without a train split has no examples to weigh it by; seqio would end in a bare
  KeyError: 'train'."""
  try:
    splits = task.splits
  except (AttributeError, KeyError):  # TFDS tasks that ask TFDS for their splits
    return
  if splits and "train" not in splits:
    raise ValueError(
        f"task {task.name!r} has no 'train' split (it has {sorted(splits)}), so the "
        f"examples-proportional rate (tasks.mixtures.rate(): the number of train examples) cannot "
        f"weigh it. Give it a train split (tasks.user_data.register_task_from_files(..., "
        f"train=FILE)), leave it out of the mixture, or give it a fixed rate: "
        f"seqio.MixtureRegistry.add(name, [({task.name!r}, 0.0), ...]) (0: evaluated, not trained)")


def examples_rate(task, cap: int = DEFAULT_CAP) -> float:
  """T5's examples-proportional rate: min(#train examples, cap). A task without a train split is a
  ValueError naming it and the fixes."""
  _check_has_train(task)
  return min(num_train_examples(task), float(cap))


def rate(cap: int = DEFAULT_CAP):
  return functools.partial(examples_rate, cap=cap)


def _mixable(spec) -> bool:
  return (spec.kind != "lm" and "train" in spec.split_names
          and super_glue.WSC_SIMPLE_GROUP not in spec.groups)


def _by_group(group: str):
  return [n for n, s in reg.SPECS.items() if group in s.groups and _mixable(s)]


def definitions():
  """Mixture name -> task names (computed from the registered specs)."""
  everything = [n for n, s in reg.SPECS.items() if _mixable(s)]
  glue_tasks = [glue.name(t) for t in glue.GLUE_MIXTURE_TASKS]
  sg_tasks = [super_glue.name(t) for t in super_glue.SUPER_GLUE_MIXTURE_TASKS]
  return {
      "spot_glue_mix": glue_tasks,
      "spot_super_glue_mix": sg_tasks,
      "spot_glue_super_glue_mix": glue_tasks + sg_tasks,
      "spot_nli_mix": _by_group("nli"),
      "spot_paraphrase_mix": _by_group("paraphrase"),
      "spot_sentiment_mix": _by_group("sentiment"),
      "spot_qa_mix": _by_group("qa"),
      "spot_commonsense_mix": _by_group("commonsense"),
      "spot_sources_mix": [t for t in sources.SPOT_SOURCE_TASKS
                           if reg.SPECS[t].kind != "lm"],
      "spot_everything_mix": everything,
  }


# Evaluated, never trained on: the GLUE tasks T5's glue_v002_proportional holds at rate 0.
GLUE_EVAL_ONLY = tuple(glue.name(t) for t in glue.GLUE_EVAL_ONLY_TASKS)


def eval_only_definitions():
  """Mixture name -> the tasks it also holds at rate 0 (evaluated, or inferred, with the mixture;
  never sampled in training): every mixture with MNLI holds MNLI-mismatched (`GLUE_EVAL_ONLY`), so
  that its evaluation reports MNLI-mm beside MNLI-m, as T5's glue_v002_proportional does."""
  return {name: list(GLUE_EVAL_ONLY) for name, members in definitions().items()
          if glue.name("mnli") in members}


def register(cap: int = DEFAULT_CAP, name_suffix: str = ""):
  """Registers the mixtures (over tasks named `<task><name_suffix>`): `definitions()`' tasks at
  `rate(cap)`, `eval_only_definitions()`' at 0. T5's WSC/DPR and SuperGLUE mixtures are
  `register_wsc_dpr(name_suffix)` and `register_super_glue_t5(name_suffix)`."""
  names = []
  eval_only = eval_only_definitions()
  for name, members in definitions().items():
    reg.add_mixture(name.replace("_mix", name_suffix + "_mix") if name_suffix else name,
                    [m + name_suffix for m in members]
                    + [(m + name_suffix, 0.0) for m in eval_only.get(name, ())], rate(cap))
    names.append(name)
  return names


WSC_DPR_MIXTURE = "spot_wsc_dpr_simple_mix"


def wsc_dpr_rates():
  """T5's wsc_dpr_simple_proportional: DPR and WSC-simple train in proportion
  to their training examples (fixed counts: the WSC task keeps only its True
  examples, which the TFDS split size does not tell), and WSC-simple eval at
  rate 0, so that evaluating the mixture evaluates WSC the T5 way."""
  return [(super_glue.DPR_SIMPLE, float(super_glue.DPR_TRAIN_EXAMPLES)),
          (super_glue.WSC_SIMPLE_TRAIN, float(super_glue.WSC_SIMPLE_TRAIN_EXAMPLES)),
          (super_glue.WSC_SIMPLE_EVAL, 0.0)]


def register_wsc_dpr(name_suffix: str = "") -> str:
  """Registers spot_wsc_dpr_simple_mix (over tasks named `<task><name_suffix>`)."""
  name = WSC_DPR_MIXTURE.replace("_mix", name_suffix + "_mix")
  reg.add_mixture(name, [(t + name_suffix, r) for t, r in wsc_dpr_rates()], None)
  return name


SUPER_GLUE_T5_MIXTURE = "spot_super_glue_t5_mix"
# T5's SUPER_GLUE_WEIGHT_MAPPING (t5/data/glue_utils.py). Not the TFDS split sizes: ReCoRD counts one
# row per answer (138854, against 100730 questions), WSC is DPR plus WSC-simple, AX-b/AX-g are
# evaluated only. spot_super_glue_mix instead weighs our tasks by their train examples (`rate`).
T5_SUPER_GLUE_WEIGHTS = {"boolq": 9427.0, "cb": 250.0, "copa": 400.0, "multirc": 27243.0,
                         "record": 138854.0, "rte": 2490.0, "wic": 5428.0, "axb": 0.0, "axg": 0.0}


def super_glue_t5_rates():
  """T5's super_glue_v102_proportional: (task, rate) for its members as registered here."""
  return ([(super_glue.name(t), r) for t, r in T5_SUPER_GLUE_WEIGHTS.items()] + wsc_dpr_rates())


def register_super_glue_t5(name_suffix: str = "") -> str:
  """Registers spot_super_glue_t5_mix (over tasks named `<task><name_suffix>`)."""
  name = SUPER_GLUE_T5_MIXTURE.replace("_mix", name_suffix + "_mix")
  reg.add_mixture(name, [(t + name_suffix, r) for t, r in super_glue_t5_rates()], None)
  return name


MIXTURE_NAMES = register()
register_wsc_dpr()
register_super_glue_t5()
