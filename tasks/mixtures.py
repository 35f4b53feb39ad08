"""seqio mixtures over the spot tasks (examples-proportional, capped).

A task's rate is min(#train examples, cap) as in T5's multi-task training;
the cap keeps the large datasets (QQP, MNLI, Yelp, DocNLI, SNLI) from
swamping the small ones. C4 is left out of every mixture here.
"""
import functools

import seqio

from tasks import glue, sources, super_glue  # noqa: F401
from tasks import registry_list as reg

DEFAULT_CAP = 2 ** 19  # 524288 examples, T5's examples-proportional limit


def rate(cap: int = DEFAULT_CAP):
  return functools.partial(seqio.mixing_rate_num_examples, maximum=cap)


def _by_group(group: str):
  return [n for n, s in reg.SPECS.items()
          if group in s.groups and s.kind != "lm" and "train" in s.split_names]


def definitions():
  """Mixture name -> task names (computed from the registered specs)."""
  everything = [n for n, s in reg.SPECS.items()
                if s.kind != "lm" and "train" in s.split_names]
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


def register(cap: int = DEFAULT_CAP, name_suffix: str = ""):
  """Registers the mixtures (over tasks named `<task><name_suffix>`)."""
  names = []
  for name, members in definitions().items():
    reg.add_mixture(name.replace("_mix", name_suffix + "_mix") if name_suffix else name,
                    [m + name_suffix for m in members], rate(cap))
    names.append(name)
  return names


MIXTURE_NAMES = register()
