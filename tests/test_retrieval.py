"""Retrieval: ranking sources against a target's task embedding, ties, the weighted-average init,
and the warning when task embeddings come from different steps."""
import numpy as np
import pytest

from spot_jax import prompt_export as pexp
from spot_jax.spot import retrieval
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.retrieval import rank_sources, weighted_average_init


def _prompt(p=4, d=8, seed=0):
  return np.random.default_rng(seed).normal(size=(p, d)).astype(np.float32)


def test_retrieval_ranks_planted_prompt_first(tmp_path):
  rng = np.random.default_rng(0)
  target = rng.normal(size=(4, 64)).astype(np.float32)
  lib = PromptLibrary(str(tmp_path / "lib"))
  for i in range(5):
    lib.add(f"random_{i}", rng.normal(size=(4, 64)), "m",
            task_embedding=rng.normal(size=(4, 64)))
  lib.add("related", rng.normal(size=(4, 64)), "m",
          task_embedding=target + 0.05 * rng.normal(size=(4, 64)))
  for measure in sim.PROMPT_SIMILARITIES:
    ranked = rank_sources(target, lib, measure)
    assert ranked[0][0] == "related", measure
    assert len(ranked) == 6
    assert all(ranked[i][1] >= ranked[i + 1][1] for i in range(5))
  ranked = rank_sources(target, lib, "cos_avg_tokens", exclude=("related",))
  assert "related" not in dict(ranked)
  with pytest.raises(ValueError, match="d_model 3"):
    rank_sources(np.ones((2, 3)), lib)
  # a plain mapping works too, and ON goes through activations_fn
  cands = {"x": target + 0.01, "y": -target}
  ranked = rank_sources(target, cands, "on", activations_fn=lambda p: p[None], window=None)
  assert ranked[0][0] == "x" and ranked[0][1] > 0.95 and ranked[1][1] == 0.0


def test_ranking_ties_name_the_sources_that_name_order_decided(caplog):
  ranked = retrieval.sort_ranking({"d": 0.1, "c": 0.5 + 1e-9, "b": 0.5, "a": 0.9})
  assert [t for t, _ in ranked] == ["a", "b", "c", "d"]  # 1e-9 apart: a tie, so in name order
  # The top-2 cut falls inside the tie b ~ c: which one is chosen follows the names.
  ties = retrieval.ranking_ties(ranked, top_k=2)
  assert ties.tied and not ties.all_tied
  assert ties.sources == ["b", "c"] and ties.chosen == ["b"] and ties.score == pytest.approx(0.5)
  assert ties.groups == [["b", "c"]] and ties.is_tied("b") and not ties.is_tied("a")
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    retrieval.warn_ties(ranked, top_k=2)
  assert "top-2 selection is decided by a tie" in caplog.text and "b, c" in caplog.text
  assert "0.5" in caplog.text
  # A tie inside the top k (or below it) decides nothing: no warning, but still recorded.
  caplog.clear()
  for k in (1, 3, None):
    with caplog.at_level("WARNING", logger="spot_jax.spot"):
      ties = retrieval.warn_ties(ranked, top_k=k)
    assert not ties.tied and not ties.all_tied and ties.message() is None and ties.groups == [["b", "c"]]
  assert caplog.text == ""
  assert retrieval.ranking_ties([("a", 0.5), ("b", 0.5 + 1e-3)], 1).tied is False  # beyond the tolerance
  assert retrieval.ranking_ties([("a", 0.9)], 1).message() is None


def test_all_tied_ranking_says_it_carries_no_information(tmp_path, caplog):
  """Identical source embeddings score alike under every measure, through the one ranking code."""
  target = _prompt(seed=1)
  lib = PromptLibrary(str(tmp_path / "lib"))
  for name in ("zeta", "alpha", "mid"):
    lib.add(name, _prompt(seed=2), "m")
  for measure in sim.PROMPT_SIMILARITIES:
    ranked = rank_sources(target, lib, measure, kind="prompt")
    assert [t for t, _ in ranked] == ["alpha", "mid", "zeta"], measure
    ties = retrieval.ranking_ties(ranked, top_k=1)
    assert ties.all_tied and ties.tied and ties.sources == ["alpha", "mid", "zeta"], measure
    assert ties.chosen == ["alpha"] and ties.to_dict()["all_tied"] is True
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    retrieval.warn_ties(ranked, top_k=5)  # all chosen, but the order still means nothing
  assert "all 3 sources score" in caplog.text and "carries no information" in caplog.text
  assert "alpha, mid, zeta" in caplog.text


def test_weighted_average_init_equals_manual_sum():
  ps = [_prompt(seed=s) for s in range(3)]
  init, w = weighted_average_init(ps, [0.9, 0.1, 0.5], top_k=2)
  manual = (0.9 * ps[0] + 0.5 * ps[2]) / 1.4
  np.testing.assert_allclose(init, manual, rtol=1e-6)
  np.testing.assert_allclose(w, [0.9 / 1.4, 0.0, 0.5 / 1.4])
  init_all, w_all = weighted_average_init(ps, [1.0, 1.0, 2.0])
  np.testing.assert_allclose(init_all, (ps[0] + ps[1] + 2 * ps[2]) / 4, rtol=1e-6)
  init_m, w_m = weighted_average_init(dict(zip("abc", ps)), {"a": 0.9, "b": 0.1, "c": 0.5}, 2)
  np.testing.assert_allclose(init_m, manual, rtol=1e-6)
  assert w_m == pytest.approx({"a": 0.9 / 1.4, "c": 0.5 / 1.4})
  with pytest.raises(ValueError, match="one shape"):
    weighted_average_init([ps[0], _prompt(p=5)], [1, 1])
  with pytest.raises(ValueError, match="all <= 0"):
    weighted_average_init(ps, [-0.1, -0.2, -0.3], top_k=2)
  with pytest.warns(UserWarning, match="weight 0"):
    init, w = weighted_average_init(ps, [0.5, -0.2, 0.1], top_k=3)
  np.testing.assert_allclose(w, [0.5 / 0.6, 0.0, 0.1 / 0.6])


def test_rank_sources_takes_a_target_model_dirs_task_embedding_export(tmp_path):
  # SPoT compares the target's early-checkpoint prompt (its task embedding) with the sources' task
  # embeddings; a MODEL_DIR's best export is a different, fully trained prompt.
  run = str(tmp_path / "cb_short")
  early = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # mean (.5, .5)
  pexp.export_numpy_checkpoint(early, run, 10, name="task_embedding")
  pexp.export_numpy_checkpoint(-early, run, 100, name="best")
  sources = {"same": early, "opposite": -early}
  # cos((.5,.5), (.5,.5)) = 1; cos((.5,.5), (-.5,-.5)) = -1
  assert rank_sources(run, sources) == [("same", pytest.approx(1.0)), ("opposite", pytest.approx(-1.0))]
  # without a task_embedding export the best export stands in, with a warning
  run2 = str(tmp_path / "no_emb")
  pexp.export_numpy_checkpoint(-early, run2, 100, name="best")
  with pytest.warns(UserWarning, match="no task_embedding export"):
    ranked = rank_sources(run2, sources)
  assert [t for t, _ in ranked] == ["opposite", "same"]


def test_nan_scores_sort_last_and_nan_source_prompts_are_refused():
  # a NaN score compares false with everything: it used to land anywhere, depending on input order
  for scores in ({"a": float("nan"), "b": 0.5, "c": 0.7}, {"c": 0.7, "a": float("nan"), "b": 0.5},
                 {"b": 0.5, "c": 0.7, "a": float("nan")}):
    ranked = retrieval.sort_ranking(scores)
    assert [t for t, _ in ranked] == ["c", "b", "a"]
    assert np.isnan(ranked[-1][1])
  bad = np.array([[1.0, np.nan], [0.0, 1.0]])
  with pytest.raises(ValueError, match="source prompt 'bad'.*NaN"):
    rank_sources(np.eye(2), {"ok": np.eye(2), "bad": bad})


def test_task_embedding_steps_are_recorded_and_a_target_at_another_step_is_warned(tmp_path):
  import warnings
  lib = PromptLibrary(str(tmp_path / "lib"))
  for task, step in (("rte", 50), ("mnli", 200)):
    run = str(tmp_path / task)
    pexp.export_numpy_checkpoint(_prompt(seed=step), run, step, name="task_embedding")
    pexp.export_numpy_checkpoint(_prompt(seed=step + 1), run, 1000)
    assert lib.add(task, run, "t5_tiny")["task_embedding_step"] == step  # read from the export
  # An array gives no step unless told one; a prompt file without an export neither.
  assert lib.add("boolq", _prompt(seed=7), None, task_embedding=_prompt(seed=8))["task_embedding_step"] is None
  assert lib.add("cb", _prompt(seed=9), None, task_embedding=_prompt(seed=10),
                 task_embedding_step=50)["task_embedding_step"] == 50
  target = str(tmp_path / "target")
  pexp.export_numpy_checkpoint(_prompt(seed=11), target, 50, name="task_embedding")
  assert retrieval.target_embedding_step(target) == 50
  with pytest.warns(UserWarning, match=r"from step 50.*mnli \(step 200\)") as caught:
    ranked = rank_sources(target, lib)
  assert len(ranked) == 4
  assert not any(t in str(caught[0].message) for t in ("rte", "boolq", "cb"))  # same step, or unknown
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rank_sources(target, lib, exclude=["mnli"])  # every known step matches: no warning
    rank_sources(_prompt(seed=11), lib)  # an array target: its step is unknown
  # --kind prompt: the sources' final prompts (step 1000 for rte and mnli) against the target's step 50.
  with pytest.warns(UserWarning, match=r"--kind prompt compares the sources' final prompts with the target's "
                                       r"prompt of step 50.*mnli \(step 1000\), rte \(step 1000\)"):
    rank_sources(target, lib, kind="prompt")
  with pytest.warns(UserWarning, match="from step 200"):
    assert retrieval.warn_embedding_steps(lib, 200, lib.tasks()) == {"rte": 50, "cb": 50}


def test_a_prompt_tuning_target_is_compared_at_its_prompt_steps(tmp_path):
  """A google-research/prompt-tuning target counts T5X's global steps; library entries record prompt
  steps (global minus the initial checkpoint's, from config.gin), so the target's step must be counted
  the same way, or every source is warned about."""
  from test_library_entry import _prompt_tuning_model_dir
  run = tmp_path / "pt_run"
  _prompt_tuning_model_dir(run)  # 3000 steps from checkpoint_1100000, an early export at 1100500
  assert retrieval.target_embedding_step(str(run)) == 3000
  assert retrieval.target_embedding_step(str(run / "numpy_checkpoints" / "checkpoint_1100500")) == 500
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("rte", _prompt(5, 6), "t5_tiny", task_embedding=_prompt(5, 6, seed=1), task_embedding_step=500)
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # same step: no warning
    rank_sources(str(run / "numpy_checkpoints" / "checkpoint_1100500"), lib)
  bare = tmp_path / "pt_run_no_config"
  _prompt_tuning_model_dir(bare, config_gin=False)  # no config.gin: T5X's global step, as the library
  assert retrieval.target_embedding_step(str(bare)) == 1_103_000


def test_scores_tied_within_float_noise_go_in_name_order_everywhere():
  # Two scalings of one prompt: cosines 1.0 and 0.99999...9 (float noise), a tie by the tolerance.
  t = np.random.default_rng(0).normal(size=(4, 6))
  ranked = rank_sources(t, {"dup1": 2 * t, "dup0": 3 * t})
  assert [n for n, _ in ranked] == ["dup0", "dup1"]
  assert "its order (dup0, dup1) is by name" in retrieval.ranking_ties(ranked, 1).message()
  prompts = {n: np.full((2, 3), v, np.float32) for n, v in (("b", 1.0), ("a", 2.0), ("c", 3.0))}
  _, weights = weighted_average_init(prompts, {"b": 0.5, "a": 0.5, "c": 0.1}, top_k=1)
  assert weights == {"a": 1.0}  # by name, as sort_ranking orders: not by the mapping's order


def test_a_nan_score_in_the_weighted_average_is_an_error_naming_the_sources():
  prompts = {n: np.full((2, 3), v, np.float32) for n, v in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
  scores = dict(retrieval.sort_ranking({"a": 0.4, "b": float("nan"), "c": float("nan")}))
  with pytest.raises(ValueError, match=r"include no-number scores \(sources \['b', 'c'\]"):
    weighted_average_init(prompts, scores, top_k=3)
  _, weights = weighted_average_init(prompts, scores, top_k=1)
  assert weights == {"a": 1.0}


def test_from_files_weighted_refuses_negative_weights(tmp_path):
  from spot_jax import prompts as prompts_lib
  for i, v in enumerate((1.0, 2.0)):
    np.save(tmp_path / f"{i}.npy", np.full((2, 3), v, np.float32))
  paths = [str(tmp_path / "0.npy"), str(tmp_path / "1.npy")]
  with pytest.raises(ValueError, match=r"PROMPT_WEIGHTS must be numbers >= 0.*got \[2.0, -1.0\]"):
    prompts_lib.from_files_weighted(paths=paths, weights=[2.0, -1.0])(None, 2, 3)
  np.testing.assert_allclose(prompts_lib.from_files_weighted(paths=paths, weights=[3.0, 1.0])(None, 2, 3), 1.25)


def test_weighted_average_refuses_top_scores_that_give_no_weight():
  """All top-k scores <= 0 (no similar source, or zero-shot metrics of 0) leave no weights: the error
  says scores (not only similarities, which a zero-shot ranking has not) and names the other strategy."""
  prompts = {"a": np.ones((2, 3), np.float32), "b": np.zeros((2, 3), np.float32)}
  with pytest.raises(ValueError, match=r"the top-2 scores \[0\.0, -0\.5\] \(similarities, or zero-shot metrics "
                                       r"with --rank-by zero_shot\) are all <= 0.*--strategy best_of_top_k"):
    weighted_average_init(prompts, {"a": 0.0, "b": -0.5}, top_k=2)


def test_exclude_refuses_a_name_the_library_lacks_and_takes_a_string_as_one_name(tmp_path):
  """--exclude rte (for glue_rte) left the target ranked first against itself, and exclude="glue_rte"
  in Python excluded its letters."""
  lib = PromptLibrary(str(tmp_path / "lib"))
  for i, task in enumerate(("glue_rte", "glue_mnli", "boolq")):
    lib.add(task, _prompt(seed=i), "m")
  target = lib.get("glue_rte").prompt
  assert sorted(t for t, _ in rank_sources(target, lib, exclude="glue_rte", kind="prompt")) == ["boolq", "glue_mnli"]
  with pytest.warns(UserWarning, match=r"exclude names \['rte'\], which the library does not hold \(its tasks: "
                                      r"\['boolq', 'glue_mnli', 'glue_rte'\]\): nothing is left out for them"):
    assert rank_sources(target, lib, exclude=["rte"], kind="prompt")[0][0] == "glue_rte"
  with pytest.raises(ValueError, match=r"exclude names \['rte'\], .*: correct the name"):  # names typed
    retrieval.checked_exclude(["rte"], lib.tasks())


def test_a_library_entry_as_the_target_gives_its_task_embedding(tmp_path):
  """An entry directory holds prompt.npy: read as an export directory, its final prompt stood for the
  task embedding, without a word."""
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("a", _prompt(seed=0), "m", task_embedding=_prompt(seed=1), task_embedding_step=100)
  lib.add("b", _prompt(seed=2), "m")
  np.testing.assert_array_equal(retrieval.load_target_embedding(str(tmp_path / "lib" / "a")), _prompt(seed=1))
  assert retrieval.target_embedding_step(str(tmp_path / "lib" / "a")) == 100
  with pytest.warns(UserWarning, match="has no task_embedding export"):  # an entry without one: its prompt
    np.testing.assert_array_equal(retrieval.load_target_embedding(str(tmp_path / "lib" / "b")), _prompt(seed=2))
