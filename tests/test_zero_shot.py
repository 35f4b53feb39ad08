"""Zero-shot transfer: library prompts evaluated on targets without training, as a ranking signal."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json

import jax
import numpy as np
import pytest

from spot_jax import evaluation
from spot_jax.config import size_config
from spot_jax.model import init_params
from spot_jax.spot import pipeline, zero_shot
from spot_jax.spot import run as spot_run
from spot_jax.spot.library import PromptLibrary

LENGTHS = {"inputs": 64, "targets": 4}
CFG = size_config("tiny", vocab_size=1152, d_model=32, num_heads=2, head_dim=16, d_ff=64)
RUN = pipeline.RunConfig(task_feature_lengths=LENGTHS, batch_size=16, prompt_length=4,
                         eval_num_examples=32)
TARGETS = ["spot_bundled_movie_rank", "spot_bundled_topic_rank"]


@pytest.fixture(scope="module")
def frozen():
  return CFG, init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture
def library(tmp_path):
  rng = np.random.default_rng(0)
  lib = PromptLibrary(str(tmp_path / "lib"))
  for i, scale in enumerate((0.05, 1.0, 3.0)):
    lib.add(f"source_{i}", rng.normal(0, scale, (4, 32)).astype(np.float32), "m")
  return lib


def test_matrix_holds_each_prompts_validation_metric_on_each_target(frozen, library, tmp_path):
  m = zero_shot.zero_shot_matrix(frozen, library, TARGETS, RUN)
  assert m.sources == ["source_0", "source_1", "source_2"] and m.targets == TARGETS
  assert m.scores.shape == (3, 2)
  for i, s in enumerate(m.sources):
    for j, t in enumerate(TARGETS):
      direct = evaluation.evaluate(t, CFG, frozen[1], library.get(s).prompt, LENGTHS, batch_size=16,
                                   num_examples=32)[t]["accuracy"]
      assert m.scores[i, j] == direct == m.metrics[t][s]["accuracy"]
  saved = json.loads(open(m.save(str(tmp_path / "zs.json"))).read())
  assert saved["scores"] == m.scores.tolist() and saved["targets"] == TARGETS
  # The ranking for a target is its column, best first, ties by name.
  for j, t in enumerate(TARGETS):
    ranked = m.ranking(t)
    assert [s for _, s in ranked] == sorted(m.scores[:, j].tolist(), reverse=True)
    assert ranked == sorted(ranked, key=lambda kv: (-kv[1], kv[0]))
  assert pipeline.rank(library, rank_by="zero_shot", frozen=frozen, target=TARGETS[0],
                       run=RUN) == m.ranking(TARGETS[0])


def test_ranking_orders_prompts_by_their_zero_shot_metric(library, monkeypatch):
  """With planted metrics (one per prompt), the order follows the chosen metric, not the library's."""
  planted = {"source_0": {"accuracy": 40.0, "f1": 90.0}, "source_1": {"accuracy": 70.0, "f1": 10.0},
             "source_2": {"accuracy": 55.0, "f1": 50.0}}
  by_bytes = {library.get(t).prompt.tobytes(): m for t, m in planted.items()}
  monkeypatch.setattr(spot_run, "evaluate_prompt",
                      lambda frozen, task, prompt, run: by_bytes[np.asarray(prompt).tobytes()])
  acc = zero_shot.rank_zero_shot(None, library, "any_target",
                                 pipeline.RunConfig(metric="accuracy"))
  assert acc == [("source_1", 70.0), ("source_2", 55.0), ("source_0", 40.0)]
  f1 = zero_shot.rank_zero_shot(None, library, "any_target", pipeline.RunConfig(metric="f1"))
  assert [t for t, _ in f1] == ["source_0", "source_2", "source_1"]
  mean = zero_shot.rank_zero_shot(None, library, "any_target", pipeline.RunConfig(),
                                  exclude=["source_0"])
  assert mean == [("source_2", 52.5), ("source_1", 40.0)]
  with pytest.raises(ValueError, match="not among the validation metrics"):
    zero_shot.rank_zero_shot(None, library, "any_target", pipeline.RunConfig(metric="bleu"))
  with pytest.raises(ValueError, match="all excluded"):
    zero_shot.rank_zero_shot(None, library, "t", exclude=["source_0", "source_1", "source_2"])


def test_equal_zero_shot_scores_are_reported_as_a_tie_not_a_ranking(library, monkeypatch, caplog):
  """A frozen model that scores every prompt alike (a random one decodes no label: 0 for all) gives no
  ranking: the name order that sorts them is flagged, and choosing the top k from it warns."""
  monkeypatch.setattr(spot_run, "evaluate_prompt", lambda frozen, task, prompt, run: {"accuracy": 50.0})
  ranked = zero_shot.rank_zero_shot(None, library, "any_target", RUN)
  assert ranked == [("source_0", 50.0), ("source_1", 50.0), ("source_2", 50.0)]
  ties = pipeline.ranking_ties(ranked, 2)
  assert ties.all_tied and ties.tied and ties.chosen == ["source_0", "source_1"] and ties.score == 50.0
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    init = pipeline.weighted_average(library, ranked, top_k=2)
  assert "all 3 sources score 50" in caplog.text and "carries no information" in caplog.text
  assert "source_0, source_1, source_2" in caplog.text
  assert [s["task"] for s in init.sources] == ["source_0", "source_1"]


def test_recorded_scores_are_reused_until_the_prompt_or_the_settings_change(frozen, library, tmp_path,
                                                                            monkeypatch):
  """A rerun of `spot --rank-by zero_shot` evaluated every library source again on the target."""
  calls = []

  def planted(frozen_, task, prompt, run):
    calls.append(float(np.abs(prompt).sum()))
    return {"accuracy": calls[-1]}
  monkeypatch.setattr(spot_run, "evaluate_prompt", planted)
  record = str(tmp_path / "zero_shot")
  first = zero_shot.rank_zero_shot(frozen, library, TARGETS[0], RUN, record_dir=record)
  assert len(calls) == 3
  calls.clear()
  assert zero_shot.rank_zero_shot(frozen, library, TARGETS[0], RUN, record_dir=record) == first
  assert calls == []
  library.add("source_1", np.full((4, 32), 9.0, np.float32), "m", overwrite=True)  # a retrained source
  again = zero_shot.rank_zero_shot(frozen, library, TARGETS[0], RUN, record_dir=record)
  assert calls == [4 * 32 * 9.0] and again[0] == ("source_1", 4 * 32 * 9.0)
  calls.clear()
  fewer = pipeline.RunConfig(**{**vars(RUN), "eval_num_examples": 16})
  zero_shot.rank_zero_shot(frozen, library, TARGETS[0], fewer, record_dir=record)
  assert len(calls) == 3
  assert sorted(p.name for p in (tmp_path / "zero_shot" / TARGETS[0]).iterdir()) == [
      "from_source_0", "from_source_1", "from_source_2"]
