"""Generates the bundled offline data in tasks/data/ (deterministically).

    python tasks/make_bundled_data.py [--out_dir tasks/data] [--seed 0]

(Run it as a script: it needs only the standard library and sentencepiece,
not TensorFlow, which importing the `tasks` package would load.)

Writes one directory per task with train/validation/test TSV files, a plain
text corpus (documents separated by blank lines) built from the same
templates and words, and a small SentencePiece model trained on all of it.
Running it twice gives byte-identical files, so its output is committed.

The tasks are designed for the SPoT demo: three sentiment tasks (movie,
product, restaurant reviews) share generic cue words, sentence templates and
the label words positive/negative, so a prompt learned on one transfers to
another; topic, nli and number use different label words and skills.
"""

import argparse
import io
import os
import random
import tempfile
from typing import Callable, Dict, List, Tuple

SPLIT_SIZES = (("train", 2000), ("validation", 200), ("test", 200))
TRAIN_LABEL_NOISE = 0.03  # flipped train labels; validation/test are clean.
VOCAB_SIZE = 1000
DEFAULT_OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SPM_NAME = "bundled_spm.model"
CORPUS_NAME = "corpus.txt"

# ------------------------------------------------------------------ words

POSITIVE = ["great", "excellent", "wonderful", "superb", "fantastic",
            "delightful", "brilliant", "lovely", "amazing", "perfect", "good"]
NEGATIVE = ["terrible", "awful", "dreadful", "poor", "horrible",
            "disappointing", "mediocre", "lousy", "bad", "weak", "annoying"]

DOMAINS = {
    "movie": dict(
        aspects=["the acting", "the plot", "the script", "the soundtrack",
                 "the ending", "the camera work", "the cast", "the dialogue",
                 "the story", "the lead actor", "the special effects"],
        positive=["gripping", "moving", "hilarious", "touching"],
        negative=["dull", "predictable", "clumsy", "slow"],
        openers=["we watched it last weekend", "i saw this film in the cinema",
                 "my friends picked this movie", "it runs for two hours"],
        closers_pos=["i would watch it again", "see it in the cinema"],
        closers_neg=["i almost walked out", "skip this film"]),
    "product": dict(
        aspects=["the battery", "the screen", "the build quality", "the price",
                 "the packaging", "the charger", "the keyboard", "the camera",
                 "the delivery", "the speaker", "the manual"],
        positive=["durable", "reliable", "sturdy", "solid"],
        negative=["flimsy", "broken", "overpriced", "faulty"],
        openers=["i bought this phone last month", "the parcel arrived today",
                 "i use this laptop for work", "i ordered it online"],
        closers_pos=["i would buy it again", "worth every penny"],
        closers_neg=["i sent it back", "save your money"]),
    "restaurant": dict(
        aspects=["the food", "the service", "the waiter", "the dessert",
                 "the pasta", "the soup", "the atmosphere", "the staff",
                 "the wine", "the pizza", "the menu"],
        positive=["delicious", "tasty", "friendly", "fresh"],
        negative=["cold", "greasy", "rude", "stale"],
        openers=["we had dinner there on friday", "we booked a table for four",
                 "i came here for lunch", "the place was busy"],
        closers_pos=["we will come back", "book a table soon"],
        closers_neg=["we will not return", "eat somewhere else"]),
}
CLAUSES = ["{a} was {w}", "{a} is {w}", "i found {a} {w}", "{a} felt {w}",
           "honestly {a} was {w}", "{a} seemed {w}"]
NEG_CLAUSES = ["{a} was not {w}", "{a} is not {w}", "i did not find {a} {w}"]

TOPICS = {
    "sports": dict(
        subjects=["the striker", "the home team", "the coach", "the goalkeeper",
                  "the champion", "the tennis star", "the cyclist", "the club"],
        verbs=["wins", "scores in", "loses", "prepares for", "trains for",
               "celebrates"],
        objects=["the final", "the league title", "the cup match", "the derby",
                 "the marathon", "the grand slam", "the world cup",
                 "the season opener"]),
    "science": dict(
        subjects=["the researchers", "the lab", "the telescope", "the biologists",
                  "the physicists", "the space probe", "the chemists",
                  "the university"],
        verbs=["discovers", "measures", "observes", "publishes", "maps",
               "studies"],
        objects=["a new planet", "the gene", "a distant galaxy", "the virus",
                 "the fossil", "quantum states", "the climate data",
                 "a new molecule"]),
    "politics": dict(
        subjects=["the senator", "the minister", "the parliament",
                  "the president", "the party", "the mayor", "the government",
                  "the opposition"],
        verbs=["proposes", "votes on", "rejects", "announces", "debates",
               "defends"],
        objects=["the new budget", "the tax reform", "the election",
                 "the bill", "the treaty", "the new law", "the referendum",
                 "the coalition deal"]),
    "food": dict(
        subjects=["the chef", "the bakery", "the farmers", "the food critic",
                  "the cafe", "the street vendor", "the cookbook author",
                  "the market"],
        verbs=["introduces", "cooks", "serves", "tastes", "sells", "praises"],
        objects=["a new recipe", "the summer menu", "fresh bread",
                 "spicy noodles", "the harvest", "vegan burgers",
                 "the chocolate cake", "local cheese"]),
}
TOPIC_TAILS = ["", " in the capital", " on sunday", " this week",
               " after a long wait", " for the first time", " again"]

PEOPLE = [("man", "adult"), ("woman", "adult"), ("boy", "child"),
          ("girl", "child"), ("old man", "adult"), ("student", "person"),
          ("chef", "person"), ("nurse", "person")]
ACTIVITIES = [("playing soccer", "playing a sport"),
              ("playing tennis", "playing a sport"),
              ("reading a book", "reading"), ("reading a newspaper", "reading"),
              ("eating an apple", "eating"), ("eating soup", "eating"),
              ("playing the guitar", "making music"),
              ("playing the piano", "making music"),
              ("painting a picture", "making art"),
              ("drawing a map", "making art")]
PLACES = ["park", "kitchen", "library", "garden", "street", "school", "beach",
          "station"]

LABELS = {
    "movie": ("negative", "positive"),
    "product": ("negative", "positive"),
    "restaurant": ("negative", "positive"),
    "topic": tuple(TOPICS),
    "nli": ("entailment", "neutral", "contradiction"),
    "number": ("first", "second"),
}
COLUMNS = {
    "movie": ("review",), "product": ("review",), "restaurant": ("review",),
    "topic": ("headline",), "nli": ("premise", "hypothesis"),
    "number": ("first", "second"),
}
TEMPLATES = {
    "movie": "review: {review}", "product": "review: {review}",
    "restaurant": "review: {review}", "topic": "headline: {headline}",
    "nli": "premise: {premise} hypothesis: {hypothesis}",
    "number": "numbers: {first} and {second}",
}
TASKS = tuple(LABELS)
# Words of the PPT pre-training formats (tasks/ppt.py) for the vocabulary.
PPT_WORDS = ("question: what comes next? options: A. B. C. D. E. F. G. H. I. "
             "J. K. L. M. N. O. P. answer: yes maybe no")

# ------------------------------------------------------------- generators


def _clause(rng: random.Random, domain: dict, positive: bool,
            negated: bool) -> str:
  words = POSITIVE + domain["positive"] if positive else NEGATIVE + domain["negative"]
  if negated:  # "not <opposite word>" carries the intended polarity.
    words = NEGATIVE + domain["negative"] if positive else POSITIVE + domain["positive"]
    return rng.choice(NEG_CLAUSES).format(a=rng.choice(domain["aspects"]),
                                          w=rng.choice(words))
  return rng.choice(CLAUSES).format(a=rng.choice(domain["aspects"]),
                                    w=rng.choice(words))


def review(rng: random.Random, name: str) -> Tuple[Tuple[str], str]:
  """One review: 1-2 cue clauses (some negated, some contrastive with 'but')."""
  d = DOMAINS[name]
  positive = rng.random() < 0.5
  kind = rng.random()
  if kind < 0.4:
    text = _clause(rng, d, positive, False)
  elif kind < 0.65:
    text = (_clause(rng, d, positive, False) + " and " +
            _clause(rng, d, positive, False))
  elif kind < 0.8:  # contrast: the clause after "but" decides.
    text = (_clause(rng, d, not positive, False) + " but " +
            _clause(rng, d, positive, False))
  else:
    text = _clause(rng, d, positive, True)
  if rng.random() < 0.3:
    text = rng.choice(d["openers"]) + " and " + text
  if rng.random() < 0.2:
    text += ". " + rng.choice(d["closers_pos"] if positive else d["closers_neg"])
  return (text,), LABELS[name][int(positive)]


def headline(rng: random.Random) -> Tuple[Tuple[str], str]:
  topic = rng.choice(list(TOPICS))
  t = TOPICS[topic]
  text = (f"{rng.choice(t['subjects'])} {rng.choice(t['verbs'])} "
          f"{rng.choice(t['objects'])}{rng.choice(TOPIC_TAILS)}")
  return (text,), topic


def nli_pair(rng: random.Random) -> Tuple[Tuple[str, str], str]:
  person, kind = rng.choice(PEOPLE)
  act, act_kind = rng.choice(ACTIVITIES)
  place = rng.choice(PLACES)
  premise = f"the {person} is {act} in the {place}"
  label = rng.choice(LABELS["nli"])
  if label == "entailment":
    hyp = rng.choice([f"a {kind} is {act_kind}", f"the {person} is in the {place}",
                      f"someone is {act}", f"a {kind} is in the {place}"])
  elif label == "neutral":
    hyp = rng.choice([f"the {person} is {act} with a friend",
                      f"the {person} is tired", f"the {person} is {act} for the first time",
                      f"the {person} is waiting for a bus", f"the {place} is crowded"])
  else:
    other = rng.choice([p for p in PLACES if p != place])
    hyp = rng.choice([f"the {person} is sleeping", f"the {person} is in the {other}",
                      f"nobody is in the {place}", f"the {person} is not {act}",
                      f"no {kind} is {act_kind}"])
  return (premise, hyp), label


def number_pair(rng: random.Random) -> Tuple[Tuple[str, str], str]:
  a, b = rng.sample(range(1000), 2)
  return (str(a), str(b)), "first" if a > b else "second"


GENERATORS: Dict[str, Callable[[random.Random], Tuple[tuple, str]]] = {
    "movie": lambda r: review(r, "movie"),
    "product": lambda r: review(r, "product"),
    "restaurant": lambda r: review(r, "restaurant"),
    "topic": headline, "nli": nli_pair, "number": number_pair,
}


def make_task(name: str, seed: int) -> Dict[str, List[Tuple[tuple, str]]]:
  """Distinct examples per split (no input appears in two splits)."""
  rng = random.Random(f"{seed}/{name}")
  seen, splits = set(), {}
  for split, size in SPLIT_SIZES:
    rows = []
    while len(rows) < size:
      fields, label = GENERATORS[name](rng)
      if fields in seen:
        continue
      seen.add(fields)
      if split == "train" and rng.random() < TRAIN_LABEL_NOISE:
        label = rng.choice([l for l in LABELS[name] if l != label])
      rows.append((fields, label))
    splits[split] = rows
  return splits


def make_corpus(seed: int, num_docs: int = 900) -> List[List[str]]:
  """Documents of 3-7 sentences: reviews, news, scenes and number facts."""
  rng = random.Random(f"{seed}/corpus")
  docs = []
  for i in range(num_docs):
    kind = i % 6
    n = rng.randint(3, 7)
    if kind < 3:  # a review keeps one domain and (mostly) one opinion.
      name = list(DOMAINS)[kind]
      d = DOMAINS[name]
      positive = rng.random() < 0.5
      sents = [rng.choice(d["openers"])]
      sents += [_clause(rng, d, positive if rng.random() < 0.85 else not positive,
                        rng.random() < 0.2) for _ in range(n - 2)]
      sents.append(rng.choice(d["closers_pos"] if positive else d["closers_neg"]))
    elif kind == 3:  # news about one topic.
      t = TOPICS[rng.choice(list(TOPICS))]
      sents = [f"{rng.choice(t['subjects'])} {rng.choice(t['verbs'])} "
               f"{rng.choice(t['objects'])}{rng.choice(TOPIC_TAILS)}"
               for _ in range(n)]
    elif kind == 4:  # a scene with one person.
      person, who = rng.choice(PEOPLE)
      sents = []
      for _ in range(n):
        act, act_kind = rng.choice(ACTIVITIES)
        place = rng.choice(PLACES)
        sents.append(rng.choice([f"the {person} is {act} in the {place}",
                                 f"a {who} is {act_kind}",
                                 f"later the {person} is {act}",
                                 f"the {place} is quiet"]))
    else:  # number facts.
      sents = []
      for _ in range(n):
        a, b = rng.sample(range(1000), 2)
        rel = "larger" if a > b else "smaller"
        sents.append(rng.choice([f"{a} is {rel} than {b}",
                                 f"the numbers are {a} and {b}"]))
    docs.append([s + "." for s in sents])
  return docs


# ----------------------------------------------------------------- writing


def _write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _tsv(name: str, rows: List[Tuple[tuple, str]]) -> bytes:
  lines = ["\t".join(COLUMNS[name] + ("label",))]
  for fields, label in rows:
    assert all("\t" not in f and "\n" not in f for f in fields)
    lines.append("\t".join(fields + (label,)))
  return ("\n".join(lines) + "\n").encode("utf-8")


def train_spm(sentences: List[str], vocab_size: int = VOCAB_SIZE) -> bytes:
  """A T5-style SentencePiece model (pad 0, eos 1, unk 2, no bos).

  BPE, not T5's unigram: on this small templated corpus the unigram trainer
  stops at ~400 pieces and splits common words ("wa"+"s"), while BPE reaches
  the full size with whole-word pieces. Digits are split so that numbers
  share pieces.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model,
      vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
      byte_fallback=False, split_digits=True, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      hard_vocab_limit=False, num_threads=1, shuffle_input_sentence=False,
      normalization_rule_name="nmt_nfkc", minloglevel=2)
  return model.getvalue()


def generate(out_dir: str = DEFAULT_OUT_DIR, seed: int = 0) -> List[str]:
  """Writes every bundled file under out_dir; returns the paths written."""
  written, spm_text = [], []
  for name in TASKS:
    for split, rows in make_task(name, seed).items():
      path = os.path.join(out_dir, name, f"{split}.tsv")
      _write(path, _tsv(name, rows))
      written.append(path)
      spm_text += [TEMPLATES[name].format(**dict(zip(COLUMNS[name], f))) + " " + l
                   for f, l in rows]
  docs = make_corpus(seed)
  corpus = "\n\n".join("\n".join(d) for d in docs) + "\n"
  path = os.path.join(out_dir, CORPUS_NAME)
  _write(path, corpus.encode("utf-8"))
  written.append(path)
  spm_text += [s for d in docs for s in d]
  spm_text += [PPT_WORDS] * 200  # so PPT's label words are single pieces.
  path = os.path.join(out_dir, SPM_NAME)
  _write(path, train_spm(spm_text))
  written.append(path)
  return written


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for path in generate(args.out_dir, args.seed):
    print(f"{os.path.getsize(path):>8d}  {path}")


if __name__ == "__main__":
  main()
