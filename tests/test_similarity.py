"""Similarity measures against values worked out by hand (DESIGN.md §7)."""
import os
import sys

import numpy as np
import pytest

from spot_jax.spot import similarity as sim

# a = [[1,0],[0,1]], b = [[1,0],[1,0]]
A = np.array([[1.0, 0.0], [0.0, 1.0]])
B = np.array([[1.0, 0.0], [1.0, 0.0]])


def test_hand_values_2x2():
  # mean a = (.5,.5), mean b = (1,0): cos = .5 / (sqrt(.5) * 1) = 1/sqrt(2)
  assert sim.cos_avg_tokens(A, B) == pytest.approx(1 / np.sqrt(2))
  # cos(a_i, b_j): a0 vs both b rows = 1, a1 vs both = 0 -> mean 0.5
  assert sim.cos_per_token(A, B) == pytest.approx(0.5)
  assert sim.c_average(A, B) == pytest.approx(0.5)
  # a - b = [[0,0],[-1,1]] -> ||.||_F = sqrt(2)
  assert sim.e_concat(A, B) == pytest.approx(1 / (1 + np.sqrt(2)))
  # token distances: 0, 0, sqrt(2), sqrt(2) -> mean sqrt(2)/2
  assert sim.e_average(A, B) == pytest.approx(1 / (1 + np.sqrt(2) / 2))
  # flat a = (1,0,0,1), flat b = (1,0,1,0): dot 1, norms sqrt(2) each
  assert sim.c_concat(A, B) == pytest.approx(0.5)


def test_hand_values_different_lengths():
  a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # mean (4/3, 2)
  b = np.array([[2.0, 0.0], [0.0, 2.0]])              # mean (1, 1)
  # (4/3 + 2) / (sqrt(16/9 + 4) * sqrt(2)) = 10 / sqrt(104)
  assert sim.cos_avg_tokens(a, b) == pytest.approx(10 / np.sqrt(104))
  # unit rows of a: (1,0), (0,1), (.6,.8); of b: (1,0), (0,1). cos sums: 1+0, 0+1, .6+.8 -> 3.4 / 6
  assert sim.cos_per_token(a, b) == pytest.approx(3.4 / 6)
  # distances a_i-b_j: (1,0)-(2,0)=1, (1,0)-(0,2)=sqrt5, (0,2)-(2,0)=sqrt8, 0, (3,4)-(2,0)=sqrt17,
  # (3,4)-(0,2)=sqrt13
  mean_d = (1 + np.sqrt(5) + np.sqrt(8) + 0 + np.sqrt(17) + np.sqrt(13)) / 6
  assert sim.e_average(a, b) == pytest.approx(1 / (1 + mean_d))
  for fn in (sim.e_concat, sim.c_concat):
    with pytest.raises(ValueError, match="equal shape"):
      fn(a, b)


def test_d_model_mismatch_is_an_error():
  with pytest.raises(ValueError, match="different d_model"):
    sim.cos_avg_tokens(np.ones((2, 3)), np.ones((2, 4)))


def test_zero_prompt_gives_zero_cosine_not_nan():
  assert sim.cos_avg_tokens(np.zeros((2, 3)), np.ones((2, 3))) == 0.0
  assert sim.cos_per_token(np.zeros((2, 3)), np.ones((2, 3))) == 0.0


def test_symmetry_and_self_similarity():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
  for name, fn in sim.PROMPT_SIMILARITIES.items():
    assert fn(a, b) == pytest.approx(fn(b, a)), name
  for name in ("cos_avg_tokens", "e_concat", "c_concat"):
    assert sim.PROMPT_SIMILARITIES[name](a, a) == pytest.approx(1.0), name
  # per-token measures compare every pair of tokens, so a prompt is not 1-similar to itself
  assert sim.cos_per_token(a, a) < 1.0
  assert sim.e_average(a, a) < 1.0


# Layers x d_ff pre-activations; binarized (>0) patterns written beside each row.
ACT_A = np.array([[1, -1, 2, 0],    # 1 0 1 0
                  [1, 1, -1, -1],   # 1 1 0 0
                  [0, 0, 0, 1],     # 0 0 0 1
                  [5, -2, 3, 1]],   # 1 0 1 1
                 dtype=float)
ACT_B = np.array([[2, 3, -1, 0],    # 1 1 0 0
                  [1, 1, 1, 1],     # 1 1 1 1
                  [0, 0, 0, 1],     # 0 0 0 1
                  [-1, -1, -1, -1]],  # 0 0 0 0
                 dtype=float)


def test_on_hand_values():
  # all layers: a has 8 ones, b has 7, overlap 1+2+1+0 = 4
  assert sim.on_similarity(ACT_A, ACT_B, window=None) == pytest.approx(4 / np.sqrt(56))
  # windows of 2: layers 0-1 (4, 6 ones, overlap 3), layers 2-3 (4, 1 ones, overlap 1)
  np.testing.assert_allclose(sim.on_window_similarities(ACT_A, ACT_B, 2), [3 / np.sqrt(24), 0.5])
  assert sim.on_similarity(ACT_A, ACT_B, 2) == pytest.approx((3 / np.sqrt(24) + 0.5) / 2)
  # windows of 3: layers 0-2 (5, 7 ones, overlap 4); layer 3 alone (b silent -> 0)
  assert sim.on_similarity(ACT_A, ACT_B, 3) == pytest.approx((4 / np.sqrt(35) + 0) / 2)
  assert sim.on_similarity(ACT_A, ACT_A, 3) == pytest.approx(1.0)
  assert sim.on_similarity(ACT_A, ACT_B, 3) == pytest.approx(sim.on_similarity(ACT_B, ACT_A, 3))


def test_on_flattens_positions_and_checks_shapes():
  a = np.stack([ACT_A, ACT_B], axis=1)  # [layers, positions=2, d_ff]
  b = np.stack([ACT_B, ACT_B], axis=1)
  flat_a, flat_b = a.reshape(4, -1), b.reshape(4, -1)
  assert sim.on_similarity(a, b, 2) == pytest.approx(sim.on_similarity(flat_a, flat_b, 2))
  with pytest.raises(ValueError, match="activation shapes differ"):
    sim.on_similarity(ACT_A, ACT_A[:3])
  with pytest.raises(ValueError, match="window"):
    sim.on_similarity(ACT_A, ACT_B, 0)
  # Prompts of other lengths: named before the model runs (it blamed the model's input).
  ran = []
  fn = lambda p: ran.append(p.shape) or np.ones((4, p.shape[0], 8))
  prompts = {"four": np.ones((4, 8)), "six": np.ones((6, 8))}
  for call in (lambda: sim.similarity_matrix(prompts, "on", fn), lambda: sim.similarities_to(np.ones((4, 8)), prompts, "on", fn),
               lambda: sim.prompt_similarity(prompts["four"], prompts["six"], "on", fn)):
    with pytest.raises(ValueError, match=r"on: prompts of different lengths cannot be compared position by position"):
      call()
  assert ran == []


def test_similarity_matrix_and_registry():
  assert set(sim.SIMILARITIES) == {"cos_avg_tokens", "cos_per_token", "e_concat", "e_average",
                                   "c_concat", "c_average", "on"}
  rng = np.random.default_rng(1)
  prompts = {n: rng.normal(size=(3, 4)) for n in ("x", "y", "z")}
  names, m = sim.similarity_matrix(prompts, "c_concat")
  assert names == ["x", "y", "z"]
  np.testing.assert_allclose(m, m.T)
  np.testing.assert_allclose(np.diag(m), 1.0)
  assert m[0, 2] == pytest.approx(sim.c_concat(prompts["x"], prompts["z"]))
  with pytest.raises(ValueError, match="unknown similarity measure"):
    sim.similarity_matrix(prompts, "cosine")


def test_on_through_activations_fn():
  rng = np.random.default_rng(2)
  prompts = {n: rng.normal(size=(3, 4)) for n in ("x", "y")}
  calls = []

  def fn(p):  # a stand-in for the frozen model: [layers=2, positions=3, d_ff=4]
    calls.append(1)
    return np.stack([p, p[::-1] - 0.3])

  names, m = sim.similarity_matrix(prompts, "on", activations_fn=fn, window=None)
  assert len(calls) == 2  # once per prompt, not per pair
  assert m[0, 1] == pytest.approx(sim.on_similarity(fn(prompts["x"]), fn(prompts["y"]), None))
  assert m[0, 0] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="activations_fn"):
    sim.similarity_matrix(prompts, "on")
  assert sim.prompt_similarity(prompts["x"], prompts["y"], "on", fn, None) == pytest.approx(m[0, 1])


def test_ranked_pairs():
  names = ["a", "b", "c"]
  m = np.array([[1, .2, .9], [.2, 1, .5], [.9, .5, 1]])
  assert sim.ranked_pairs(names, m) == [("a", "c", .9), ("b", "c", .5), ("a", "b", .2)]


def test_on_with_the_tiny_frozen_model():
  """ON through spot_jax.model.ffn_preactivations (random weights: only the plumbing matters)."""
  import jax
  from spot_jax import config as config_lib
  from spot_jax import model as model_lib
  from spot_jax.spot import cli
  cfg = config_lib.size_config("tiny", vocab_size=128)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s)).astype(np.float32),
                        model_lib.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
  fn = cli.activations_fn_from_params(cfg, params, input_ids=(5, 1))
  a, b = rng.uniform(-0.5, 0.5, size=(2, 3, cfg.d_model))
  act_a, act_b = fn(a), fn(b)
  assert act_a.shape == (cfg.num_encoder_layers, 1, 3 + 2, cfg.d_ff)
  assert 0 < (act_a > 0).mean() < 1
  np.testing.assert_array_equal(fn(a), act_a)  # deterministic: no dropout
  s_ab = sim.on_similarity(act_a, act_b, window=1)
  assert 0.0 < s_ab < 1.0
  assert sim.on_similarity(act_a, act_a, window=1) == pytest.approx(1.0)
  _, m = sim.similarity_matrix({"a": a, "b": b}, "on", activations_fn=fn, window=1)
  assert m[0, 1] == pytest.approx(s_ab)


def test_on_refuses_input_ids_outside_the_vocabulary():
  """A default probe id 32099 on a small-vocabulary model used to give all-zero ON scores silently."""
  import jax
  from spot_jax import config as config_lib
  from spot_jax import model as model_lib
  from spot_jax.spot import cli
  cfg = config_lib.size_config("tiny", vocab_size=128)
  params = jax.tree.map(lambda s: np.zeros(s, np.float32), model_lib.param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))
  with pytest.raises(ValueError, match=r"no default input ids for a model with vocab_size 128 .*--input-ids"):
    cli.activations_fn_from_params(cfg, params)
  with pytest.raises(ValueError, match=r"\[32099\].*vocab_size 128.*--input-ids"):
    cli.activations_fn_from_params(cfg, params, input_ids=(32099, 1))
  with pytest.raises(ValueError, match=r"\[128, -1\].*vocab_size 128"):
    cli.activations_fn_from_params(cfg, params, input_ids=(128, -1, 1))
  with pytest.raises(ValueError, match="at least one"):
    cli.activations_fn_from_params(cfg, params, input_ids=())
  cli.activations_fn_from_params(cfg, params, input_ids=(127, 1))  # in range: accepted


def test_on_probes_extra_id_0_of_the_models_own_vocabulary():
  """T5 and mT5 by default ('<extra_id_0>' is 32099 there, an ordinary word piece in mT5's 250112)."""
  from spot_jax.spot import cli
  assert cli.default_input_ids(32128) == (32099, 1) and cli.default_input_ids(250112) == (250099, 1)


def test_spots_on_probe_is_the_target_tasks_extra_id_0_whether_appended_or_in_the_file(tmp_path, monkeypatch):
  """The probe id comes from the target task's vocabulary: the bundled one (1100 ids: 1099), and a
  model file that holds its sentinels (extra_ids reads 0 there; `<extra_id_0>` is still one piece)."""
  import seqio
  sys.path.insert(0, os.path.dirname(__file__))
  import conftest_tasks as ct  # pylint: disable=g-import-not-at-top
  from spot_jax.spot import cli, pipeline
  from tasks import vocab
  seen = []
  monkeypatch.setattr(cli, "activations_fn_from_params", lambda config, params, ids: seen.append(ids))
  pipeline._activations_fn(("config", "params"), "spot_bundled_movie")  # pylint: disable=protected-access
  built_in = tmp_path / "spm.100extra.model"
  built_in.write_bytes(seqio.SentencePieceVocabulary(ct.tiny_spm_path(), extra_ids=100).sp_model)
  with vocab.use_vocabulary(str(built_in)):
    pipeline._activations_fn(("config", "params"), "spot_glue_rte_v200")  # pylint: disable=protected-access
  pipeline._activations_fn(("config", "params"), None)  # pylint: disable=protected-access
  assert seen == [(1099, 1), (399, 1), None]
