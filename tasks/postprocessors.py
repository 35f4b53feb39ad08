"""Postprocessors: decoded model text (and the cached example) -> metric input.

seqio calls `postprocess_fn(text, example=example, is_target=bool)` on both
the target text and the prediction text; `example` holds numpy values of the
preprocessed features (bytes for strings).
"""
from typing import Any, Mapping, Optional, Sequence


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def string_label(text, label_names: Sequence[str], default: int = -1,
                 example=None, is_target: bool = False) -> int:
  """Index of the label word in label_names; `default` for anything else."""
  del example, is_target
  text = _text(text).strip()
  return list(label_names).index(text) if text in label_names else default


def string_to_float(text, default: float = -1.0, example=None,
                    is_target: bool = False) -> float:
  """"3.8" -> 3.8; unparseable text -> default (so metrics stay defined)."""
  del example, is_target
  try:
    return float(_text(text))
  except ValueError:
    return default


def option_index(text, example: Optional[Mapping[str, Any]] = None,
                 is_target: bool = False) -> int:
  """Multiple choice: the target is the gold label, a prediction the index of
  the option it spells exactly (-1 when it matches none)."""
  if is_target:
    return int(example["label"])
  options = [_text(o).strip() for o in example["options"]]
  text = _text(text).strip()
  return options.index(text) if text in options else -1


def qa(text, example=None, is_target: bool = False):
  """QA: a target is the list of gold answers, a prediction its text."""
  if is_target:
    return [_text(a) for a in example["answers"]]
  return _text(text)


def record(text, example=None, is_target: bool = False):
  """ReCoRD: targets also carry the question id used to de-duplicate."""
  if is_target:
    return {"group": (int(example["idx/passage"]), int(example["idx/query"])),
            "answers": [_text(a) for a in example["answers"]]}
  return _text(text)


def multirc(text, example=None, is_target: bool = False):
  """MultiRC: {"value": 0/1 (-1 invalid), "group": question id on targets}."""
  res = {"value": string_label(text, ("False", "True"))}
  if is_target:
    res["group"] = (int(example["idx/paragraph"]), int(example["idx/question"]))
  return res


def rank_classification(score, example=None, is_target: bool = False):
  """Rank classification: a target is (example id, option id, is_correct).

  Scores are not postprocessed (seqio only postprocesses text), so a
  prediction passes through unchanged.
  """
  if is_target:
    idx = example["idx"]
    return (int(idx[0]), int(idx[1]), bool(example["is_correct"]))
  return score
