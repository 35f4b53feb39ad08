"""The SPoT targeted pipeline on a tiny frozen model and the bundled tasks: sources, retrieval, and
`run_target` (its runs, their recorded inits and settings, resumption). The strategies are
test_transfer_strategies.py; the CLI, test_pipeline_cli.py."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import os
import re

import numpy as np
import pytest

from spot_jax import prompt_io
from spot_jax.spot import pipeline, run_record, training_runs
from spot_jax.spot.library import PromptLibrary

from spot_pipeline_setup import CFG, P, RUN, SOURCE_STEPS, SOURCES, TARGET, _train_records

pytestmark = pytest.mark.usefixtures("compilation_cache")


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
  # A rerun with fewer steps finds its runs trained further: refused (before, result.json was rewritten
  # saying 2 steps over the 3-step prompts).
  written = (tmp_path / "result.json").read_bytes()
  with pytest.raises(ValueError, match=r"latest checkpoint is step 3, past this run's 2 steps: its step-3 "
                                       r"prompt would be reported as a 2-step one"):
    pipeline.run_target(frozen, lib, TARGET, str(tmp_path), "best_of_top_k", top_k=2, steps=2, run=RUN,
                        target_embedding=lib.get("spot_bundled_movie").task_embedding)
  assert (tmp_path / "result.json").read_bytes() == written


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
  assert sorted(p.name for p in (tmp_path / "zero_shot" / TARGET).iterdir()) == [f"from_{s}" for s in sorted(SOURCES)]
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


def test_in_a_multi_process_run_only_process_0_writes_the_pipelines_files(frozen, library, tmp_path,
                                                                         monkeypatch):
  """init.npy, result.json and each run's init sha256 are process 0's to write, as checkpoints and
  exports are (every process wrote them: on gs:// twice the writes, the last writer winning)."""
  import jax
  lib = library[0]
  monkeypatch.setattr(training_runs, "_train", lambda *a, **k: np.zeros((P, CFG.d_model), np.float32))
  monkeypatch.setattr(pipeline, "evaluate_prompt", lambda *a, **k: {"accuracy": 50.0})
  for index in (1, 0):
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: index)
    out = tmp_path / f"process_{index}"
    result = pipeline.run_target(frozen, lib, TARGET, str(out), "weighted_average", top_k=2, steps=3, run=RUN,
                                 target_embedding=lib.get("spot_bundled_movie").task_embedding)
    assert result.transfer_metrics == {"accuracy": 50.0}
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ([] if index else ["init.npy", "result.json", f"transfer/{run_record.INIT_SHA256_FILE}"])


def test_a_rerun_reuses_each_runs_stored_evaluation_unless_what_it_depends_on_changed(
    frozen, library, tmp_path, monkeypatch, caplog):
  """A finished pipeline's rerun evaluated every run again (minutes each on a real T5). Each run now
  records its validation metrics with what they were computed from: a rerun reuses them, and evaluates
  exactly the runs whose prompt or evaluation settings changed, or whose record is damaged."""
  import jax
  from spot_jax import evaluation
  lib = library[0]
  out = tmp_path / "out"
  evaluated, real = [], evaluation.evaluate

  def spy(task, config, params, prompt, *a, **k):
    evaluated.append(run_record.init_sha256(prompt))
    return real(task, config, params, prompt, *a, **k)
  monkeypatch.setattr(evaluation, "evaluate", spy)
  kw = dict(top_k=2, steps=2, selection_steps=1, target_embedding=lib.get(SOURCES[0]).task_embedding)

  def rerun(expected, run=RUN, **extra):
    evaluated.clear()
    caplog.clear()
    with caplog.at_level("INFO", logger="spot_jax.spot"):
      result = pipeline.run_target(frozen, lib, TARGET, str(out), "best_of_top_k", run=run, **{**kw, **extra})
    assert len(evaluated) == expected, caplog.text
    return result

  first = rerun(3)  # two selection runs and the transfer run
  sel = [str(out / "selection" / f"from_{c['task']}") for c in first.chosen]
  runs = sel + [str(out / "transfer")]
  saved = (out / "result.json").read_bytes()
  records = {d: json.loads(open(os.path.join(d, run_record.EVAL_FILE)).read()) for d in runs}
  assert records[runs[2]]["metrics"] == first.transfer_metrics
  assert records[runs[2]]["settings"]["num_examples"] == RUN.eval_num_examples
  # The identical command: nothing evaluated, one line per run naming it, the same result.json.
  rerun(0)
  reused = [r.getMessage() for r in caplog.records if "reusing its stored validation" in r.getMessage()]
  assert sorted(m.split(":")[0] for m in reused) == sorted(runs), reused
  assert (out / "result.json").read_bytes() == saved
  # Adding the baseline evaluates only the baseline; more steps only the runs that trained further.
  rerun(1, baseline=True)
  assert os.path.exists(out / "baseline" / run_record.EVAL_FILE)
  rerun(2, baseline=True, steps=3)  # transfer/ and baseline/ trained on; the 1-step selection runs did not
  assert len(set(evaluated)) == 2
  # Other evaluation settings: every run again, and the records say the new ones.
  fewer = pipeline.RunConfig(**{**vars(RUN), "eval_num_examples": 16})
  rerun(4, run=fewer, baseline=True, steps=3)
  assert "num_examples 32 -> 16" in caplog.text
  assert json.loads((out / "baseline" / run_record.EVAL_FILE).read_text())["settings"]["num_examples"] == 16
  # Damaged records (torn, not an object, a metric that is not a number) are evaluated again, not a crash.
  (out / "transfer" / run_record.EVAL_FILE).write_text('{"settings": {"task"')
  open(os.path.join(sel[0], run_record.EVAL_FILE), "w").write("[1, 2]")
  record = json.loads((out / "baseline" / run_record.EVAL_FILE).read_text())
  record["metrics"]["accuracy"] = "high"
  (out / "baseline" / run_record.EVAL_FILE).write_text(json.dumps(record))
  # Another process decides alike from the same files and writes none of them: process 0 does.
  monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
  rerun(3, run=fewer, baseline=True, steps=3)
  assert caplog.text.count("not a readable evaluation record") == 3
  assert (out / "transfer" / run_record.EVAL_FILE).read_text() == '{"settings": {"task"'
  monkeypatch.setattr(jax, "process_index", lambda *a, **k: 0)
  result = rerun(3, run=fewer, baseline=True, steps=3)
  for run_dir, metrics in ((sel[0], result.chosen[0]["metrics"]), (out / "transfer", result.transfer_metrics),
                           (out / "baseline", result.baseline_metrics)):  # written again, whole
    assert json.loads(open(os.path.join(run_dir, run_record.EVAL_FILE)).read())["metrics"] == metrics


def test_every_process_follows_process_0s_reading_of_a_runs_evaluation_record(frozen, tmp_path, monkeypatch):
  """Deciding by file alone, a slower process of a real two-process rerun (another EVAL_NUM_EXAMPLES)
  read the record that process 0 had just rewritten and skipped the evaluation the others ran."""
  import jax
  from jax.experimental import multihost_utils
  run_dir = tmp_path / "run"
  (run_dir / "checkpoints" / "2").mkdir(parents=True)
  prompt = np.ones((P, CFG.d_model), np.float32)
  run_record.store_metrics(str(run_dir), run_record.eval_settings(frozen, TARGET, prompt, 2, RUN),
                           {"accuracy": 1.0})
  calls = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  for process_0_reuses, damaged, evaluated in ((False, False, 1), (True, False, 0), (True, True, 1)):
    if damaged:  # process 0 read it, this process cannot: it evaluates (the same numbers), not crash
      (run_dir / run_record.EVAL_FILE).write_text("{")
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x, r=process_0_reuses: np.asarray(r))
    calls.clear()
    metrics = training_runs.evaluate_run(lambda *a: calls.append(a) or {"accuracy": 2.0}, frozen, str(run_dir),
                                         TARGET, prompt, 2, RUN)
    assert (len(calls), metrics) == (evaluated, {"accuracy": 2.0 if evaluated else 1.0})


def test_a_mistyped_exclude_is_refused_before_anything_is_written(frozen, library, tmp_path):
  """exclude=["typo"] left the task it meant among the sources; the default (the target) may be absent."""
  with pytest.raises(ValueError, match=r"exclude names \['spot_bundled_topic_'\], which the library does not hold"):
    pipeline.run_target(frozen, library[0], TARGET, str(tmp_path / "out"), exclude=["spot_bundled_topic_"],
                        steps=1, run=RUN)
  assert not (tmp_path / "out").exists()
