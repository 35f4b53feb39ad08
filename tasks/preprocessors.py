"""Text-to-text preprocessors in the T5 formats, written for seqio 0.0.20.

Each public function takes and returns a `tf.data.Dataset` (the seqio
preprocessor contract). Classification-style outputs carry, besides
"inputs"/"targets", the integer "label" (-1 when unknown, e.g. test splits)
and the string vector "options" (every possible target), which the
rank-classification variants and the postprocessors read.
"""
import functools
import re
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

UNK = "<unk>"
AUTOTUNE = tf.data.AUTOTUNE


def _join(parts: Sequence) -> tf.Tensor:
  """Joined with single spaces, the text left as it is: T5's GLUE/SuperGLUE, STS-B, WSC, DPR and
  ReCoRD preprocessors join this way (`tf.strings.join(..., separator=' ')`), so newlines and double
  spaces in the data stay in `inputs_pretokenized` as they do in T5's."""
  return tf.strings.join(list(parts), separator=" ")


def _string_join(parts: Sequence) -> tf.Tensor:
  """Joined with spaces and every whitespace run collapsed to one space: T5's `_string_join` (its
  SQuAD) and the SPoT code's text-classification form."""
  return tf.strings.regex_replace(_join(parts), r"\s+", " ")


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """T5's SQuAD padding: a space either side of each ASCII punctuation mark
  (RE2's [[:punct:]], "_" included; letters such as "é" and non-ASCII marks
  such as "’" stay as they are), then runs of whitespace collapsed to one
  space. Nothing is stripped, as in T5 (a trailing mark leaves a trailing
  space, which SentencePiece drops)."""
  text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


def label_text(label: tf.Tensor, options: tf.Tensor) -> tf.Tensor:
  """options[label], or "<unk>" for -1 (unlabelled) or out-of-range labels."""
  label = tf.cast(label, tf.int32)
  n = tf.shape(options)[0]
  ok = tf.logical_and(label >= 0, label < n)
  return tf.cond(ok, lambda: tf.gather(options, tf.clip_by_value(label, 0, n - 1)),
                 lambda: tf.constant(UNK))


def _classification(inputs, label, options):
  options = tf.convert_to_tensor(options, tf.string)
  label = tf.cast(label, tf.int32)
  n = tf.shape(options)[0]
  label = tf.where(tf.logical_and(label >= 0, label < n), label, -1)
  return {"inputs": inputs, "targets": label_text(label, options),
          "label": label, "options": options}


@seqio.map_over_dataset
def glue(x, benchmark_name: str, label_names: Sequence[str],
         feature_names: Optional[Sequence[str]] = None, id_key: str = "idx"):
  """T5's GLUE/SuperGLUE format: "<benchmark> key1: v1 key2: v2" -> label word.

  Keys default to the sorted text features (T5's order), e.g.
  "rte sentence1: ... sentence2: ...", "mnli hypothesis: ... premise: ...".
  MultiRC drops <br>/<b> markup from the joined text and keeps its
  three-part index.
  """
  keys = feature_names or sorted(
      k for k in x if k not in ("label", "idx") and x[k].dtype == tf.string)
  out = {}
  parts = [benchmark_name]
  for k in keys:
    parts += [f"{k}:", x[k]]
  inputs = _join(parts)
  if benchmark_name == "multirc":
    # As T5: the markup goes from the whole joined text, not the paragraph only.
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    for k in ("paragraph", "question", "answer"):
      out[f"idx/{k}"] = x["idx"][k]
  elif id_key and id_key in x:
    out["idx"] = x[id_key]
  out.update(_classification(inputs, x["label"], label_names))
  return out


@seqio.map_over_dataset
def stsb(x):
  """STS-B: the 0-5 score rounded to the nearest 0.2, as text ("3.8")."""
  inputs = _join(["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]])
  score = tf.round(tf.cast(x["label"], tf.float32) * 5.0) / 5.0
  return {"inputs": inputs, "targets": tf.strings.as_string(score, precision=1),
          "idx": x["idx"], "label_float": tf.cast(x["label"], tf.float32)}


def _regex_escape(text: tf.Tensor) -> tf.Tensor:
  """text with RE2's special characters backslash-escaped (a literal pattern)."""
  return tf.strings.regex_replace(text, r"([\\.^$|?*+()\[\]{}])", r"\\\1")


def _mark_span(text, span_text, span_index, mark):
  """Surrounds the word(s) span_text at word position span_index by `mark`."""
  span = _regex_escape(span_text)
  pattern = tf.strings.join(
      ["^((?:\\S+\\s){", tf.strings.as_string(span_index), "})(", span, ")"])
  return tf.strings.regex_replace(text, pattern, r"\1" + mark + r" \2 " + mark)


@seqio.map_over_dataset
def wsc(x):
  """T5's WSC format: "wsc text: ... *noun* ... #pronoun# ..." -> True/False."""
  text = _mark_span(x["text"], x["span1_text"], x["span1_index"], "*")
  # The first mark added two words before span 2 if span 1 came first.
  span2_index = x["span2_index"] + 2 * tf.cast(
      x["span1_index"] < x["span2_index"], x["span2_index"].dtype)
  text = _mark_span(text, x["span2_text"], span2_index, "#")
  out = _classification(_join(["wsc text:", text]), x["label"], ["False", "True"])
  out["idx"] = x["idx"]
  return out


def _pronoun_position(words: tf.Tensor, index: tf.Tensor, pronoun: tf.Tensor):
  """Where T5's `wsc_simple` puts the pronoun: (word position, trailing marks).

  The word at `index` normally is the pronoun (T5 asserts it). Where it is
  not, T5 special-cases two texts of the data; we cover both with two rules:
  the word is the pronoun with punctuation attached (`him,"` -> the mark
  `X ,"`), or the pronoun is the next (else the previous) word. Anything
  else keeps `index` (what T5's code gives without its check).
  """
  n = tf.size(words)
  i = tf.clip_by_value(tf.cast(index, tf.int32), 0, n - 1)

  def word(j):
    inside = tf.logical_and(j >= 0, j < n)
    return tf.where(inside, tf.gather(words, tf.clip_by_value(j, 0, n - 1)), "")

  here = word(i)
  plen = tf.strings.length(pronoun)
  rest = tf.strings.substr(here, tf.minimum(plen, tf.strings.length(here)), -1)
  attached = tf.logical_and(
      tf.logical_and(plen > 0, tf.equal(tf.strings.substr(here, 0, plen), pronoun)),
      tf.strings.regex_full_match(rest, r"[[:punct:]]+"))
  position = tf.case([(tf.equal(here, pronoun), lambda: i),
                      (attached, lambda: i),
                      (tf.equal(word(i + 1), pronoun), lambda: i + 1),
                      (tf.equal(word(i - 1), pronoun), lambda: i - 1)],
                     default=lambda: i)
  tail = tf.where(tf.logical_and(tf.not_equal(here, pronoun), attached), rest, "")
  return position, tail


def _wsc_simple_text(x) -> tf.Tensor:
  """"wsc: <text with the pronoun starred>" as T5's `wsc_simple` writes it.

  T5 blanks the pronoun to the word "X" (the words before and after it
  joined around it by single spaces, so a pronoun ending the text leaves a
  trailing space), then replaces every " X " by " *<span2_text>* " (another
  stand-alone word X in the text would be starred too). We do the same.
  """
  words = tf.strings.split(x["text"], sep=" ")  # empty words kept, as T5
  position, tail = _pronoun_position(words, x["span2_index"], x["span2_text"])
  blank = tf.where(tf.equal(tail, ""), tf.constant("X"), tf.strings.join(["X ", tail]))
  blanked = tf.strings.join([
      tf.strings.reduce_join(words[:position], separator=" "), blank,
      tf.strings.reduce_join(words[position + 1:], separator=" ")], separator=" ")
  rewrite = tf.strings.regex_replace(x["span2_text"], r"\\", r"\\\\")
  starred = tf.strings.regex_replace(blanked, " X ",
                                     tf.strings.join([" *", rewrite, "* "]))
  # A pronoun opening the text (T5 refuses those) leaves no leading space.
  starred = tf.cond(tf.equal(position, 0),
                    lambda: tf.strings.regex_replace(starred, "^ ", ""), lambda: starred)
  return _join(["wsc:", starred])


def wsc_simple(dataset: tf.data.Dataset, correct_referent_only: bool = False) -> tf.data.Dataset:
  """T5's "simple" WSC (`super_glue_wsc_v102_simple_*`): generate the referent.

  "wsc: Mark told Pete many lies about himself, which Pete included in
  *his* book." -> span1_text ("Mark"), the candidate referent, whether or not
  it is the right one; `label` (1 when it is) and `idx` come along for the
  `postprocessors.wsc_simple` check. `correct_referent_only` (training) keeps
  only the examples whose label is set (nonzero, as T5), so the model learns
  to write the right referent.
  """
  if correct_referent_only:
    dataset = dataset.filter(lambda x: tf.not_equal(x["label"], 0))

  def convert(x):
    return {"inputs": _wsc_simple_text(x), "targets": x["span1_text"],
            "label": tf.cast(x["label"], tf.int32), "idx": x["idx"]}
  return dataset.map(convert, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
def dpr_simple(x):
  """T5's DPR format (`dpr_v001_simple`), WSC-simple style, for training.

  "wsc: <sentence with the first ' <pronoun>' that a space, '.' or ','
  follows starred>" -> the correct candidate's text. Case-sensitive, as T5;
  a pronoun opening the sentence or followed by other marks stays unstarred.
  `options` (the two candidates) and `label` serve the rank variant.
  """
  pattern = tf.strings.join([" (", _regex_escape(x["pronoun"]), ")([ .,])"])
  sentence = tf.strings.regex_replace(x["sentence"], pattern, r" *\1*\2",
                                      replace_global=False)
  return _classification(_join(["wsc:", sentence]), x["label"], x["candidates"])


# --- T5's WNLI in the WSC-simple form (`wnli_simple`) ---------------------------------------------
# Plain Python on each example (tf.py_function), as T5 does: the pronoun is found by matching the
# words around each pronoun of sentence1 with sentence2, which tf.strings cannot express.

WNLI_PRONOUNS = frozenset(("he", "she", "they", "it", "her", "his", "their", "them", "him"))
_END_MARKS = (".", ",", "!", "?")


def _wnli_words(text: str) -> list:
  """Lower-cased words split on single spaces, one trailing . , ? or ! dropped, empty words left out."""
  words = (re.sub(r"(\.|,|\?|\!)$", "", w) for w in text.strip().lower().split(" "))
  return [w for w in words if w]


def _prefix_found(words: Sequence[str], text: str) -> int:
  """How many of `words`, from the first on, joined by spaces, are a substring of `text`."""
  for n in range(len(words)):
    if " ".join(words[:n + 1]) not in text:
      return n
  return len(words)


def _search(pattern_words: Sequence[str], text: str):
  """re.search of the words joined by spaces (T5 does not escape them: a word is a pattern). A word
  that is no valid pattern (T5 stops there) is matched literally."""
  try:
    return re.search(" ".join(pattern_words), text)
  except re.error:
    literal = [w if w in (r"(.+)", r"^(.+)", r"(.+)$") else re.escape(w) for w in pattern_words]
    return re.search(" ".join(literal), text)


def _wnli_pronoun_match(premise: Sequence[str], hypothesis: Sequence[str], index: int):
  """(score, candidate) of the pronoun premise[index]: score = how many words just before it and
  just after it sentence2 repeats; candidate = what sentence2 has in the pronoun's place."""
  before, after = premise[:index], premise[index + 1:]
  n_before = _prefix_found(list(reversed(before)), " ".join(reversed(hypothesis)))
  n_after = _prefix_found(after, " ".join(hypothesis))
  score = n_before + n_after
  if not score:
    return score, ""
  before = before[len(before) - n_before:]
  after = after[:n_after]
  text = " ".join(hypothesis)
  m = (_search(before + [r"(.+)"] + after, text) or _search([r"^(.+)"] + after, text)
       or _search(before + [r"(.+)$"], text))
  return score, (m.group(1) if m else "")


def _wnli_referent(candidate: str, hypothesis: str) -> str:
  """The candidate as sentence2 writes it: from its last article ("a", "an", "the") on, found in
  sentence2 (case-insensitively, a trailing . , ? or ! allowed after each word), without its
  trailing mark or possessive ("Bill's" -> "Bill"). T5 raises where sentence2 does not hold it (e.g.
  two spaces between its words); the candidate is kept as it is then."""
  words = candidate.split(" ")
  start = max([words.index(a) for a in ("a", "an", "the") if a in words] or [0])
  candidate = " ".join(words[start:])
  pattern = " ".join(re.escape(w) + r"(?:\.|,|\?|\!)?" for w in candidate.split(" "))
  m = re.search(f"({pattern})", hypothesis, re.IGNORECASE)
  if m:
    candidate = m.group(1)
  if candidate and candidate[-1] in _END_MARKS:
    candidate = candidate[:-1]
  if candidate.endswith("'"):
    return candidate[:-1]
  if candidate.endswith("'s"):
    return candidate[:-2]
  return candidate


def _star_word(sentence: str, index: int) -> str:
  """sentence's word `index` (split on single spaces) between stars, a trailing . , ! or ? moved out
  after a space ("her." -> "*her* ."). An index past the words, or an empty word, where T5 would
  fail, leaves the sentence as it is."""
  words = sentence.split(" ")
  if not 0 <= index < len(words) or not words[index]:
    return sentence
  word = words[index]
  starred = f"*{word[:-1]}* {word[-1]}" if word[-1] in _END_MARKS else f"*{word}*"
  return " ".join(words[:index] + [starred] + words[index + 1:])


def wnli_simple_text(sentence1: str, sentence2: str, prefix: str = "wsc:"):
  """(inputs, targets) of T5's `wnli_simple` for one WNLI pair, e.g. ("The fish ate the worm. It
  was tasty.", "The worm was tasty.") -> ("wsc: The fish ate the worm. *It* was tasty.", "The worm").

  Each pronoun of sentence1 (`WNLI_PRONOUNS`, compared lower-cased and without a trailing mark) is
  scored by how many of the words right before and right after it sentence2 repeats; the first best
  one is starred, and the words sentence2 has in its place are the target (`_wnli_referent`). The
  word positions are counted on sentence1's cleaned words and applied to its words split on single
  spaces, as T5 does. A sentence1 without a pronoun (T5 fails on it) gets no star and an empty target.
  """
  premise, hypothesis = _wnli_words(sentence1), _wnli_words(sentence2)
  best = None
  for i, word in enumerate(premise):
    if word in WNLI_PRONOUNS:
      score, candidate = _wnli_pronoun_match(premise, hypothesis, i)
      if best is None or score > best[0]:
        best = (score, i, candidate)
  if best is None:
    return f"{prefix} {sentence1}", ""
  _, index, candidate = best
  return f"{prefix} {_star_word(sentence1, index)}", _wnli_referent(candidate, sentence2)


@seqio.map_over_dataset
def wnli_simple(x, prefix: str = "wsc:"):
  """T5's `wnli_simple` (its `glue_wnli_v002_simple_eval`): GLUE WNLI as a WSC-simple example, the
  referent to generate, for evaluation only.

  sentence1 -> "wsc: <sentence1 with the pronoun starred>", target = the candidate referent that
  sentence2 puts in the pronoun's place (`wnli_simple_text`). `label` (1: sentence2 is entailed,
  i.e. the candidate is the referent; -1 unlabelled) and `idx` come along for the
  `postprocessors.wsc_simple` check; sentence1/sentence2 stay as `premise`/`hypothesis`.
  """
  def texts(sentence1, sentence2):
    return wnli_simple_text(sentence1.numpy().decode("utf-8"), sentence2.numpy().decode("utf-8"),
                            prefix)

  inputs, targets = tf.py_function(texts, inp=[x["sentence1"], x["sentence2"]],
                                   Tout=[tf.string, tf.string])
  return {"inputs": tf.reshape(inputs, []), "targets": tf.reshape(targets, []),
          "premise": x["sentence1"], "hypothesis": x["sentence2"],
          "label": tf.cast(x["label"], tf.int32), "idx": x["idx"]}


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """T5's ReCoRD format; one example per gold answer ("<unk>" when none).

  "record query: ... entities: A, B passage: ..." -> answer; "answers" keeps
  every gold answer and idx/passage + idx/query identify the question, so the
  metric can de-duplicate and take the max over answers.
  """
  def per_answer(x):
    answers = x["answers"]
    n = tf.maximum(tf.size(answers), 1)
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([UNK]))
    passage = x["passage"]
    passage = tf.strings.regex_replace(
        passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    inputs = _join(["record query:", x["query"], "entities:",
                    tf.strings.reduce_join(x["entities"], separator=", "),
                    "passage:", passage])
    tile = lambda t: tf.fill([n], t)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": tile(inputs), "targets": targets,
        "answers": tf.tile(tf.expand_dims(answers, 0), [n, 1]),
        "idx/passage": tile(x["idx"]["passage"]),
        "idx/query": tile(x["idx"]["query"]),
    })
  return dataset.flat_map(per_answer)


@seqio.map_over_dataset
def squad(x, include_context: bool = True):
  """T5's SQuAD format: "question: ... context: ..." -> first answer."""
  answers = pad_punctuation(x["answers"]["text"])
  q, c = pad_punctuation(x["question"]), pad_punctuation(x["context"])
  inputs = (_string_join(["question:", q, "context:", c]) if include_context
            else _string_join(["squad trivia question:", q]))
  first = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(UNK))
  return {"inputs": inputs, "targets": first, "answers": answers, "id": x["id"]}


@seqio.map_over_dataset
def drop(x):
  """DROP: "drop question: ... context: ..." -> answer; all answers kept."""
  answers = tf.concat([[x["answer"]], x["validated_answers"]], axis=0)
  return {"inputs": _string_join(["drop question:", x["question"], "context:", x["passage"]]),
          "targets": x["answer"], "answers": answers}


def _letters(n):
  return tf.strings.join(["(", tf.gather(tf.constant(list("ABCDEFGHIJKLMNOP")),
                                         tf.range(n)), ")"])


def multiple_choice_example(prefix: str, fields: Mapping[str, tf.Tensor],
                            options: tf.Tensor, label: tf.Tensor) -> dict:
  """"<prefix> k1: v1 ... options: (A) o1 (B) o2 ..." -> text of the answer."""
  options = tf.convert_to_tensor(options, tf.string)[:16]
  parts = [prefix]
  for k, v in fields.items():
    parts += [f"{k}:", v]
  listed = tf.strings.reduce_join(
      tf.strings.join([_letters(tf.shape(options)[0]), options], separator=" "),
      separator=" ")
  parts += ["options:", listed]
  return _classification(_string_join(parts), label, options)


@seqio.map_over_dataset
def copa(x):
  """COPA as T5 formats it (glue format, targets "choice1"/"choice2")."""
  keys = ["choice1", "choice2", "premise", "question"]
  parts = ["copa"]
  for k in keys:
    parts += [f"{k}:", x[k]]
  out = _classification(_join(parts), x["label"], ["choice1", "choice2"])
  out["idx"] = x["idx"]
  return out


@seqio.map_over_dataset
def winogrande(x):
  return multiple_choice_example(
      "winogrande", {"sentence": x["sentence"]},
      tf.stack([x["option1"], x["option2"]]), x["label"])


@seqio.map_over_dataset
def hellaswag(x):
  return multiple_choice_example(
      "hellaswag", {"context": x["context"]}, x["endings"], x["label"])


@seqio.map_over_dataset
def cosmos_qa(x):
  return multiple_choice_example(
      "cosmos_qa", {"question": x["question"], "context": x["context"]},
      tf.stack([x[f"answer{i}"] for i in range(4)]), x["label"])


def race(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """RACE: one example per question; answers are letters A-D."""
  def per_question(x):
    options = x["options"]
    if isinstance(options, tf.RaggedTensor):
      options = options.to_tensor(default_value="")
    n = tf.reduce_min(tf.stack([tf.size(x["questions"]), tf.size(x["answers"]),
                                tf.shape(options)[0]]))
    letters = tf.strings.substr(x["answers"][:n], 0, 1)
    labels = tf.strings.unicode_decode(letters, "UTF-8").to_tensor(
        default_value=-1, shape=[n, 1])[:, 0] - ord("A")
    ds = tf.data.Dataset.from_tensor_slices(
        {"q": x["questions"][:n], "o": options[:n], "label": labels})
    def make(e):
      opts = tf.boolean_mask(e["o"], tf.strings.length(e["o"]) > 0)
      return multiple_choice_example(
          "race", {"question": e["q"], "article": x["article"]}, opts, e["label"])
    return ds.map(make)
  return dataset.flat_map(per_question)


@seqio.map_over_dataset
def nli(x, benchmark_name: str, label_names: Sequence[str],
        premise_key: str = "premise", hypothesis_key: str = "hypothesis"):
  """NLI as the SPoT code registers its sources: "<name> hypothesis: ... <premise_key>: ..." -> label
  (the dataset's own field name: ANLI's premise is "context")."""
  inputs = _string_join([benchmark_name, f"{hypothesis_key}:", x[hypothesis_key],
                  f"{premise_key}:", x[premise_key]])
  return _classification(inputs, x["label"], label_names)


@seqio.map_over_dataset
def single_text_classification(x, benchmark_name: str, text_key: str,
                               field_name: str, label_names: Sequence[str]):
  """"<name> <field>: text" -> label word (e.g. Yelp polarity)."""
  inputs = _string_join([benchmark_name, f"{field_name}:", x[text_key]])
  return _classification(inputs, x["label"], label_names)


# ---------------------------------------------------------------------------
# C4 objectives (operate on token ids; run after seqio.preprocessors.tokenize).


def random_spans_tokens_length(inputs_length: int, noise_density: float = 0.15,
                               mean_noise_span_length: float = 3.0):
  """Raw tokens per segment so span-corrupted inputs fill `inputs_length`.

  Returns (tokens_length, targets_length), as T5's random_spans_helper.
  """
  def lengths(tokens_length):
    noise = int(round(tokens_length * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    return tokens_length - noise + spans + 1, noise + spans + 1
  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  return tokens_length, lengths(tokens_length)[1]


def _random_segmentation(num_items, num_segments):
  """Random partition of num_items into num_segments positive lengths."""
  first = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  first = tf.pad(tf.random.shuffle(first), [[1, 0]])
  segment_id = tf.cumsum(first)
  return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(length, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0):
  """Boolean mask, True on ~noise_density of the tokens in random spans."""
  orig_length = length
  length = tf.maximum(length, 2)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length),
                      tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  noise_lengths = _random_segmentation(num_noise, num_spans)
  keep_lengths = _random_segmentation(length - num_noise, num_spans)
  interleaved = tf.reshape(tf.stack([keep_lengths, noise_lengths], axis=1),
                           [num_spans * 2])
  starts = tf.cumsum(interleaved)[:-1]
  indicator = tf.math.unsorted_segment_sum(tf.ones_like(starts), starts, length)
  is_noise = tf.equal(tf.cumsum(indicator) % 2, 1)
  return is_noise[:orig_length]


def sentinel_replace(tokens, mask, vocab_size):
  """Each span of True replaced by one sentinel (<extra_id_0> = vocab_size-1)."""
  prev = tf.pad(mask[:-1], [[1, 0]])
  first = tf.logical_and(mask, tf.logical_not(prev))
  rest = tf.logical_and(mask, prev)
  sentinel = vocab_size - tf.cumsum(tf.cast(first, tokens.dtype))
  tokens = tf.where(first, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(rest))


def split_tokens(dataset: tf.data.Dataset, max_tokens: int,
                 min_tokens: int = 1) -> tf.data.Dataset:
  """Splits each "targets" token vector into segments of <= max_tokens."""
  def split(x):
    tokens = x["targets"]
    n = tf.size(tokens, out_type=tf.int64)
    starts = tf.range(0, n, max_tokens, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices(starts).map(
        lambda s: {"targets": tokens[s:s + max_tokens]})
  ds = dataset.flat_map(split)
  return ds.filter(lambda x: tf.size(x["targets"]) >= min_tokens)


DEFAULT_INPUTS_LENGTH = 512


def _inputs_length(sequence_length):
  return (sequence_length or {}).get("inputs") or DEFAULT_INPUTS_LENGTH


def span_corruption(dataset: tf.data.Dataset, sequence_length=None,
                    output_features=None, noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
  """T5's span corruption on tokenized "targets" (no packing of documents)."""
  tokens_length, _ = random_spans_tokens_length(
      _inputs_length(sequence_length), noise_density, mean_noise_span_length)
  vocab = output_features["targets"].vocabulary
  ds = split_tokens(dataset, tokens_length)

  def corrupt(x):
    tokens = x["targets"]
    mask = random_spans_noise_mask(tf.size(tokens), noise_density,
                                   mean_noise_span_length)
    vocab_size = tf.cast(vocab.vocab_size, tokens.dtype)
    return {"inputs": sentinel_replace(tokens, mask, vocab_size),
            "targets": sentinel_replace(tokens, tf.logical_not(mask), vocab_size)}
  return ds.map(corrupt, num_parallel_calls=AUTOTUNE)


def prefix_lm(dataset: tf.data.Dataset, sequence_length=None,
              output_features=None) -> tf.data.Dataset:
  """Prefix LM: a segment split at a uniform random point, prefix -> suffix."""
  del output_features
  ds = split_tokens(dataset, _inputs_length(sequence_length) - 1, min_tokens=2)

  def cut(x):
    tokens = x["targets"]
    k = tf.random.uniform([], 1, tf.size(tokens), dtype=tf.int32)
    return {"inputs": tokens[:k], "targets": tokens[k:]}
  return ds.map(cut, num_parallel_calls=AUTOTUNE)


def c4_preprocessors(objective: str):
  """The seqio preprocessor list for a C4 objective ("span_corruption"/"prefix_lm")."""
  fn = {"span_corruption": span_corruption, "prefix_lm": prefix_lm}[objective]
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
      seqio.preprocessors.tokenize,
      fn,
      seqio.preprocessors.append_eos_after_trim,
  ]
