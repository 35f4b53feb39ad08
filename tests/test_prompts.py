"""Prompt initializers (DESIGN.md §5)."""
import numpy as np
import pytest

from spot_jax import prompt_export, prompts

EMB = np.random.RandomState(0).normal(size=(50, 8)).astype(np.float32)


class WordVocab:
  """A stand-in vocabulary: whitespace words to fixed ids."""
  ids = {"yes": [3], "no": [4], "maybe": [5, 6], "classify": [7], "this": [8]}

  def encode(self, text):
    return [i for w in text.split() for i in self.ids[w]]


def test_random_uniform_range_and_seed():
  p = prompts.make_prompt(prompts.random_uniform(0.5), 0, 10, 8)
  assert p.shape == (10, 8) and p.dtype == np.float32 and np.abs(p).max() <= 0.5
  np.testing.assert_array_equal(p, prompts.make_prompt(prompts.random_uniform(0.5), 0, 10, 8))
  assert not np.array_equal(p, prompts.make_prompt(prompts.random_uniform(0.5), 1, 10, 8))


def test_random_uniform_minval_gives_prompt_tuning_range():
  """prompt-tuning's configs: flax uniform(scale=0.5), i.e. [0, 0.5); ours defaults to [-0.5, 0.5)."""
  p = prompts.make_prompt(prompts.random_uniform(0.5, minval=0.0), 0, 200, 8)
  assert p.min() >= 0.0 and p.max() < 0.5
  assert prompts.make_prompt(prompts.random_uniform(0.5), 0, 200, 8).min() < -0.4
  with pytest.raises(ValueError, match="minval 0.5 must be below scale 0.5"):
    prompts.random_uniform(0.5, minval=0.5)


def test_sampled_vocab_rows_come_from_the_first_ids():
  p = prompts.make_prompt(prompts.sampled_vocab(population_size=20), 0, 6, 8, EMB)
  for row in p:
    hits = np.where((EMB[:20] == row).all(axis=1))[0]
    assert len(hits) == 1


def test_sampled_vocab_draws_as_prompt_tuning_does():
  """Distinct ids while the population allows (prompt-tuning's from_sample_of_embeddings), repeats only
  beyond it; population_size=None is the whole table, as there."""
  ids = lambda p: [int(np.where((EMB == row).all(axis=1))[0][0]) for row in p]
  drawn = ids(prompts.make_prompt(prompts.sampled_vocab(population_size=10), 3, 10, 8, EMB))
  assert sorted(drawn) == list(range(10))
  drawn = ids(prompts.make_prompt(prompts.sampled_vocab(population_size=4), 3, 12, 8, EMB))
  assert set(drawn) <= set(range(4)) and len(drawn) == 12
  drawn = ids(prompts.make_prompt(prompts.sampled_vocab(population_size=None), 3, 50, 8, EMB))
  assert sorted(drawn) == list(range(50))
  with pytest.raises(ValueError, match="population_size must be a positive number .* got 0"):
    prompts.sampled_vocab(population_size=0)


def test_class_labels_average_sub_tokens_then_fill():
  init = prompts.class_labels(vocabulary=WordVocab(), labels=["yes", "maybe"])
  p = prompts.make_prompt(init, 0, 5, 8, EMB)
  np.testing.assert_allclose(p[0], EMB[3])
  np.testing.assert_allclose(p[1], (EMB[5] + EMB[6]) / 2)
  for row in p[2:]:  # the rest: vocabulary rows, as prompt-tuning's from_class_labels.gin
    assert (EMB[:5000] == row).all(axis=1).any()
  with pytest.raises(ValueError, match="3 class labels do not fit a prompt of length 2: raise PROMPT_LENGTH "
                                       "to at least 3 or give fewer CLASS_LABELS"):
    prompts.make_prompt(prompts.class_labels(vocabulary=WordVocab(), labels=["yes", "no", "maybe"]), 0, 2, 8, EMB)


def test_from_string_puts_the_tokens_first():
  p = prompts.make_prompt(prompts.from_string(vocabulary=WordVocab(), text="classify this"), 0, 4, 8, EMB)
  np.testing.assert_array_equal(p[:2], EMB[[7, 8]])
  with pytest.raises(ValueError, match="more than the prompt length 1"):
    prompts.make_prompt(prompts.from_string(vocabulary=WordVocab(), text="classify this"), 0, 1, 8, EMB)


def test_from_file_and_weighted_average(tmp_path):
  a, b = np.ones((3, 8), np.float32), np.full((3, 8), 4.0, np.float32)
  prompt_export.save_npy(a, str(tmp_path / "a.npy"))
  prompt_export.save_npy(b, str(tmp_path / "b.npy"))
  np.testing.assert_array_equal(prompts.make_prompt(prompts.from_file(str(tmp_path / "a.npy")), 0, 3, 8), a)
  mixed = prompts.make_prompt(prompts.from_files_weighted([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
                                                          [3.0, 1.0]), 0, 3, 8)
  np.testing.assert_allclose(mixed, 0.75 * a + 0.25 * b)
  with pytest.raises(ValueError, match=r"has shape \(3, 8\) but this run expects \[PROMPT_LENGTH=5, d_model=8\]"):
    prompts.make_prompt(prompts.from_file(str(tmp_path / "a.npy")), 0, 5, 8)
  with pytest.raises(ValueError, match=r"its d_model 8 is another model size's.*\(d_model 16\)") as e:
    prompts.make_prompt(prompts.from_file(str(tmp_path / "a.npy")), 0, 3, 16)
  assert "set PROMPT_LENGTH" not in str(e.value)  # the length already matches
  with pytest.raises(ValueError, match="2 prompt files but 1 weights"):
    prompts.from_files_weighted(["x", "y"], [1.0])


def test_non_finite_init_is_rejected():
  with pytest.raises(ValueError, match="NaN or inf"):
    prompts.make_prompt(lambda rng, p, d, e: np.full((p, d), np.nan), 0, 2, 8)


def test_the_embedding_is_read_only_for_initializers_that_use_it(tmp_path):
  """The trainer hands make_prompt the checkpoint's lazily read table: a random or transferred init
  must not read it (a T5 XXL host would read the whole 0.5 GB table beside its shard); a user's own
  initializer, not marked, gets it as float32."""
  from spot_jax.checkpoints.lazy import LazyArray
  table = np.arange(40 * 8, dtype=np.float32).reshape(40, 8) / 100
  reads = []
  lazy = LazyArray(table.shape, np.float32, lambda index: reads.append(index) or table[index], "embedding")
  np.save(tmp_path / "p.npy", np.ones((4, 8), np.float32))
  for init in (prompts.random_uniform(), prompts.from_file(str(tmp_path / "p.npy")),
               prompts.from_files_weighted([str(tmp_path / "p.npy")] * 2)):
    assert not prompts.needs_embedding(init)
    prompts.make_prompt(init, 0, 4, 8, lazy)
  assert reads == []
  sampled = prompts.make_prompt(prompts.sampled_vocab(10), 0, 4, 8, lazy)
  assert len(reads) == 1 and set(map(tuple, sampled)) <= set(map(tuple, table[:10]))
  seen = []
  prompts.make_prompt(lambda rng, n, d, emb: seen.append(emb) or emb[:n], 0, 4, 8, lazy)
  assert seen[0].dtype == np.float32 and np.array_equal(seen[0], table)
