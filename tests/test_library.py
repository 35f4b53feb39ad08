"""The prompt library: entries, refusals, atomicity, retrieval and the weighted-average init."""
import json
import os

import numpy as np
import pytest

from spot_jax import fileio
from spot_jax import prompt_io as pio
from spot_jax.spot import library as lib_mod
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import PromptLibrary, rank_sources, weighted_average_init


def _prompt(p=4, d=8, seed=0):
  return np.random.default_rng(seed).normal(size=(p, d)).astype(np.float32)


def test_add_list_get_remove(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  assert lib.list() == [] and lib.meta == {}
  a, b = _prompt(seed=1), _prompt(seed=2)
  lib.add("rte", a, "t5_tiny", steps=100, metrics={"accuracy": 0.6})
  np.save(tmp_path / "b.npy", b)
  rec = lib.add("boolq", str(tmp_path / "b.npy"), None)  # model id inherited from the library
  assert rec["model_id"] == "t5_tiny" and rec["source"] == str(tmp_path / "b.npy")
  assert [r["task"] for r in lib.list()] == ["boolq", "rte"]
  assert lib.meta["d_model"] == 8 and lib.meta["model_id"] == "t5_tiny"
  e = lib.get("rte")
  np.testing.assert_array_equal(e.prompt, a)
  assert e.task_embedding is None
  assert e.record["steps"] == 100 and e.record["metrics"] == {"accuracy": 0.6}
  assert e.record["prompt_length"] == 4 and e.record["d_model"] == 8 and e.record["created"] > 0
  assert sorted(os.listdir(tmp_path / "lib" / "rte")) == ["prompt.npy", "record.json"]
  lib.remove("rte")
  assert lib.tasks() == ["boolq"]
  with pytest.raises(KeyError, match="rte"):
    lib.get("rte")


def test_refuses_mismatched_d_model_and_model_id(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("rte", _prompt(d=8), "t5_tiny")
  with pytest.raises(ValueError, match=r"d_model 16.*d_model 8"):
    lib.add("cb", _prompt(d=16), "t5_tiny")
  with pytest.raises(ValueError, match=r"'t5_base'.*'t5_tiny'"):
    lib.add("cb", _prompt(d=8), "t5_base")
  with pytest.raises(FileExistsError, match="overwrite"):
    lib.add("rte", _prompt(seed=5), "t5_tiny")
  lib.add("rte", _prompt(seed=5), "t5_tiny", overwrite=True)
  np.testing.assert_array_equal(lib.get("rte").prompt, _prompt(seed=5))
  assert lib.tasks() == ["rte"]
  with pytest.raises(ValueError, match="model_id"):
    PromptLibrary(str(tmp_path / "empty")).add("x", _prompt(), None)
  with pytest.raises(ValueError, match="invalid task name"):
    lib.add("glue/rte", _prompt(), "t5_tiny")


def test_add_model_dir_brings_task_embedding_steps_metrics(tmp_path):
  model_dir = str(tmp_path / "run")
  final, best, emb = _prompt(seed=1), _prompt(seed=2), _prompt(seed=3)
  pio.export_numpy_checkpoint(emb, model_dir, 50, name="task_embedding")
  pio.export_numpy_checkpoint(final, model_dir, 1000)
  pio.export_numpy_checkpoint(best, model_dir, 800, name="best", metrics={"accuracy": 0.9})
  lib = PromptLibrary(str(tmp_path / "lib"))
  rec = lib.add("rte", model_dir, "t5_tiny")
  assert rec["steps"] == 800 and rec["metrics"] == {"accuracy": 0.9} and rec["has_task_embedding"]
  e = lib.get("rte")
  np.testing.assert_array_equal(e.prompt, best)
  np.testing.assert_array_equal(e.task_embedding, emb)
  rec = lib.add("rte", model_dir, "t5_tiny", overwrite=True, which="latest", steps=7)
  assert rec["steps"] == 7 and rec["metrics"] == {}
  np.testing.assert_array_equal(lib.get("rte").prompt, final)


def test_prompts_kinds(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("a", _prompt(seed=1), "m", task_embedding=_prompt(seed=11))
  lib.add("b", _prompt(seed=2), "m")
  assert set(lib.prompts()) == {"a", "b"}
  with pytest.warns(UserWarning, match="final prompt is used"):
    embs = lib.prompts("task_embedding")
  np.testing.assert_array_equal(embs["a"], _prompt(seed=11))
  np.testing.assert_array_equal(embs["b"], _prompt(seed=2))
  with pytest.warns(UserWarning, match="left out"):
    assert list(lib.prompts("task_embedding", missing="skip")) == ["a"]
  with pytest.raises(ValueError, match="no task embedding"):
    lib.prompts("task_embedding", missing="error")
  with pytest.raises(ValueError, match="task embedding shape"):
    lib.add("c", _prompt(d=8), "m", task_embedding=_prompt(d=4))


def test_failed_add_leaves_no_partial_entry(tmp_path, monkeypatch):
  lib = PromptLibrary(str(tmp_path / "lib"))
  real_open = fileio.open_file
  calls = []

  def failing_open(path, mode):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    return real_open(path, mode)

  monkeypatch.setattr(fileio, "open_file", failing_open)
  with pytest.raises(OSError, match="disk full"):
    lib.add("rte", _prompt(d=8), "t5_tiny", task_embedding=_prompt(seed=3))
  assert os.listdir(tmp_path / "lib") == []  # no entry, no temporary, library not claimed
  monkeypatch.setattr(fileio, "open_file", real_open)
  lib.add("rte", _prompt(d=16), "other")  # the failed add did not fix d_model
  old = lib.get("rte").prompt
  calls.clear()
  monkeypatch.setattr(fileio, "open_file", failing_open)
  with pytest.raises(OSError):
    lib.add("rte", _prompt(d=16, seed=9), "other", overwrite=True)
  monkeypatch.setattr(fileio, "open_file", real_open)
  np.testing.assert_array_equal(lib.get("rte").prompt, old)
  assert sorted(os.listdir(tmp_path / "lib")) == ["library.json", "rte"]


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
  ranked = lib_mod.sort_ranking({"d": 0.1, "c": 0.5 + 1e-9, "b": 0.5, "a": 0.9})
  assert [t for t, _ in ranked] == ["a", "c", "b", "d"]  # 1e-9 apart: still sorted by score
  # The top-2 cut falls inside the tie b ~ c: which one is chosen follows the names.
  ties = lib_mod.ranking_ties(ranked, top_k=2)
  assert ties.tied and not ties.all_tied
  assert ties.sources == ["c", "b"] and ties.chosen == ["c"] and ties.score == pytest.approx(0.5)
  assert ties.groups == [["c", "b"]] and ties.is_tied("b") and not ties.is_tied("a")
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    lib_mod.warn_ties(ranked, top_k=2)
  assert "top-2 selection is decided by a tie" in caplog.text and "c, b" in caplog.text
  assert "0.5" in caplog.text
  # A tie inside the top k (or below it) decides nothing: no warning, but still recorded.
  caplog.clear()
  for k in (1, 3, None):
    with caplog.at_level("WARNING", logger="spot_jax.spot"):
      ties = lib_mod.warn_ties(ranked, top_k=k)
    assert not ties.tied and not ties.all_tied and ties.message() is None and ties.groups == [["c", "b"]]
  assert caplog.text == ""
  assert lib_mod.ranking_ties([("a", 0.5), ("b", 0.5 + 1e-3)], 1).tied is False  # beyond the tolerance
  assert lib_mod.ranking_ties([("a", 0.9)], 1).message() is None


def test_all_tied_ranking_says_it_carries_no_information(tmp_path, caplog):
  """Identical source embeddings score alike under every measure, through the one ranking code."""
  target = _prompt(seed=1)
  lib = PromptLibrary(str(tmp_path / "lib"))
  for name in ("zeta", "alpha", "mid"):
    lib.add(name, _prompt(seed=2), "m")
  for measure in sim.PROMPT_SIMILARITIES:
    ranked = rank_sources(target, lib, measure, kind="prompt")
    assert [t for t, _ in ranked] == ["alpha", "mid", "zeta"], measure
    ties = lib_mod.ranking_ties(ranked, top_k=1)
    assert ties.all_tied and ties.tied and ties.sources == ["alpha", "mid", "zeta"], measure
    assert ties.chosen == ["alpha"] and ties.to_dict()["all_tied"] is True
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    lib_mod.warn_ties(ranked, top_k=5)  # all chosen, but the order still means nothing
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


def test_meta_survives_lost_library_json(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("rte", _prompt(d=8), "t5_tiny")
  os.remove(tmp_path / "lib" / lib_mod.LIBRARY_JSON)
  with pytest.raises(ValueError, match="d_model"):
    lib.add("cb", _prompt(d=16), "t5_tiny")
  assert json.load(open(tmp_path / "lib" / "rte" / "record.json"))["task"] == "rte"


def _crash_copy(lib_dir, task, name):
  """Simulates a partial write of fileio.atomic_write_dir: a copy of `task`'s entry under `name`."""
  import shutil
  shutil.copytree(os.path.join(lib_dir, task), os.path.join(lib_dir, name))


def test_crash_leftovers_are_not_entries_and_orphaned_backup_is_the_entry(tmp_path):
  import shutil
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  movie, nli, nli_new = _prompt(seed=1), _prompt(seed=2), _prompt(seed=3)
  lib.add("spot_bundled_movie", movie, "t5_tiny", task_embedding=_prompt(seed=4))
  lib.add("spot_bundled_nli", nli, "t5_tiny")
  # killed while writing a new entry: only its temporary directory exists
  _crash_copy(d, "spot_bundled_nli", "spot_bundled_nli.tmp-ed0e9335")
  # killed between the two renames of an overwrite: the old entry is aside, the new one still a .tmp
  os.rename(os.path.join(d, "spot_bundled_movie"), os.path.join(d, "spot_bundled_movie.old-1a2b3c4d"))
  _crash_copy(d, "spot_bundled_movie.old-1a2b3c4d", "spot_bundled_movie.tmp-1a2b3c4d")
  assert lib.tasks() == ["spot_bundled_movie", "spot_bundled_nli"]
  assert len(lib) == 2 and "spot_bundled_movie" in lib
  assert [r["task"] for r in lib.list()] == ["spot_bundled_movie", "spot_bundled_nli"]
  e = lib.get("spot_bundled_movie")
  np.testing.assert_array_equal(e.prompt, movie)
  assert e.task_embedding is not None
  with pytest.warns(UserWarning, match="spot_bundled_nli"):
    assert sorted(lib.prompts("task_embedding", missing="skip")) == ["spot_bundled_movie"]
  assert sorted(lib.prompts()) == ["spot_bundled_movie", "spot_bundled_nli"]
  with pytest.raises(KeyError):
    lib.get("spot_bundled_nli.tmp-ed0e9335")
  # reading renames nothing (a concurrent overwrite may be between its renames)
  assert not os.path.exists(os.path.join(d, "spot_bundled_movie"))
  # an add restores the backup first: without overwrite it is refused, with it the new prompt wins
  with pytest.warns(UserWarning, match="restored"), pytest.raises(FileExistsError):
    lib.add("spot_bundled_movie", nli_new, "t5_tiny")
  assert os.path.isdir(os.path.join(d, "spot_bundled_movie"))
  assert not os.path.exists(os.path.join(d, "spot_bundled_movie.old-1a2b3c4d"))
  lib.add("spot_bundled_movie", nli_new, "t5_tiny", overwrite=True)
  np.testing.assert_array_equal(lib.get("spot_bundled_movie").prompt, nli_new)
  assert lib.tasks() == ["spot_bundled_movie", "spot_bundled_nli"]
  # remove works on an orphaned backup too
  shutil.move(os.path.join(d, "spot_bundled_nli"), os.path.join(d, "spot_bundled_nli.old-99999999"))
  lib.remove("spot_bundled_nli")
  assert lib.tasks() == ["spot_bundled_movie"]
  # such names cannot be added as tasks
  with pytest.raises(ValueError, match="invalid task name"):
    lib.add("x.tmp-ed0e9335", _prompt(), "t5_tiny")


def test_orphaned_backup_ignored_when_entry_exists(tmp_path):
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  new = _prompt(seed=7)
  lib.add("rte", _prompt(seed=6), "t5_tiny")
  _crash_copy(d, "rte", "rte.old-deadbeef")  # a stale backup next to a complete entry
  lib.add("rte", new, "t5_tiny", overwrite=True)
  assert lib.tasks() == ["rte"]
  np.testing.assert_array_equal(lib.get("rte").prompt, new)


def test_rank_sources_takes_a_target_model_dirs_task_embedding_export(tmp_path):
  # SPoT compares the target's early-checkpoint prompt (its task embedding) with the sources' task
  # embeddings; a MODEL_DIR's best export is a different, fully trained prompt.
  run = str(tmp_path / "cb_short")
  early = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # mean (.5, .5)
  pio.export_numpy_checkpoint(early, run, 10, name="task_embedding")
  pio.export_numpy_checkpoint(-early, run, 100, name="best")
  sources = {"same": early, "opposite": -early}
  # cos((.5,.5), (.5,.5)) = 1; cos((.5,.5), (-.5,-.5)) = -1
  assert rank_sources(run, sources) == [("same", pytest.approx(1.0)), ("opposite", pytest.approx(-1.0))]
  # without a task_embedding export the best export stands in, with a warning
  run2 = str(tmp_path / "no_emb")
  pio.export_numpy_checkpoint(-early, run2, 100, name="best")
  with pytest.warns(UserWarning, match="no task_embedding export"):
    ranked = rank_sources(run2, sources)
  assert [t for t, _ in ranked] == ["opposite", "same"]


def test_nan_scores_sort_last_and_nan_source_prompts_are_refused():
  # a NaN score compares false with everything: it used to land anywhere, depending on input order
  for scores in ({"a": float("nan"), "b": 0.5, "c": 0.7}, {"c": 0.7, "a": float("nan"), "b": 0.5},
                 {"b": 0.5, "c": 0.7, "a": float("nan")}):
    ranked = lib_mod.sort_ranking(scores)
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
    pio.export_numpy_checkpoint(_prompt(seed=step), run, step, name="task_embedding")
    pio.export_numpy_checkpoint(_prompt(seed=step + 1), run, 1000)
    assert lib.add(task, run, "t5_tiny")["task_embedding_step"] == step  # read from the export
  # An array gives no step unless told one; a prompt file without an export neither.
  assert lib.add("boolq", _prompt(seed=7), None, task_embedding=_prompt(seed=8))["task_embedding_step"] is None
  assert lib.add("cb", _prompt(seed=9), None, task_embedding=_prompt(seed=10),
                 task_embedding_step=50)["task_embedding_step"] == 50
  target = str(tmp_path / "target")
  pio.export_numpy_checkpoint(_prompt(seed=11), target, 50, name="task_embedding")
  assert lib_mod.target_embedding_step(target) == 50
  with pytest.warns(UserWarning, match=r"from step 50.*mnli \(step 200\)") as caught:
    ranked = rank_sources(target, lib)
  assert len(ranked) == 4
  assert not any(t in str(caught[0].message) for t in ("rte", "boolq", "cb"))  # same step, or unknown
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rank_sources(target, lib, exclude=["mnli"])  # every known step matches: no warning
    rank_sources(_prompt(seed=11), lib)  # an array target: its step is unknown
    rank_sources(target, lib, kind="prompt")  # final prompts are not task embeddings
  with pytest.warns(UserWarning, match="from step 200"):
    assert lib_mod.warn_embedding_steps(lib, 200, lib.tasks()) == {"rte": 50, "cb": 50}
