"""The SPoT targeted pipeline on a tiny frozen model and the bundled tasks: sources, retrieval, the
three transfer strategies, and `spot-jax spot` end to end."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import os
import re

import gin
import jax
import numpy as np
import pytest
import seqio

from spot_jax import prompt_io
from spot_jax.config import size_config
from spot_jax.model import init_params
from spot_jax.spot import pipeline, pipeline_cli, run_record
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import PromptLibrary

SOURCES = ("spot_bundled_movie", "spot_bundled_topic", "spot_bundled_number")
TARGET = "spot_bundled_product"
LENGTHS = {"inputs": 64, "targets": 4}
CFG = size_config("tiny", vocab_size=1152, d_model=32, num_heads=2, head_dim=16, d_ff=64)
P = 4
RUN = pipeline.RunConfig(task_feature_lengths=LENGTHS, batch_size=8, prompt_length=P, log_period=5,
                         eval_batch_size=16, eval_num_examples=32, enable_dropout=False)
SOURCE_STEPS = 10


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Every run here compiles the same step: the persistent cache turns ~8 s compiles into ~1 s."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  path = pipeline.enable_compilation_cache(str(tmp_path_factory.mktemp("jax_cache")), 0)
  yield path
  jax.config.update("jax_compilation_cache_dir", before[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
  cc.reset_cache()


@pytest.fixture(scope="module")
def frozen():
  return CFG, init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def library(frozen, tmp_path_factory):
  root = tmp_path_factory.mktemp("spot")
  records = pipeline.train_source_prompts(frozen, SOURCES, str(root / "lib"), str(root / "sources"),
                                          SOURCE_STEPS, RUN)
  return PromptLibrary(str(root / "lib")), records, root


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


def test_sources_enter_the_library_with_embedding_export_and_metrics(library):
  lib, records, root = library
  assert lib.tasks() == sorted(SOURCES)
  assert lib.model_id == pipeline.default_model_id(None, CFG, 0)
  for task in SOURCES:
    rec, entry = records[task], lib.get(task)
    assert rec["steps"] == SOURCE_STEPS and 0 <= rec["metrics"]["accuracy"] <= 100
    run_dir = str(root / "sources" / task)
    np.testing.assert_array_equal(entry.prompt, prompt_io.load_prompt(
        prompt_io.checkpoint_export_dir(run_dir, SOURCE_STEPS)))
    emb = prompt_io.load_prompt(prompt_io.task_embedding_export_dir(run_dir))
    assert prompt_io.read_export_info(prompt_io.task_embedding_export_dir(run_dir))["step"] == 1
    assert rec["task_embedding_step"] == 1  # recorded, so retrieval can compare it with the target's
    np.testing.assert_array_equal(entry.task_embedding, emb)
    assert np.abs(entry.prompt - emb).max() > 1e-4  # the early prompt is not the final one


def test_weighted_average_init_is_the_normalized_sum_of_the_top_k(library):
  lib = library[0]
  ranked = [("spot_bundled_number", 0.9), ("spot_bundled_movie", 0.6),
            ("spot_bundled_topic", 0.2)]
  init = pipeline.weighted_average(lib, ranked, top_k=2)
  manual = (0.9 / 1.5) * lib.get("spot_bundled_number").prompt \
      + (0.6 / 1.5) * lib.get("spot_bundled_movie").prompt
  np.testing.assert_allclose(init.prompt, manual, rtol=1e-6, atol=1e-7)
  assert [s["task"] for s in init.sources] == ["spot_bundled_number", "spot_bundled_movie"]
  np.testing.assert_allclose([s["weight"] for s in init.sources], [0.6, 0.4])


def test_retrieval_ranks_a_planted_related_prompt_first(tmp_path):
  rng = np.random.default_rng(3)
  lib = PromptLibrary(str(tmp_path / "lib"))
  target = rng.uniform(-0.5, 0.5, (P, 32)).astype(np.float32) + 0.3
  for i in range(5):
    lib.add(f"unrelated_{i}", rng.uniform(-0.5, 0.5, (P, 32)).astype(np.float32), "m",
            task_embedding=rng.uniform(-0.5, 0.5, (P, 32)).astype(np.float32))
  lib.add("related", rng.uniform(-0.5, 0.5, (P, 32)).astype(np.float32), "m",
          task_embedding=target + rng.normal(0, 0.05, target.shape).astype(np.float32))
  for measure in ("cos_avg_tokens", "c_concat", "e_concat"):
    ranked = pipeline.rank(lib, target, measure)
    assert ranked[0][0] == "related", (measure, ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
  # The target itself never ranks as its own source.
  lib.add("the_target", target, "m", task_embedding=target)
  assert pipeline.rank(lib, target, exclude=["the_target"])[0][0] == "related"


def test_multitask_mixture_trains_on_the_top_k_and_the_target_examples_proportionally(frozen, library,
                                                                                     tmp_path):
  """SPoT's top-k multi-task mixture: the k sources and the target, T5's examples-proportional rates."""
  lib = library[0]
  ranked = [("spot_bundled_topic", 0.8), ("spot_bundled_movie", 0.7),
            ("spot_bundled_number", 0.1)]
  init = pipeline.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=6, top_k=2, run=RUN)
  name = init.extra["mixture"]
  mixture = seqio.get_mixture_or_task(name)
  assert isinstance(mixture, seqio.Mixture)
  assert sorted(t.name for t in mixture.tasks) == sorted(["spot_bundled_movie", "spot_bundled_topic", TARGET])
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {  # min(train examples, 2^19)
      t.name: float(t.num_input_examples("train")) for t in mixture.tasks}
  assert init.extra["mixture_tasks"] == ["spot_bundled_topic", "spot_bundled_movie", TARGET]
  sources_only = pipeline.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path / "no_target"), steps=1,
                                            top_k=2, run=RUN, include_target=False, rate=1.0)
  assert sources_only.extra["mixture_tasks"] == ["spot_bundled_topic", "spot_bundled_movie"]
  run_dir = tmp_path / name
  np.testing.assert_array_equal(init.prompt, prompt_io.load_prompt(
      prompt_io.checkpoint_export_dir(str(run_dir), 6)))
  records = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
  assert any("train/loss" in r for r in records)
  assert init.prompt.shape == (P, 32)


def test_a_source_trained_on_a_mixture_enters_the_mixture_with_its_tasks_share():
  """A library source may be a seqio mixture; seqio takes only a number as a sub-mixture's rate (a rate
  function failed mid-pipeline): it gets the sum of its tasks' examples-proportional rates."""
  sub = pipeline.register_mixture("test_spot_sub_mix", ["spot_bundled_movie", "spot_bundled_topic"], 1.0)
  name = pipeline.register_mixture("test_spot_with_sub", [sub, TARGET], pipeline.examples_proportional)
  mixture = seqio.get_mixture_or_task(name)
  examples = {t.name: float(t.num_input_examples("train")) for t in mixture.tasks}
  assert sorted(examples) == sorted(["spot_bundled_movie", "spot_bundled_topic", TARGET])
  # Each leaf's share of the whole: the target's rate over the sub-mixture's (the sum of its tasks').
  total = mixture.total_rate
  assert mixture.get_rate(seqio.get_mixture_or_task(TARGET)) == examples[TARGET]
  assert total == pytest.approx(sum(examples.values()))


def test_best_of_top_k_keeps_the_source_with_the_best_short_run(frozen, library, tmp_path):
  lib = library[0]
  ranked = [("spot_bundled_movie", 0.9), ("spot_bundled_number", 0.5),
            ("spot_bundled_topic", 0.1)]
  init = pipeline.best_of_top_k(frozen, lib, ranked, TARGET, str(tmp_path), steps=4, top_k=2, run=RUN)
  assert [s["task"] for s in init.sources] == ["spot_bundled_movie", "spot_bundled_number"]
  best = max(init.sources, key=lambda s: s["selection_score"])  # first of equals = better ranked
  assert init.extra["chosen"] == best["task"]
  np.testing.assert_array_equal(init.prompt, lib.get(best["task"]).prompt)
  for s in init.sources:  # each recorded score is the validation metric of that short run's prompt
    run_dir = str(tmp_path / f"from_{s['task']}")
    short = prompt_io.load_prompt(prompt_io.checkpoint_export_dir(run_dir, 4))
    assert pipeline.evaluate_prompt(frozen, TARGET, short, RUN) == s["metrics"]
    assert s["selection_score"] == s["metrics"]["accuracy"]


def test_best_of_top_k_never_picks_nan_and_says_a_tie(frozen, library, tmp_path, monkeypatch, caplog):
  lib = library[0]
  scores = {"spot_bundled_movie": float("nan"), "spot_bundled_number": 0.5, "spot_bundled_topic": 0.5}
  monkeypatch.setattr(pipeline, "_train_from", lambda *a, **k: np.zeros((2, 2), np.float32))
  runs = iter(scores.values())
  monkeypatch.setattr(pipeline, "evaluate_prompt", lambda *a, **k: {"accuracy": next(runs)})
  ranked = [(t, 1.0 - i / 10) for i, t in enumerate(scores)]
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    init = pipeline.best_of_top_k(frozen, lib, ranked, TARGET, str(tmp_path), steps=4, top_k=3, run=RUN)
  # The NaN run came first: a plain `>` never replaces it.
  assert init.extra["chosen"] == "spot_bundled_number"
  assert "tied with spot_bundled_topic, the better-ranked is kept" in init.description
  assert "ties with spot_bundled_topic" in caplog.text
  runs = iter([float("nan")] * 3)
  init = pipeline.best_of_top_k(frozen, lib, ranked, TARGET, str(tmp_path), steps=4, top_k=3, run=RUN)
  assert init.extra["chosen"] == "spot_bundled_movie" and "no source scored a number" in init.description


def test_best_of_top_k_at_the_full_budget_keeps_the_winning_run_as_the_transfer(frozen, library, tmp_path):
  """SPoT's best of top-k: k target runs of the whole budget, the best kept, none trained twice."""
  lib = library[0]
  ranked = pipeline.rank(lib, lib.get("spot_bundled_movie").task_embedding)
  result = pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "best_of_top_k", top_k=2, steps=3, run=RUN,
                               target_embedding=lib.get("spot_bundled_movie").task_embedding)
  assert [c["task"] for c in result.chosen] == [t for t, _ in ranked[:2]]
  winner = result.extra["chosen"]
  assert result.extra["selection_steps"] == 3 and not (tmp_path / "transfer").exists()
  assert result.extra["transfer_run_dir"] == str(tmp_path / "selection" / f"from_{winner}")
  np.testing.assert_array_equal(result.transfer_prompt, prompt_io.load_prompt(
      prompt_io.checkpoint_export_dir(result.extra["transfer_run_dir"], 3)))
  best = [c for c in result.chosen if c["task"] == winner][0]
  assert result.transfer_metrics == best["metrics"]
  assert best["selection_score"] == max(c["selection_score"] for c in result.chosen)


def test_best_of_every_source_gives_the_transfer_row_that_transferability_judges(frozen, library, tmp_path):
  """best_of_top_k over every source measures the target's transfer row; spot.transferability reads it
  from result.json and re-ranks it from the task embedding the run trained."""
  from spot_jax.spot import transferability
  lib = library[0]
  result = pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "best_of_top_k", top_k=len(SOURCES),
                               steps=3, run=RUN, task_embedding_steps=1, measure="cos_avg_tokens")
  (judged,) = transferability.evaluate_runs([str(tmp_path)], ks=(1, 3))["as run"]
  assert [s[0] for s in judged.sources] == [t for t, _ in result.ranked]
  assert {t: x for t, _, x in judged.sources} == {c["task"]: c["selection_score"] for c in result.chosen}
  assert judged.best_transfer == max(c["selection_score"] for c in result.chosen)
  assert judged.steps == 3
  # Every source was measured, so the top 3 hold the best one: no regret. A tiny random model may score
  # every source alike (a flat row), and then there is no best source and regret is undefined.
  if len({c["selection_score"] for c in result.chosen}) == 1:
    assert judged.best_rank is None and np.isnan(judged.regret[3])
  else:
    assert judged.best_rank <= 3 and (judged.regret[3] == 0.0 or judged.best_transfer <= 0)
  # Re-ranked by the measure the run used, from its task_embedding/ run: the same ranking.
  (again,) = transferability.evaluate_runs([str(tmp_path)], library=lib, measures=["cos_avg_tokens"])[
      "cos_avg_tokens"]
  assert [(t, pytest.approx(s)) for t, s, _ in again.sources] == [(t, s) for t, s in result.ranked]


def test_run_target_zero_shot_ranking_without_task_embedding(frozen, library, tmp_path, caplog):
  lib = library[0]
  # best_of_top_k: a random tiny model decodes no label, so every zero-shot score is 0, which
  # weighted_average (weights ∝ similarity) refuses.
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    result = pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "best_of_top_k", top_k=1, steps=4,
                                 run=RUN, rank_by="zero_shot")
  assert not (tmp_path / "task_embedding").exists()
  assert [t for t, _ in result.ranked] and result.chosen[0]["task"] == result.ranked[0][0]
  np.testing.assert_allclose(np.load(tmp_path / "init.npy"), lib.get(result.ranked[0][0]).prompt)
  assert result.baseline_metrics is None and "accuracy" in result.transfer_metrics
  # ... and so the "ranking" is name order: the log, the table and result.json all say so.
  assert {s for _, s in result.ranked} == {0.0}
  assert "all 3 sources score 0" in caplog.text and "carries no information" in caplog.text
  assert ", ".join(sorted(SOURCES)) in caplog.text
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["ties"]["all_tied"] and saved["ties"]["tied"] and saved["ties"]["score"] == 0.0
  assert saved["ties"]["sources"] == sorted(SOURCES) and saved["ties"]["chosen"] == [sorted(SOURCES)[0]]
  assert all(r["tied"] for r in saved["ranked"])
  text = result.format()
  assert text.count("(tied)") == 3 and "tie: all 3 sources score 0" in text


def _gin_flags(model_dir, extra=()):
  return ["--gin_file=models/t5_1_1.gin", "--gin_file=prompts/random_uniform.gin",
          "--gin_file=models/sizes/tiny.gin", *extra,
          "--gin.spot_jax.model_config.vocab_size=1152", "--gin.spot_jax.model_config.d_model=32",
          "--gin.spot_jax.model_config.num_heads=2", "--gin.spot_jax.model_config.head_dim=16",
          "--gin.spot_jax.model_config.d_ff=64", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8", f"--gin.PROMPT_LENGTH={P}",
          "--gin.EVAL_NUM_EXAMPLES=32", "--gin.spot_jax.train.train.log_period=2"]


def test_spot_cli_runs_the_whole_pipeline_with_a_baseline(library, tmp_path, capsys, clean_gin):
  lib = library[0]
  out = tmp_path / "target"
  # The sources' task embeddings are from step 1, the target's from step 3: retrieval says so.
  with pytest.warns(UserWarning, match=r"from step 3, .*spot_bundled_movie \(step 1\)"):
    rc = pipeline_cli.main(["--target", TARGET, "--library", lib.path, "--strategy", "weighted_average",
                            "--top-k", "2", "--baseline",
                            *_gin_flags(out, ["--gin_file=runs/spot_target.gin"]), "--gin.TRAIN_STEPS=6",
                            "--gin.TASK_EMBEDDING_STEP=3"])
  text = capsys.readouterr().out
  assert rc == 0, text
  assert "init: weighted average of" in text and "baseline (6 steps" in text, text
  result = json.loads((out / "result.json").read_text())
  assert result["strategy"] == "weighted_average" and len(result["chosen"]) == 2
  assert sorted(t["task"] for t in result["ranked"]) == sorted(SOURCES)
  assert "accuracy" in result["transfer_metrics"] and "accuracy" in result["baseline_metrics"]
  # The ranking is the similarity of the 3-step target run's prompt to each source embedding.
  emb = prompt_io.load_prompt(prompt_io.task_embedding_export_dir(str(out / "task_embedding")))
  assert prompt_io.read_export_info(prompt_io.task_embedding_export_dir(str(out / "task_embedding")))[
      "step"] == 3
  expected = sorted(sim.similarities_to(emb, lib.prompts("task_embedding")).items(),
                    key=lambda kv: (-kv[1], kv[0]))
  assert [(r["task"], pytest.approx(r["score"])) for r in result["ranked"]] == expected
  weights = {c["task"]: c["weight"] for c in result["chosen"]}
  manual = sum(w * lib.get(t).prompt for t, w in weights.items())
  np.testing.assert_allclose(np.load(out / "init.npy"), manual, rtol=1e-5, atol=1e-6)
  for run in ("transfer", "baseline"):
    assert os.path.exists(prompt_io.checkpoint_export_dir(str(out / run), 6))
  # A mistyped target: one error line (no gin "In call to configurable"), and nothing created.
  rc = pipeline_cli.main(["--target", "spot_bundled_prodcut", "--library", lib.path,
                          *_gin_flags(tmp_path / "typo", ["--gin_file=runs/spot_target.gin"])])
  err = capsys.readouterr().err
  assert rc == 1 and "unknown task or mixture 'spot_bundled_prodcut'" in err and "In call to" not in err
  assert not os.path.exists(tmp_path / "typo")


def test_spot_source_cli_adds_one_prompt_to_a_library(tmp_path, capsys, clean_gin):
  rc = pipeline_cli.main(["source", *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
                      "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4",
                      f"--gin.LIBRARY_DIR='{tmp_path / 'lib'}'"])
  text = capsys.readouterr().out
  assert rc == 0, text
  rec = PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")
  assert rec["steps"] == 4 and rec["has_task_embedding"] and "accuracy" in rec["metrics"]
  assert rec["model_id"] == pipeline.default_model_id(None, CFG.replace(dropout_rate=0.1), 0)
  assert "added spot_bundled_nli" in text


def test_cli_errors_name_the_problem(tmp_path, capsys, clean_gin):
  rc = pipeline_cli.main(["--target", TARGET, "--library", str(tmp_path / "mistyped"),
                      *_gin_flags(tmp_path / "t", ["--gin_file=runs/spot_target.gin"])])
  assert rc == 1
  assert f"library {tmp_path / 'mistyped'} does not exist: check the --library path" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  rc = pipeline_cli.main(["--target", TARGET, "--library", str(tmp_path / "empty"),
                      *_gin_flags(tmp_path / "t", ["--gin_file=runs/spot_target.gin"])])
  assert rc == 1
  assert "has no prompts" in capsys.readouterr().err


def test_spot_cli_refuses_a_library_of_another_frozen_model(library, tmp_path, capsys, clean_gin,
                                                             monkeypatch):
  lib = library[0]
  assert lib.model_id == pipeline.default_model_id(None, CFG, 0)
  out = tmp_path / "target"
  argv = ["--target", TARGET, "--library", lib.path,
          *_gin_flags(out, ["--gin_file=runs/spot_target.gin"]), "--gin.MODEL_ID='t5_other_model'"]
  rc = pipeline_cli.main(argv)
  err = capsys.readouterr().err
  assert rc == 1
  assert err.startswith("error: ") and "'t5_other_model'" in err and repr(lib.model_id) in err
  assert "--allow-other-model" in err and "MODEL_ID" in err
  assert not os.path.exists(out / "task_embedding")  # refused before any training
  gin.clear_config()
  calls = []

  class _Result:
    def format(self):
      return "stub result"

  monkeypatch.setattr(pipeline_cli, "run_target", lambda *a, **k: calls.append((a, k)) or _Result())
  with pytest.warns(UserWarning, match="t5_other_model.*--allow-other-model"):
    rc = pipeline_cli.main(argv + ["--allow-other-model"])
  assert rc == 0 and len(calls) == 1 and "stub result" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["source", "--help"], ["--help"]])
def test_spot_help_shows_the_gin_flags(argv, capsys):
  with pytest.raises(SystemExit) as e:
    pipeline_cli.main(argv)
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "--gin.NAME=VALUE" in text and "runs/prompt_train.gin: MODEL_DIR, MIXTURE_OR_TASK_NAME" in text


def test_run_target_refuses_to_resume_a_run_started_from_another_init(frozen, library, tmp_path):
  lib = library[0]
  emb = lib.get(SOURCES[0]).task_embedding
  kw = dict(run=RUN, target_embedding=emb, baseline=True)
  first = pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=1, steps=4, **kw)
  init = np.load(tmp_path / "init.npy")
  # The identical command reuses the finished runs; with more steps it continues them.
  again = pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=1, steps=4, **kw)
  np.testing.assert_array_equal(again.transfer_prompt, first.transfer_prompt)
  pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=1, steps=6, **kw)
  assert os.path.exists(prompt_io.checkpoint_export_dir(str(tmp_path / "transfer"), 6))
  # Another top-k is another init: the finished transfer run must not be reported under it. The
  # finished run's settings refuse it; without result.json (a killed run), the transfer run's record.
  with pytest.raises(ValueError, match=r"other settings \(top_k 1 \(now 2\)\).*new MODEL_DIR"):
    pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=2, steps=6, **kw)
  os.rename(tmp_path / "result.json", tmp_path / "result.kept")
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=2, steps=6, **kw)
  assert str(tmp_path / "transfer") in str(e.value)
  os.rename(tmp_path / "result.kept", tmp_path / "result.json")
  np.testing.assert_array_equal(np.load(tmp_path / "init.npy"), init)  # nothing was overwritten
  # Another base init (seed) changes only the baseline run: refused as well.
  with pytest.raises(ValueError, match="baseline"):
    pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=1, steps=6,
                        run=pipeline.RunConfig(**{**vars(RUN), "seed": 1}), target_embedding=emb,
                        baseline=True)


def test_a_torn_result_json_is_an_error_naming_it_and_the_fix(frozen, tmp_path):
  """result.json cut short (a copy interrupted, a full disk): the error names the file and says to
  delete it (the runs resume), not just the decoder's "Expecting ':' delimiter: line 3 column 13"."""
  lib, src = _one_source_library(tmp_path / "lib")
  tmp_path = tmp_path / "out"
  tmp_path.mkdir()
  path = tmp_path / "result.json"
  path.write_text('{\n  "target": "x",\n  "strategy"')
  fix = (rf"{re.escape(str(path))} is not a readable spot result \(truncated or edited by hand\?\): "
         rf"Expecting ':' delimiter.* Delete it and rerun the same command: the runs under "
         rf"{re.escape(str(tmp_path))} resume from their checkpoints")
  with pytest.raises(ValueError, match=fix):
    pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "weighted_average", top_k=1, steps=2, run=RUN,
                        target_embedding=src)
  assert sorted(os.listdir(tmp_path)) == ["result.json"]  # refused before anything was written
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"holds a JSON list, not an object\. Delete it"):
    run_record.check_target_settings(str(tmp_path), {"target": TARGET})


def test_train_only_macros_are_refused_by_the_pipeline(tmp_path):
  """runs/prompt_train.gin reads EVAL_PERIOD and EVAL_SPLIT, but the pipeline evaluates each run once on
  validation: they were accepted and ignored (the library got the last prompt, scored on validation)."""
  for macro, value in (("EVAL_PERIOD", "10"), ("EVAL_SPLIT", "'test'")):
    for command in (["source"], ["--target", TARGET, "--library", str(tmp_path / "lib")]):
      with pytest.raises(SystemExit, match=rf"error: --gin.{macro} has no effect here: .*spot-jax train"):
        pipeline_cli.main([*command, *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
                           f"--gin.{macro}={value}"])


def test_spot_source_cli_checkpoints_every_save_period(tmp_path, capsys, clean_gin):
  run_dir = tmp_path / "run"
  rc = pipeline_cli.main(["source", *_gin_flags(run_dir, ["--gin_file=runs/spot_source.gin"]),
                          "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4",
                          "--gin.SAVE_PERIOD=2"])
  assert rc == 0, capsys.readouterr()
  # A run killed after step 2 resumes from that checkpoint instead of restarting from step 0.
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["2", "4"]
  assert os.path.exists(prompt_io.checkpoint_export_dir(str(run_dir), 2))
  assert pipeline.RunConfig().save_period == 1000


def test_spot_source_cli_rerun_is_a_no_op_and_overwrite_refuses_a_finished_run(tmp_path, capsys,
                                                                                 clean_gin):
  argv = ["source", *_gin_flags(tmp_path / "run", ["--gin_file=runs/spot_source.gin"]),
          "--gin.MIXTURE_OR_TASK_NAME='spot_bundled_nli'", "--gin.TRAIN_STEPS=4",
          f"--gin.LIBRARY_DIR='{tmp_path / 'lib'}'"]
  assert pipeline_cli.main(argv) == 0
  created = PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")["created"]
  capsys.readouterr()
  gin.clear_config()
  rc = pipeline_cli.main(argv)  # the same finished command: nothing to do, success
  out = capsys.readouterr().out
  assert rc == 0 and "already in" in out, out
  assert PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")["created"] == created
  gin.clear_config()
  rc = pipeline_cli.main(argv + ["--gin.EVAL_NUM_EXAMPLES=16", "--overwrite"])
  err = capsys.readouterr().err
  assert rc == 1 and "new MODEL_DIR" in err and str(tmp_path / "run") in err, err
  assert PromptLibrary(str(tmp_path / "lib")).record("spot_bundled_nli")["created"] == created


def _train_records(run_dir):
  return [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if "train/loss" in l]


def test_task_embedding_run_refuses_another_base_init_or_target(frozen, tmp_path):
  out = str(tmp_path / "task_embedding")
  first = pipeline.task_embedding(frozen, TARGET, out, steps=2, run=RUN)
  assert (tmp_path / "task_embedding" / run_record.INIT_SHA256_FILE).exists()
  trained = _train_records(out)
  # The identical call reuses the finished run: same embedding, no step trained again.
  np.testing.assert_array_equal(pipeline.task_embedding(frozen, TARGET, out, steps=2, run=RUN), first)
  assert _train_records(out) == trained
  # Another base init (seed, so another random prompt) or another target: refused, naming the run.
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    pipeline.task_embedding(frozen, TARGET, out, steps=2, run=pipeline.RunConfig(**{**vars(RUN), "seed": 1}))
  assert out in str(e.value) and "the base init" in str(e.value)
  with pytest.raises(ValueError, match="new MODEL_DIR"):
    pipeline.task_embedding(frozen, SOURCES[0], out, steps=2, run=RUN)
  assert _train_records(out) == trained


def test_mixture_run_refuses_another_mixture_or_init(frozen, library, tmp_path):
  lib = library[0]
  ranked = [("spot_bundled_topic", 0.8), ("spot_bundled_movie", 0.7), ("spot_bundled_number", 0.1)]
  first = pipeline.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN)
  run_dir = str(tmp_path / first.extra["mixture"])
  assert os.path.exists(os.path.join(run_dir, run_record.INIT_SHA256_FILE))
  trained = _train_records(run_dir)
  again = pipeline.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN)
  np.testing.assert_array_equal(again.prompt, first.prompt)  # the identical call reuses it
  assert _train_records(run_dir) == trained
  # Another top-2 (another library or ranking) has the same mixture name but other tasks: refused.
  other = [("spot_bundled_number", 0.9)] + ranked[:2]
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    pipeline.multitask_mixture(frozen, lib, other, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN)
  assert run_dir in str(e.value) and "spot_bundled_number" in str(e.value)
  with pytest.raises(ValueError, match="new MODEL_DIR"):  # another rate
    pipeline.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN,
                               rate=2.0)
  with pytest.raises(ValueError, match="new MODEL_DIR"):  # another base init
    pipeline.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2,
                               run=pipeline.RunConfig(**{**vars(RUN), "seed": 1}))
  assert _train_records(run_dir) == trained


def _one_source_library(path):
  """A library of one random source whose task embedding is itself: a top-1 weighted average and a
  top-1 best-of-top-k both start the transfer run from exactly that prompt, whatever the target."""
  lib = PromptLibrary(str(path))
  src = np.random.default_rng(5).uniform(-0.5, 0.5, (P, 32)).astype(np.float32)
  lib.add("src", src, "m", task_embedding=src)
  return lib, src


def test_transfer_baseline_and_selection_runs_refuse_another_target_with_the_same_init(frozen, tmp_path):
  lib, src = _one_source_library(tmp_path / "lib")
  out = tmp_path / "out"
  kw = dict(top_k=1, steps=2, selection_steps=1, run=RUN, target_embedding=src, baseline=True)
  first = pipeline.run_target(frozen, lib, TARGET, str(out), "best_of_top_k", **kw)
  runs = [str(out / "selection" / "from_src"), str(out / "transfer"), str(out / "baseline")]
  trained = [_train_records(d) for d in runs]
  # The identical command reuses all three finished runs: same prompts, no step trained again.
  again = pipeline.run_target(frozen, lib, TARGET, str(out), "best_of_top_k", **kw)
  np.testing.assert_array_equal(again.transfer_prompt, first.transfer_prompt)
  np.testing.assert_array_equal(again.baseline_prompt, first.baseline_prompt)
  assert [_train_records(d) for d in runs] == trained
  # Another target or strategy: the finished run's settings (result.json) refuse it before anything.
  other = SOURCES[0]
  for strategy, target in (("best_of_top_k", other), ("weighted_average", TARGET)):
    with pytest.raises(ValueError, match=r"holds a finished spot run with other settings") as e:
      pipeline.run_target(frozen, lib, target, str(out), strategy, **kw)
    assert (f"target '{TARGET}' (now '{other}')" if target == other else
            "strategy 'best_of_top_k' (now 'weighted_average')") in str(e.value)
  # Without result.json (a killed run), every init is the same (the source prompt, the base init), and
  # each run's own record refuses: the runs are not theirs.
  os.rename(out / "result.json", out / "result.json.kept")
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    pipeline.run_target(frozen, lib, other, str(out), "best_of_top_k", **kw)
  assert runs[0] in str(e.value) and other in str(e.value)
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:  # the same init, without selection runs
    pipeline.run_target(frozen, lib, other, str(out), "weighted_average", **kw)
  assert runs[1] in str(e.value) and other in str(e.value)
  os.rename(runs[1], runs[1] + "_kept")  # the baseline run alone is refused as well
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    pipeline.run_target(frozen, lib, other, str(out), "weighted_average", **kw)
  assert runs[2] in str(e.value) and other in str(e.value)
  assert not os.path.exists(runs[1])  # refused before anything was trained
  os.rename(runs[1] + "_kept", runs[1])
  assert [_train_records(d) for d in runs] == trained
  np.testing.assert_array_equal(np.load(out / "init.npy"), src)
  assert not os.path.exists(out / "result.json")  # no refused run wrote one


def test_runs_recorded_before_target_checks_are_resumed_with_a_warning(frozen, tmp_path, caplog):
  lib, src = _one_source_library(tmp_path / "lib")
  out = tmp_path / "out"
  kw = dict(top_k=1, steps=2, selection_steps=1, run=RUN, target_embedding=src, baseline=True)
  first = pipeline.run_target(frozen, lib, TARGET, str(out), "best_of_top_k", **kw)
  runs = {str(out / "selection" / "from_src"): src, str(out / "transfer"): src,
          str(out / "baseline"): pipeline.base_init(frozen, RUN, P)}
  trained = [_train_records(d) for d in runs]
  for run_dir, init in runs.items():  # what these runs recorded before: the sha256 of the init alone
    with open(os.path.join(run_dir, run_record.INIT_SHA256_FILE), "w") as f:
      f.write(run_record.init_sha256(init))
  caplog.clear()
  with caplog.at_level("WARNING", logger="spot_jax.spot"):  # which target a legacy record ran is unknown
    result = pipeline.run_target(frozen, lib, TARGET, str(out), "best_of_top_k", **kw)
  np.testing.assert_array_equal(result.transfer_prompt, first.transfer_prompt)
  np.testing.assert_array_equal(result.baseline_prompt, first.baseline_prompt)
  warned = [r.getMessage() for r in caplog.records if "predates target checking" in r.getMessage()]
  assert len(warned) == len(runs), warned  # once per run
  for run_dir in runs:
    assert sum(run_dir + " " in m and f"trained on {TARGET} cannot be verified" in m
               for m in warned) == 1, (run_dir, warned)
  assert [_train_records(d) for d in runs] == trained
  # Another target: refused by result.json's settings, also as a run from before they were recorded
  # wrote it (its target field); without result.json the runs' training checkpoints name their task.
  result_path = os.path.join(str(out), "result.json")
  for legacy in (False, True):
    if legacy:
      result = json.load(open(result_path))
      del result[run_record.SETTINGS_KEY]
      json.dump(result, open(result_path, "w"))
    with pytest.raises(ValueError, match=rf"holds a finished spot run with other settings .*target "
                                         rf"'{TARGET}' \(now '{SOURCES[0]}'\).*Use a new MODEL_DIR"):
      pipeline.run_target(frozen, lib, SOURCES[0], str(out), "best_of_top_k", **kw)
  os.remove(result_path)
  with pytest.raises(ValueError, match=rf"from_src holds a prompt trained on '{TARGET}' \(step 1\), but "
                                       rf"this run trains '{SOURCES[0]}': use a new MODEL_DIR"):
    pipeline.run_target(frozen, lib, SOURCES[0], str(out), "best_of_top_k", **kw)
  assert [_train_records(d) for d in runs] == trained
  # Any other recorded hash is still an error that names the run.
  with open(os.path.join(str(out / "baseline"), run_record.INIT_SHA256_FILE), "w") as f:
    f.write("0" * 64)
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    pipeline.run_target(frozen, lib, TARGET, str(out), "best_of_top_k", **kw)
  assert str(out / "baseline") in str(e.value)


def test_top_k_all_is_every_source_but_the_excluded(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  for t in ("a", "b", "target"):
    lib.add(t, np.ones((2, 4), np.float32), "m")
  parser = pipeline_cli._target_parser()
  assert parser.parse_args(["--target", "target", "--top-k", "all"]).top_k == "all"
  assert parser.parse_args(["--target", "target", "--top-k", "2"]).top_k == 2
  for bad in ("0", "some"):
    with pytest.raises(SystemExit):
      parser.parse_args(["--target", "target", "--top-k", bad])
  assert pipeline_cli.resolve_top_k("all", lib, "target") == 2  # the target is left out by default
  assert pipeline_cli.resolve_top_k("all", lib, "target", exclude=["a", "target"]) == 1
  assert pipeline_cli.resolve_top_k("all", lib, "other") == 3 and pipeline_cli.resolve_top_k(5, lib, "x") == 5


def test_in_a_multi_process_run_only_process_0_adds_sources(frozen, tmp_path, monkeypatch):
  # Every process trains (the steps are collective); a second process's add raced the first's and
  # failed "already in library" (found by a multi-process audit).
  import jax
  monkeypatch.setattr(pipeline, "_train", lambda *a, **k: np.zeros((2, 2), np.float32))
  monkeypatch.setattr(pipeline, "evaluate_prompt", lambda *a, **k: {"accuracy": 50.0})
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  records = pipeline.train_source_prompts(frozen, ["spot_bundled_movie"], str(tmp_path / "lib"),
                                          str(tmp_path / "runs"), steps=4, run=RUN)
  assert records == {"spot_bundled_movie": {"task": "spot_bundled_movie", "metrics": {"accuracy": 50.0}}}
  assert PromptLibrary(str(tmp_path / "lib")).tasks() == []
