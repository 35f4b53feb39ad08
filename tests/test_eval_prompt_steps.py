"""`eval` over a training run's exports (PROMPT_STEPS, as t5x.eval's RestoreCheckpointConfig.mode='all'),
and an eval run again into the same EVAL_OUTPUT_DIR."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import logging
import os

import gin
import numpy as np
import pytest

from spot_jax import eval as eval_cli
from spot_jax import metrics_log

from eval_cli_setup import RANK, STEPS, _args

# PROMPT_STEPS: every export of a training run (t5x.eval's RestoreCheckpointConfig.mode='all').

RANK_ARGS = [f"--gin.MIXTURE_OR_TASK_NAME='{RANK}'", "--gin.spot_jax.eval.evaluate_prompt.num_examples=4"]
_FROZEN = {}  # the tiny model's fresh initialization (seed 0: the same every time), made once


def _count_and_share_the_frozen_model(monkeypatch, counts):
  from spot_jax import evaluation
  from spot_jax import frozen_model as frozen_lib
  load = frozen_lib.load_frozen

  def load_frozen(path, config, seed, macro="INITIAL_CHECKPOINT_PATH"):
    counts["loads"] += 1
    if (path, config, seed) not in _FROZEN:
      _FROZEN[(path, config, seed)] = load(path, config, seed, macro=macro)
    return _FROZEN[(path, config, seed)]

  class Counted(evaluation.PromptEvaluator):
    def __init__(self, *args, **kwargs):
      counts["evaluators"] += 1
      super().__init__(*args, **kwargs)

    def evaluate(self, *args, step=None, **kwargs):
      counts["evaluated"].append(step)
      return super().evaluate(*args, step=step, **kwargs)

  monkeypatch.setattr(frozen_lib, "load_frozen", load_frozen)
  monkeypatch.setattr(evaluation, "PromptEvaluator", Counted)


def _scores(out_dir, step):
  """seqio's log of one step: the score of every (example, option) row."""
  with open(os.path.join(out_dir, f"{RANK}-{step:06d}.jsonl")) as f:
    return {tuple(r["target"][:2]): r["score"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def alone(run_dir, tmp_path_factory):
  """{step: (metrics, seqio's scores)} of each export evaluated alone (PROMPT_STEPS=None)."""
  out = {}
  with pytest.MonkeyPatch.context() as mp:
    _count_and_share_the_frozen_model(mp, {"loads": 0, "evaluators": 0, "evaluated": []})
    for step in STEPS:
      gin.clear_config()
      e = tmp_path_factory.mktemp(f"alone{step}")
      export = run_dir / "numpy_checkpoints" / f"checkpoint_{step}"
      results = eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", e, str(export), RANK_ARGS))
      out[step] = (results[RANK], _scores(e, step))
  gin.clear_config()
  return out


@pytest.fixture
def counts(monkeypatch):
  counts = {"loads": 0, "evaluators": 0, "evaluated": []}
  _count_and_share_the_frozen_model(monkeypatch, counts)
  yield counts
  gin.clear_config()


def _steps_args(out, run_dir, steps):
  return _args("prompt_eval.gin", "EVAL_OUTPUT_DIR", out, str(run_dir),
               RANK_ARGS + [f"--gin.PROMPT_STEPS={steps!r}"])


def test_prompt_steps_all_evaluates_every_export_once_loaded_and_resumes(tmp_path, run_dir, alone, counts,
                                                                         caplog):
  """PROMPT_STEPS='all': one model load and one Evaluator for the three exports, each logged at its
  step (metrics.jsonl, TensorBoard, seqio's logs) with the metrics and per-row scores it gets alone;
  the same command again evaluates nothing and says which steps it skipped."""
  caplog.set_level(logging.INFO, logger="spot_jax.eval")
  out = tmp_path / "e"
  results = eval_cli.main(_steps_args(out, run_dir, "all"))
  assert counts == {"loads": 1, "evaluators": 1, "evaluated": list(STEPS)}
  assert list(results) == list(STEPS)
  for step in STEPS:
    assert results[step][RANK] == pytest.approx(alone[step][0])
    scores = _scores(out, step)
    assert scores.keys() == alone[step][1].keys() and len(scores) == 8  # 4 examples x 2 options
    np.testing.assert_allclose([scores[k] for k in sorted(scores)],
                               [alone[step][1][k] for k in sorted(scores)], rtol=1e-6)
  assert len({tuple(sorted(_scores(out, s).values())) for s in STEPS}) == 3  # three different prompts
  tag = f"eval/{RANK}/accuracy"
  records = metrics_log.read_jsonl(str(out / "metrics.jsonl"))
  assert [(r["step"], r[tag]) for r in records] == [(s, results[s][RANK]["accuracy"]) for s in STEPS]
  assert metrics_log.read_tensorboard_scalars(str(out))[tag] == [
      (s, pytest.approx(results[s][RANK]["accuracy"])) for s in STEPS]
  table = caplog.text[caplog.text.index(f"step  {RANK}/accuracy"):]
  best = max(STEPS, key=lambda s: (results[s][RANK]["accuracy"], -s))
  assert f"best step of {RANK}: {best} (accuracy" in table
  assert [line.split()[0] for line in table.splitlines()[1:4]] == [str(s) for s in STEPS]
  assert table.splitlines()[1 + STEPS.index(best)].endswith("*") and table.count("*") == 1

  caplog.clear()
  gin.clear_config()
  again = eval_cli.main(_steps_args(out, run_dir, "all"))
  assert counts == {"loads": 1, "evaluators": 1, "evaluated": list(STEPS)}  # nothing more
  assert again == {s: {RANK: pytest.approx(results[s][RANK])} for s in STEPS}
  assert f"skipping steps [2, 4, 6]: {out / 'metrics.jsonl'} already holds their metrics" in caplog.text
  assert len(metrics_log.read_jsonl(str(out / "metrics.jsonl"))) == 3


def test_prompt_steps_list_evaluates_those_and_all_then_adds_only_the_rest(tmp_path, run_dir, alone,
                                                                          counts):
  """A list evaluates just those steps; 'all' afterwards into the same EVAL_OUTPUT_DIR (a killed job
  run again) evaluates only the missing step."""
  out = tmp_path / "e"
  results = eval_cli.main(_steps_args(out, run_dir, [6, 2]))
  assert counts["evaluated"] == [2, 6] and list(results) == [2, 6]
  assert all(results[s][RANK] == pytest.approx(alone[s][0]) for s in (2, 6))
  # Killed while logging step 6: seqio's record written, ours torn (no newline, cut short).
  ours = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
  (out / "metrics.jsonl").write_text(ours[0] + ours[1][:25])
  gin.clear_config()
  results = eval_cli.main(_steps_args(out, run_dir, "all"))
  assert counts == {"loads": 2, "evaluators": 2, "evaluated": [2, 6, 4, 6]}
  assert list(results) == list(STEPS)
  assert all(results[s][RANK] == pytest.approx(alone[s][0]) for s in STEPS)
  # Each step once in both logs: the torn line went (it would have glued the next record onto it),
  # and so did seqio's record of the step evaluated again.
  assert sorted(r["step"] for r in metrics_log.read_jsonl(str(out / "metrics.jsonl"))) == list(STEPS)
  seqio_log = (out / f"{RANK}-metrics.jsonl").read_text().splitlines()
  assert sorted(json.loads(line)["step"] for line in seqio_log) == list(STEPS)


def test_prompt_steps_errors_name_the_fix_before_any_compute(tmp_path, run_dir, counts):
  out = str(tmp_path / "e")
  npy = tmp_path / "p.npy"
  np.save(npy, np.zeros((4, 64), np.float32))
  (tmp_path / "empty").mkdir()
  export = run_dir / "numpy_checkpoints" / "checkpoint_2"

  def fails(prompt_file, steps, match, **kwargs):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      eval_cli.evaluate_prompt(RANK, out, str(prompt_file), prompt_steps=steps, **kwargs)

  fails(npy, "all", r"PROMPT_STEPS='all' evaluates the numpy exports of a training MODEL_DIR, but "
                    rf"PROMPT_FILE={npy} is a file: set PROMPT_FILE to the run's MODEL_DIR .*PROMPT_STEPS=None")
  fails(run_dir, [4, 5, 9], r"PROMPT_STEPS=\[4, 5, 9\]: no export for steps \[5, 9\] in .*numpy_checkpoints; "
                            r"its exports are steps \[2, 4, 6\]")
  for no_exports in (tmp_path / "empty", export):
    fails(no_exports, "all", r"holds no numpy_checkpoints/checkpoint_<step>/ export, so it is not a training "
                             r"MODEL_DIR .*PROMPT_STEPS=None to evaluate a single prompt")
  for bad in ("best", "2,4", 3, [], [-1], [1.5], [True]):
    fails(run_dir, bad, r"is neither 'all' nor a list of non-negative integer steps.*--gin.PROMPT_STEPS=\"'all'\"")
  fails(run_dir, 3, r"one step is a list of one: --gin.PROMPT_STEPS=\[3\]")
  fails(run_dir, "all", r"step=4 labels one prompt.*unbind step", step=4)
  assert counts == {"loads": 0, "evaluators": 0, "evaluated": []}
  # Through the command line: gin's `PROG: error:` form; a prompt of the wrong width fails before
  # the fresh initialization.
  with pytest.raises(SystemExit, match=r"^spot_jax.eval: error: PROMPT_STEPS=\[5\]: no export for step \[5\]"):
    eval_cli.main(_steps_args(out, run_dir, [5]))
  wide = tmp_path / "wide"
  from spot_jax import prompt_export
  prompt_export.export_numpy_checkpoint(np.zeros((4, 32), np.float32), str(wide), 8)
  gin.clear_config()
  with pytest.raises(SystemExit, match=r"the prompt in .*checkpoint_8 has shape \(4, 32\).*d_model is 64"):
    eval_cli.main(_steps_args(out, wide, "all"))
  assert counts == {"loads": 0, "evaluators": 0, "evaluated": []}
  assert not os.path.exists(out)


def test_eval_run_again_into_the_same_dir_replaces_its_step(tmp_path, run_dir, caplog):
  """A second `eval` of step 0 into the same EVAL_OUTPUT_DIR appended a second step-0 record to
  metrics.jsonl, <task>-metrics.jsonl and TensorBoard (while <task>-000000.jsonl was overwritten).
  Now it replaces them; another step's records (here step 4) stay. The same prompt evaluated again
  (here with more examples) replaces its results without a copy or a warning (another prompt's:
  `test_eval_of_another_prompt_at_the_same_step_keeps_the_earlier_results`)."""
  out = tmp_path / "e"
  exports = run_dir / "numpy_checkpoints"
  tag = f"eval/{RANK}/accuracy"

  def run(export, n):
    gin.clear_config()
    return eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", out, str(exports / f"checkpoint_{export}"),
                               [f"--gin.MIXTURE_OR_TASK_NAME='{RANK}'",
                                f"--gin.spot_jax.eval.evaluate_prompt.num_examples={n}"]
                               + (["--gin.spot_jax.eval.evaluate_prompt.step=0"] if export != 4 else [])))

  at4 = run(4, 4)[RANK]["accuracy"]
  run(2, 3)
  with caplog.at_level(logging.WARNING, logger="spot_jax"):
    last = run(2, 5)[RANK]["accuracy"]
  records = metrics_log.read_jsonl(str(out / "metrics.jsonl"))
  assert sorted((r["step"], r[tag]) for r in records) == [(0, last), (4, at4)]
  seqio_records = [json.loads(line) for line in open(out / f"{RANK}-metrics.jsonl")]
  assert sorted((r["step"], r["accuracy"]) for r in seqio_records) == [(0, last), (4, at4)]
  assert sorted(metrics_log.read_tensorboard_scalars(str(out))[tag]) == [(0, pytest.approx(last)),
                                                                         (4, pytest.approx(at4))]
  assert len(open(out / f"{RANK}-000000.jsonl").readlines()) == 10  # 5 examples x 2 options
  assert not [n for n in os.listdir(out) if ".old-" in n] and "kept them" not in caplog.text


def test_eval_of_another_prompt_at_the_same_step_keeps_the_earlier_results(tmp_path, caplog):
  """`eval` of PROMPT_FILE=exp/p.npy, then of exp/peft2 (a PEFT adapter) into the same EVAL_OUTPUT_DIR:
  both are step 0, and the second replaced the first's <task>-000000.jsonl, its metrics.jsonl values
  and seqio record without a word, although evaluated_prompts.json recorded them as another prompt's.
  Now, as `infer` keeps another run's predictions, each file is first kept whole beside itself as
  `<file>.old-<first 8 hex digits of its sha256>`, named in one warning; the same prompt evaluated
  again replaces its results as before (no copy, no warning)."""
  from spot_jax import prompt_export
  exp, out = tmp_path / "exp", tmp_path / "e"
  exp.mkdir()
  np.save(exp / "p.npy", np.random.RandomState(1).uniform(-0.5, 0.5, (4, 64)).astype(np.float32))
  prompt_export.export_peft(np.random.RandomState(2).uniform(-0.5, 0.5, (4, 64)).astype(np.float32),
                            str(exp / "peft2"))
  names = ("metrics.jsonl", f"{RANK}-metrics.jsonl", f"{RANK}-000000.jsonl", eval_cli.RECORDS)
  tag = f"eval/{RANK}/accuracy"

  def run(prompt):
    gin.clear_config()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spot_jax"):
      results = eval_cli.main(_args("prompt_eval.gin", "EVAL_OUTPUT_DIR", out, str(prompt), RANK_ARGS))
    return results[RANK], [r.getMessage() for r in caplog.records if "kept them" in r.getMessage()]

  first_results, warned = run(exp / "p.npy")
  assert warned == []
  first = {n: (out / n).read_bytes() for n in names}
  second_results, warned = run(exp / "peft2")
  kept = {n: sorted(k for k in os.listdir(out) if k.startswith(n + ".old-")) for n in names}
  assert all(len(k) == 1 for k in kept.values()), os.listdir(out)
  for n in names:  # each file kept whole, as it was, under the name infer's backups have
    import hashlib
    assert kept[n] == [f"{n}.old-{hashlib.sha256(first[n]).hexdigest()[:8]}"]
    assert (out / kept[n][0]).read_bytes() == first[n]
  assert json.loads(first[eval_cli.RECORDS])[RANK]["0"]["prompt"] == str(exp / "p.npy")
  kept_paths = ", ".join(str(out / kept[n][0]) for n in (f"{RANK}-000000.jsonl", f"{RANK}-metrics.jsonl",
                                                          "metrics.jsonl", eval_cli.RECORDS))
  assert warned == [f"{out} held the step 0 results of {RANK} of another prompt ({exp / 'p.npy'}, as "
                    f"evaluated_prompts.json records): kept them as {kept_paths}; the results of {exp / 'peft2'} "
                    f"replace them there (TensorBoard shows only the new values). To keep both in the logs, "
                    f"evaluate into another EVAL_OUTPUT_DIR or bind spot_jax.eval.evaluate_prompt.step"]
  # The live files hold the second prompt's step 0 once; the kept ones the first's.
  assert [(r["step"], r[tag]) for r in metrics_log.read_jsonl(str(out / "metrics.jsonl"))] == [
      (0, second_results["accuracy"])]
  assert [(r["step"], r[tag]) for r in metrics_log.read_jsonl(str(out / kept["metrics.jsonl"][0]))] == [
      (0, first_results["accuracy"])]
  assert json.loads((out / eval_cli.RECORDS).read_text())[RANK]["0"]["prompt"] == str(exp / "peft2")
  # The same prompt again: replaced, nothing more kept, no warning.
  listing = sorted(n for n in os.listdir(out) if ".old-" in n)
  _, warned = run(exp / "peft2")
  assert warned == [] and sorted(n for n in os.listdir(out) if ".old-" in n) == listing


def test_prompt_steps_into_a_dir_holding_another_runs_metrics_is_refused_not_skipped(tmp_path, run_dir, counts):
  """PROMPT_STEPS='all' of run B into the EVAL_OUTPUT_DIR of run A's evaluation skipped every step and
  printed A's numbers under B's name. Each logged step now records its prompt's sha256 and the
  settings: only a step of the same prompt and settings is skipped (the same exports copied elsewhere
  too); another run's, other settings' or unrecorded metrics are refused before compute, unchanged."""
  import shutil
  from spot_jax import prompt_export
  out = tmp_path / "e"
  eval_cli.main(_steps_args(out, run_dir, "all"))
  jsonl = (out / "metrics.jsonl").read_text()
  other = tmp_path / "other"
  for step in STEPS:
    prompt_export.export_numpy_checkpoint(np.full((4, 64), 0.1 * step, np.float32), str(other), step)
  gin.clear_config()
  with pytest.raises(SystemExit, match=rf"{out} already holds metrics of steps \[2, 4, 6\] that are not known to "
                                       rf"be of {other}'s exports: of other prompts \({run_dir}\)\. Skipping them "
                                       r"would report those numbers as this run's, evaluating them would replace "
                                       rf"them: use a new EVAL_OUTPUT_DIR, or delete {out} to evaluate into it again"):
    eval_cli.main(_steps_args(out, other, "all"))
  gin.clear_config()
  with pytest.raises(SystemExit, match=r"holds metrics of step \[2\] .*with other settings \(num_examples 4 -> 3\)"):
    eval_cli.main(_steps_args(out, run_dir, [2]) + ["--gin.spot_jax.eval.evaluate_prompt.num_examples=3"])
  assert counts == {"loads": 1, "evaluators": 1, "evaluated": list(STEPS)}
  assert (out / "metrics.jsonl").read_text() == jsonl
  # The same exports moved elsewhere are the same prompts: skipped.
  shutil.copytree(run_dir, tmp_path / "moved")
  gin.clear_config()
  eval_cli.main(_steps_args(out, tmp_path / "moved", "all"))
  assert counts["evaluated"] == list(STEPS)
  # Written before the record existed: not trusted.
  os.remove(out / eval_cli.RECORDS)
  gin.clear_config()
  with pytest.raises(SystemExit, match=r"with no record of their prompt at steps \[2, 4, 6\] \(logged before "
                                       r"spot_jax wrote evaluated_prompts.json\)"):
    eval_cli.main(_steps_args(out, run_dir, "all"))
  assert counts["evaluated"] == list(STEPS) and (out / "metrics.jsonl").read_text() == jsonl
