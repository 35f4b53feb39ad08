"""`spot-jax demo --quick` end to end: library, heatmap and a results JSON consistent with the files."""
import json
import os

import numpy as np
import pytest

from spot_jax import demo


def test_conclusion_is_computed_from_the_numbers():
  rows = [{"steps": 10, "kind": "transfer", "test_accuracy": 70.0},
          {"steps": 10, "kind": "random", "test_accuracy": 60.0},
          {"steps": 20, "kind": "transfer", "test_accuracy": 70.0},
          {"steps": 20, "kind": "random", "test_accuracy": 75.0}]
  line = demo.conclusion(rows)
  assert "1 of 2 budgets" in line and "+10.0 at 10" in line and "-5.0 at 20" in line
  assert "did NOT beat" in demo.conclusion(rows[2:])
  assert "every budget" in demo.conclusion(rows[:2])


def test_steps_flag_rejects_bad_values():
  with pytest.raises(SystemExit):
    demo.main(["--steps", "0"])


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

  # Final table: one transfer and one random row per budget, accuracies in range, also printed.
  rows = res["results"]
  assert [(r["steps"], r["kind"]) for r in rows] == [
      (s, k) for s in cfg.target_steps for k in ("transfer", "random")]
  for r in rows:
    assert 0.0 <= r["test_accuracy"] <= 100.0
    assert f"{r['test_accuracy']:.1f}%" in printed
  assert res["conclusion"] == demo.conclusion(rows) and res["conclusion"] in printed
  # Validation numbers come from the pipeline's own result.json of each budget.
  for p in res["pipeline"]:
    with open(os.path.join(p["out_dir"], "result.json")) as f:
      on_disk = json.load(f)
    row = [r for r in rows if r["steps"] == p["steps"] and r["kind"] == "transfer"][0]
    assert on_disk["transfer_metrics"]["accuracy"] == pytest.approx(row["validation_accuracy"])
  assert not res["backbone"]["reused"] and res["backbone"]["final_loss"] < res["backbone"]["initial_loss"]
  assert "heatmap:" in printed and "step 5/5" in printed

  # A second run reuses the cached backbone.
  assert demo.main(["--quick", "--out", str(out), "--cache-dir", str(cache), "--steps", "2"]) == 0
  with open(out / demo.RESULTS_JSON) as f:
    again = json.load(f)
  assert again["backbone"]["reused"] and again["backbone"]["checkpoint"] == res["backbone"]["checkpoint"]
  assert [r["steps"] for r in again["results"]] == [2, 2]
