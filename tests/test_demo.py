"""`spot-jax demo --quick` end to end: library, heatmap and a results JSON consistent with the files."""
import json
import os
import re

import numpy as np
import pytest

from spot_jax import demo


def _row(steps, kind, acc, seed=0):
  return {"target": "t", "init": kind, "steps": steps, "kind": kind, "test_accuracy": acc, "seed": seed}


def test_conclusion_is_computed_from_the_numbers():
  rows = [_row(10, "transfer", 70.0), _row(10, "random", 60.0),
          _row(20, "transfer", 70.0), _row(20, "random", 75.0)]
  line = demo.conclusion(demo.summarize(rows))
  assert "1 of 2 budgets" in line and "+10.0 at 10" in line and "-5.0 at 20" in line and "one seed" in line
  assert "did NOT beat" in demo.conclusion(demo.summarize(rows[2:]))
  assert "every budget" in demo.conclusion(demo.summarize(rows[:2]))


def test_conclusion_judges_means_over_seeds_and_not_the_untrained_inits():
  rows = [_row(0, "transfer", 60.0), _row(0, "random", 90.0),  # untrained: shown, not judged
          _row(10, "transfer", 70.0, 0), _row(10, "random", 72.0, 0),
          _row(10, "transfer", 80.0, 1), _row(10, "random", 66.0, 1),
          _row(10, "transfer", 75.0, 2), _row(10, "random", 75.0, 2)]
  summary = demo.summarize(rows)
  ten = {r["kind"]: r for r in summary if r["steps"] == 10}
  assert ten["transfer"]["test_accuracy"] == 75.0 and ten["random"]["test_accuracy"] == 71.0
  assert ten["transfer"]["per_seed"] == [70.0, 80.0, 75.0] and ten["random"]["seeds"] == [0, 1, 2]
  line = demo.conclusion(summary)
  assert "every budget" in line and "mean of 3 seeds" in line and "+4.0 at 10" in line
  assert not re.search(r"at 0\b", line) and "ahead in 1 of 3 single runs" in line
  table = demo.results_table(summary)
  assert "70.0 / 80.0 / 75.0" in table and "75.0%" in table and "per seed" in table


def test_steps_flag_rejects_bad_values():
  with pytest.raises(SystemExit):
    demo.main(["--steps", "0"])


def test_sigterm_in_a_run_ends_the_demo_with_143_and_one_line(tmp_path, monkeypatch, capsys):
  from spot_jax import train
  def preempted(*a, **k):
    raise train.Preempted(7, str(tmp_path / "runs" / "x" / "checkpoints"))
  monkeypatch.setattr(demo, "run_demo", preempted)
  assert demo.main(["--quick", "--out", str(tmp_path / "out")]) == 143
  assert "spot-jax demo: stopped by SIGTERM at step 7 of a run; run the demo again" in capsys.readouterr().err


def test_an_out_holding_the_users_own_runs_or_library_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
  """`demo --out DIR` deleted DIR/runs/ and DIR/library/ (the docs' names for a user's own runs and
  library) and exited 0. Folders without the demo's marker are now refused, by name, and kept."""
  monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo started"))
  work = tmp_path / "work"
  (work / "runs" / "my_mnli_run").mkdir(parents=True)
  (work / "library" / "m4").mkdir(parents=True)
  (work / demo.RESULTS_JSON).write_text("{}")
  (work / "notes.txt").write_text("mine")
  before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
  assert demo.main(["--quick", "--out", str(work)]) == 2
  err = capsys.readouterr().err
  assert err == (f"spot-jax demo: error: {work} already holds library/, runs/, results.json, which the demo did "
                 f"not make and would replace: pass a fresh --out (e.g. --out {work / 'demo_out'}), or move "
                 "them away\n")
  assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
  # The demo's own previous output passes (a rerun replaces it); its folders only ever go with the marker.
  own = tmp_path / "own"
  for d in (own, own / "library", own / "runs"):
    demo._mark(str(d))
  (own / "runs" / "sources").mkdir()
  (own / demo.RESULTS_JSON).write_text("{}")
  demo.check_out_dir(str(own))
  demo._replace_own_dir(str(own / "runs"))
  assert os.listdir(own / "runs") == [demo.MARKER]
  os.remove(own / "library" / demo.MARKER)  # a user's folder put there since
  with pytest.raises(FileExistsError, match=r"library/, which the demo did not make"):
    demo.check_out_dir(str(own))
  with pytest.raises(FileExistsError, match=r"library was not made by the demo"):
    demo._replace_own_dir(str(own / "library"))
  assert (own / "library").is_dir()


def test_an_out_that_is_a_file_or_unwritable_is_one_line(tmp_path, monkeypatch, capsys):
  """`--out FILE` was a FileExistsError traceback; a full disk or read-only place was a traceback too."""
  import errno
  f = tmp_path / "f.npy"
  f.write_bytes(b"x")
  assert demo.main(["--quick", "--out", str(f)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"spot-jax demo: error: {f} is a file, but it must be a directory") and \
      err.count("\n") == 1, err

  def full(out_dir, *a, **k):
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(out_dir, "runs", "x.tmp-0123abcd"))
  monkeypatch.setattr(demo, "run_demo", full)
  assert demo.main(["--quick", "--out", str(tmp_path / "out")]) == 1
  assert capsys.readouterr().err == (f"spot-jax demo: error: cannot write {tmp_path / 'out' / 'runs' / 'x'}: No "
                                     "space left on device: free some space or choose another directory\n")


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
  from spot_jax.spot import similarity as sim
  from spot_jax.spot.library import PromptLibrary
  out, cache = tmp_path / "out", tmp_path / "cache"
  assert demo.main(["--quick", "--out", str(out), "--cache-dir", str(cache)]) == 0
  printed = capsys.readouterr().out
  with open(out / demo.RESULTS_JSON) as f:
    res = json.load(f)
  _, cfg = demo.quick_configs()

  # The library holds every source with a prompt and a task embedding.
  lib = PromptLibrary(res["library"])
  assert lib.tasks() == sorted(res["sources"]) == sorted(demo.PREFIX + s for s in cfg.sources)
  assert all(lib.get(t).task_embedding is not None for t in lib.tasks())
  for t in lib.tasks():
    assert lib.record(t)["metrics"]["accuracy"] == pytest.approx(res["source_validation_accuracy"][t])

  # The similarity matrix in the JSON is the one of the library's prompts; the heatmap exists.
  names, matrix = sim.similarity_matrix(lib.prompts("prompt"), res["measure"])
  assert res["similarity"]["names"] == names
  np.testing.assert_allclose(res["similarity"]["matrix"], matrix, rtol=1e-6)
  with open(res["heatmap"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # Ranking: every source once, best first; the target is not among them.
  ranked = [r["task"] for r in res["ranking"]]
  scores = [r["score"] for r in res["ranking"]]
  assert sorted(ranked) == sorted(res["sources"]) and res["target"] not in ranked
  assert scores == sorted(scores, reverse=True)

  # Per seed: both inits untrained (steps 0), then one transfer and one random row per budget.
  rows = res["results"]
  assert cfg.num_seeds == 2 and res["seeds"] == [0, 1]
  assert [(r["seed"], r["steps"], r["kind"]) for r in rows] == [
      (seed, s, k) for seed in (0, 1) for s in (0,) + tuple(cfg.target_steps) for k in ("transfer", "random")]
  for r in rows:
    assert 0.0 <= r["test_accuracy"] <= 100.0
  # The printed table is the mean over seeds of those rows; the conclusion is computed from it.
  assert res["summary"] == demo.summarize(rows)
  for r in res["summary"]:
    assert r["test_accuracy"] == pytest.approx(np.mean(r["per_seed"]))
    assert f"{r['test_accuracy']:.1f}%" in printed
  assert res["conclusion"] == demo.conclusion(res["summary"]) and res["conclusion"] in printed
  # The transfer init is the same for both seeds (one retrieval); the random init is not.
  untrained = {(r["seed"], r["kind"]): r["test_accuracy"] for r in rows if r["steps"] == 0}
  assert untrained[(0, "transfer")] == untrained[(1, "transfer")]
  # Validation numbers come from the pipeline's own result.json of each budget and seed.
  assert [(p["seed"], p["steps"]) for p in res["pipeline"]] == [(s, n) for s in (0, 1) for n in cfg.target_steps]
  for p in res["pipeline"]:
    with open(os.path.join(p["out_dir"], "result.json")) as f:
      on_disk = json.load(f)
    row = [r for r in rows if (r["seed"], r["steps"], r["kind"]) == (p["seed"], p["steps"], "transfer")][0]
    assert on_disk["transfer_metrics"]["accuracy"] == pytest.approx(row["validation_accuracy"])
  assert not res["backbone"]["reused"] and res["backbone"]["final_loss"] < res["backbone"]["initial_loss"]
  assert "heatmap:" in printed and "step 5/5" in printed
  assert printed.rstrip().endswith("mean nothing; run without --quick for the demo")  # not a result

  # The demo marks what it made: only that is replaced by a rerun into the same --out.
  assert all((out / d / demo.MARKER).is_file() for d in (".", "library", "runs"))

  # A second run reuses the cached backbone.
  assert demo.main(["--quick", "--out", str(out), "--cache-dir", str(cache), "--steps", "2", "--seeds", "1"]) == 0
  with open(out / demo.RESULTS_JSON) as f:
    again = json.load(f)
  assert again["backbone"]["reused"] and again["backbone"]["checkpoint"] == res["backbone"]["checkpoint"]
  assert [r["steps"] for r in again["results"]] == [0, 0, 2, 2] and "one seed" in again["conclusion"]
