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
  the option it spells exactly (-1 when it matches none). A prediction that
  spells the gold option is the gold label even when another option has the
  same text (DPR has such pairs; T5 compares the strings)."""
  if is_target:
    return int(example["label"])
  options = [_text(o).strip() for o in example["options"]]
  text = _text(text).strip()
  label = example.get("label")
  if label is not None and 0 <= int(label) < len(options) and options[int(label)] == text:
    return int(label)
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


# Words T5's `wsc_simple` postprocessor ignores when it compares a predicted
# referent with the candidate (besides case and surrounding whitespace).
WSC_DETERMINERS = frozenset((
    "a", "an", "each", "every", "few", "her", "his", "many", "much", "my", "our",
    "some", "that", "the", "their", "these", "this", "those", "which", "whose",
    "your"))


def _wsc_referent_words(text) -> str:
  words = _text(text).strip().lower().split(" ")
  return " ".join(w for w in words if w not in WSC_DETERMINERS)


def wsc_simple(text, example=None, is_target: bool = False) -> int:
  """T5's WSC-simple check: did the model write the candidate referent?

  A target is the example's label (1: the candidate, span1_text, is the
  pronoun's referent; 0: it is not; -1 unlabelled). A prediction becomes 1
  when it names the candidate, 0 when not, and -1 when nothing is left of
  it, so `metrics.accuracy` scores "named the candidate" against the label.
  As in T5, both texts are lower-cased, stripped and split on single spaces,
  determiners (`WSC_DETERMINERS`) are dropped, and the prediction names the
  candidate when one word set contains the other ("fuzzy bunny" vs "bunny"),
  unless just one of the two has an apostrophe ("Bob" vs "Bob's hat"). The
  candidate is read from the example's `targets_pretokenized`.
  """
  if is_target:
    return int(example["label"])
  predicted = _wsc_referent_words(text)
  if not predicted:
    return -1  # an empty answer must not pass for a 0 that matches a False label
  candidate = _wsc_referent_words(example["targets_pretokenized"])
  if ("'" in predicted) != ("'" in candidate):
    return 0
  p, c = set(predicted.split(" ")), set(candidate.split(" "))
  return int(p <= c or c <= p)
