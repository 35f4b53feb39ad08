"""Judging a ranking of sources against measured transfer (Kendall's τ, regret@k, top-k means)."""
import itertools
import json
import math
import os

import numpy as np
import pytest

from spot_jax import fileio, prompt_export
from spot_jax.spot import transferability as tr
from spot_jax.spot.library import PromptLibrary
from spot_jax.spot.pipeline import TargetResult
from spot_jax.spot.retrieval import rank_sources


def _tau_by_pairs(x, y):
  """Kendall's τ-a counted pair by pair (no ties in the inputs used here)."""
  s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(len(x)), 2))
  return s / (len(x) * (len(x) - 1) / 2)


def test_scores_of_one_target_worked_by_hand():
  ranking = [("a", 0.9), ("b", 0.5), ("c", 0.1), ("d", -0.2)]
  transfer = {"a": 70.0, "b": 80.0, "c": 60.0, "d": 65.0}
  r = tr.evaluate_target("t", ranking, transfer, ks=(1, 2, 3), baseline=50.0)
  assert r.best_sources == ["b"] and r.best_rank == 2 and r.best_transfer == 80.0
  assert r.regret[1] == pytest.approx(12.5)  # (80 - 70) / 80
  assert r.regret[2] == 0.0 and r.regret[3] == 0.0
  assert r.top_k_mean[1] == 70.0 and r.top_k_mean[2] == 75.0 and r.top_k_mean[3] == pytest.approx(70.0)
  assert r.mean_all == pytest.approx(68.75)
  want = _tau_by_pairs([0.9, 0.5, 0.1, -0.2], [70.0, 80.0, 60.0, 65.0])
  assert want == pytest.approx(1 / 3)
  assert r.kendall_tau == pytest.approx(want)
  assert [s[0] for s in r.sources] == ["a", "b", "c", "d"] and r.baseline == 50.0


def test_perfect_and_reversed_rankings():
  transfer = {"a": 3.0, "b": 2.0, "c": 1.0}
  good = tr.evaluate_target("t", [("a", 0.3), ("b", 0.2), ("c", 0.1)], transfer)
  bad = tr.evaluate_target("t", [("c", 0.3), ("b", 0.2), ("a", 0.1)], transfer)
  assert good.kendall_tau == pytest.approx(1.0) and good.regret[1] == 0.0 and good.best_rank == 1
  assert bad.kendall_tau == pytest.approx(-1.0) and bad.best_rank == 3
  assert bad.regret[1] == pytest.approx(100 * 2 / 3) and bad.regret[3] == 0.0


def test_ties_and_undefined_values():
  r = tr.evaluate_target("t", [("a", 0.5), ("b", 0.4), ("c", 0.3)], {"a": 1.0, "b": 2.0, "c": 2.0})
  assert r.best_sources == ["b", "c"] and r.best_rank == 2
  flat = tr.evaluate_target("t", [("a", 0.5), ("b", 0.4)], {"a": 1.0, "b": 1.0})
  assert math.isnan(flat.kendall_tau)  # a constant transfer row orders nothing
  assert flat.best_rank is None and math.isnan(flat.regret[1])  # ... and has no best source to find
  negative = tr.evaluate_target("t", [("a", 0.5), ("b", 0.4)], {"a": -0.2, "b": -0.1})
  assert math.isnan(negative.regret[1])  # a percentage of a non-positive best means nothing
  s = tr.summarize([r, flat])
  assert s["kendall_tau_undefined"] == 1 and s["kendall_tau"] == pytest.approx(r.kendall_tau)
  assert s["best_in_top_1"] == 0 and s["best_in_top_3"] == 1 and s["flat_rows"] == 1
  assert "(all equal)" in tr.format_report({"x": [r, flat]}) and "1 flat row(s)" in tr.format_report({"x": [flat]})


def test_a_source_without_a_transfer_score_is_refused():
  with pytest.raises(ValueError, match=r"no transfer score for ranked source\(s\) \['c'\].*--top-k all"):
    tr.evaluate_target("t", [("a", 0.5), ("b", 0.4), ("c", 0.3)], {"a": 1.0, "b": 2.0})
  with pytest.raises(ValueError, match=r"source\(s\) \['z'\] that the ranking does not hold"):
    tr.evaluate_target("t", [("a", 0.5)], {"a": 1.0, "z": 2.0})
  with pytest.raises(ValueError, match="not a finite number"):
    tr.evaluate_target("t", [("a", 0.5), ("b", 0.4)], {"a": 1.0, "b": float("nan")})


def _write_run(run_dir, target, ranked, transfer, strategy="best_of_top_k", baseline=None):
  chosen = [{"task": t, "score": s, "metrics": {"accuracy": transfer[t]}, "selection_score": transfer[t]}
            for t, s in ranked] if strategy == "best_of_top_k" else [{"task": ranked[0][0], "score": ranked[0][1]}]
  result = TargetResult(target=target, strategy=strategy, rank_by="similarity", measure="cos_avg_tokens",
                        top_k=len(ranked), steps=30, ranked=ranked, chosen=chosen, init_description="",
                        transfer_metrics={"accuracy": max(transfer.values())},
                        transfer_score=max(transfer.values()), baseline_score=baseline, out_dir=str(run_dir),
                        extra={"chosen": ranked[0][0], "selection_steps": 30})
  fileio.write_json_atomic(os.path.join(run_dir, "result.json"), result.to_dict(), default=float)


def test_reads_the_result_json_that_spot_writes(tmp_path):
  ranked = [("mnli", 0.8), ("sst2", 0.3), ("qqp", 0.1)]
  _write_run(tmp_path / "rte", "rte", ranked, {"mnli": 71.0, "sst2": 55.0, "qqp": 62.0}, baseline=52.0)
  row = tr.load_transfer_row(str(tmp_path / "rte"))
  assert row["target"] == "rte" and row["ranking"] == ranked and row["baseline"] == 52.0
  assert row["transfer"] == {"mnli": 71.0, "sst2": 55.0, "qqp": 62.0} and row["steps"] == 30
  out = tr.evaluate_runs([str(tmp_path / "rte" / "result.json")])
  (r,) = out["as run"]
  assert r.ranked_by == "cos_avg_tokens" and r.best_rank == 1 and r.regret[1] == 0.0
  assert r.kendall_tau == pytest.approx(1 / 3)
  report = tr.format_report(out)
  assert "rte" in report and "mnli (1)" in report and "summary" in report


def test_runs_without_a_transfer_row_are_refused(tmp_path):
  _write_run(tmp_path / "cb", "cb", [("mnli", 0.8), ("sst2", 0.3)], {"mnli": 1.0, "sst2": 2.0},
             strategy="weighted_average")
  with pytest.raises(ValueError, match="weighted_average run trains one init.*--strategy best_of_top_k"):
    tr.load_transfer_row(str(tmp_path / "cb"))
  with pytest.raises(FileNotFoundError, match="no result.json at .*finished `spot-jax spot` run"):
    tr.load_transfer_row(str(tmp_path / "nowhere"))
  (tmp_path / "odd").mkdir()
  (tmp_path / "odd" / "result.json").write_text(json.dumps({"target": "x"}))
  with pytest.raises(ValueError, match="not a `spot-jax spot` result"):
    tr.load_transfer_row(str(tmp_path / "odd"))
  _write_run(tmp_path / "a", "cb", [("mnli", 0.8)], {"mnli": 1.0})
  _write_run(tmp_path / "b", "cb", [("mnli", 0.7)], {"mnli": 2.0})
  with pytest.raises(ValueError, match=r"several runs of target\(s\) \['cb'\]"):
    tr.evaluate_runs([str(tmp_path / "a"), str(tmp_path / "b")])


def test_rerank_by_other_measures_uses_the_runs_task_embedding(tmp_path):
  rng = np.random.RandomState(0)
  lib = PromptLibrary(str(tmp_path / "lib"))
  for name in ("mnli", "sst2", "qqp", "other"):
    lib.add(name, rng.normal(size=(4, 8)).astype(np.float32), "m", task_embedding=rng.normal(size=(4, 8)))
  run = tmp_path / "rte"
  target_emb = rng.normal(size=(4, 8)).astype(np.float32)
  prompt_export.export_numpy_checkpoint(target_emb, str(run / "task_embedding"), 3, name="task_embedding")
  transfer = {"mnli": 71.0, "sst2": 55.0, "qqp": 62.0}
  _write_run(run, "rte", [("mnli", 0.8), ("sst2", 0.3), ("qqp", 0.1)], transfer)
  out = tr.evaluate_runs([str(run)], library=lib, measures=["cos_avg_tokens", "cos_per_token"])
  assert set(out) == {"cos_avg_tokens", "cos_per_token"}
  for measure, (r,) in out.items():
    # The ranking is recomputed from the target's task embedding over the run's three sources only.
    want = rank_sources(target_emb, {t: lib.get(t).task_embedding for t in transfer}, measure)
    assert [(t, pytest.approx(s)) for t, s in want] == [(t, s) for t, s, _ in r.sources]
    assert r.ranked_by == measure
  s = tr.format_report(out, per_target=False)
  assert "cos_avg_tokens" in s and "cos_per_token" in s
  with pytest.raises(ValueError, match="needs the library"):
    tr.evaluate_runs([str(run)], measures=["cos_avg_tokens"])
  lib.remove("qqp")
  with pytest.raises(ValueError, match=r"no entry for source\(s\) \['qqp'\]"):
    tr.evaluate_runs([str(run)], library=lib, measures=["cos_avg_tokens"])


def test_rerank_needs_the_task_embedding_run(tmp_path):
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("mnli", np.ones((2, 4), np.float32), "m")
  _write_run(tmp_path / "rte", "rte", [("mnli", 0.8)], {"mnli": 1.0})
  with pytest.raises(FileNotFoundError, match="task_embedding does not exist"):
    tr.evaluate_runs([str(tmp_path / "rte")], library=lib, measures=["cos_avg_tokens"])


def test_tau_leaves_out_the_nan_scores_of_a_zero_shot_ranking():
  r = tr.evaluate_target("t", [("a", 0.5), ("b", 0.3), ("c", float("nan"))], {"a": 3.0, "b": 2.0, "c": 1.0})
  assert r.kendall_tau == pytest.approx(1.0) and r.best_rank == 1  # a and b, in the same order
  r = tr.evaluate_target("t", [("a", 0.5), ("b", float("nan"))], {"a": 3.0, "b": 2.0})
  assert math.isnan(r.kendall_tau)  # one source left: no order
