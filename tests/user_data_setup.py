"""What the tests of users' own data files share (test_user_data, test_user_files): a byte
vocabulary, the bundled SentencePiece model, and reading a registered task's examples back."""
import os

import seqio

VOCAB = seqio.ByteVocabulary()
SPM = os.path.join(os.path.dirname(__file__), "..", "tasks", "data",
                   "bundled_spm.model")


def _examples(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      None, split=split, shuffle=False, try_in_mem_cache=False)
  return [{k: (v.decode() if isinstance(v, bytes) else v)
           for k, v in ex.items() if not k.endswith("s") or
           k.endswith("pretokenized")}
          for ex in ds.as_numpy_iterator()]


def _texts(name, split="train"):
  return [(e["inputs_pretokenized"], e["targets_pretokenized"])
          for e in _examples(name, split)]


def _write(path, text):
  path.write_text(text)
  return str(path)


def _rows(name, split):
  return [(e["targets_pretokenized"], e.get("is_correct")) for e in _examples(name, split)]
