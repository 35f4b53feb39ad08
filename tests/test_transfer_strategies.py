"""SPoT's transfer strategies on a tiny frozen model and the bundled tasks: the weighted average,
best of top-k, and the top-k multi-task mixture (its seqio mixture and its recorded run)."""
import importlib.util  # noqa: F401  (gin-config 0.5 needs it imported first)
import json
import os

import numpy as np
import pytest
import seqio

from spot_jax import prompt_io
from spot_jax.spot import run_record
from spot_jax.spot import transfer_strategies as strategies

from spot_pipeline_setup import P, RUN, TARGET, _train_records

pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_weighted_average_init_is_the_normalized_sum_of_the_top_k(library):
  lib = library[0]
  ranked = [("spot_bundled_number", 0.9), ("spot_bundled_movie", 0.6),
            ("spot_bundled_topic", 0.2)]
  init = strategies.weighted_average(lib, ranked, top_k=2)
  manual = (0.9 / 1.5) * lib.get("spot_bundled_number").prompt \
      + (0.6 / 1.5) * lib.get("spot_bundled_movie").prompt
  np.testing.assert_allclose(init.prompt, manual, rtol=1e-6, atol=1e-7)
  assert [s["task"] for s in init.sources] == ["spot_bundled_number", "spot_bundled_movie"]
  np.testing.assert_allclose([s["weight"] for s in init.sources], [0.6, 0.4])


def test_multitask_mixture_trains_on_the_top_k_and_the_target_examples_proportionally(frozen, library,
                                                                                     tmp_path):
  """SPoT's top-k multi-task mixture: the k sources and the target, T5's examples-proportional rates."""
  lib = library[0]
  ranked = [("spot_bundled_topic", 0.8), ("spot_bundled_movie", 0.7),
            ("spot_bundled_number", 0.1)]
  init = strategies.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=6, top_k=2, run=RUN)
  name = init.extra["mixture"]
  mixture = seqio.get_mixture_or_task(name)
  assert isinstance(mixture, seqio.Mixture)
  assert sorted(t.name for t in mixture.tasks) == sorted(["spot_bundled_movie", "spot_bundled_topic", TARGET])
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {  # min(train examples, 2^19)
      t.name: float(t.num_input_examples("train")) for t in mixture.tasks}
  assert init.extra["mixture_tasks"] == ["spot_bundled_topic", "spot_bundled_movie", TARGET]
  sources_only = strategies.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path / "no_target"),
                                              steps=1, top_k=2, run=RUN, include_target=False, rate=1.0)
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
  sub = strategies.register_mixture("test_spot_sub_mix", ["spot_bundled_movie", "spot_bundled_topic"], 1.0)
  name = strategies.register_mixture("test_spot_with_sub", [sub, TARGET], strategies.examples_proportional)
  mixture = seqio.get_mixture_or_task(name)
  examples = {t.name: float(t.num_input_examples("train")) for t in mixture.tasks}
  assert sorted(examples) == sorted(["spot_bundled_movie", "spot_bundled_topic", TARGET])
  # Each leaf's share of the whole: the target's rate over the sub-mixture's (the sum of its tasks').
  total = mixture.total_rate
  assert mixture.get_rate(seqio.get_mixture_or_task(TARGET)) == examples[TARGET]
  assert total == pytest.approx(sum(examples.values()))


def test_a_source_mixture_s_tasks_at_rate_0_add_nothing_to_its_share():
  """A source trained on a mixture with tasks it only evaluates (spot_glue_mix's MNLI-mismatched and
  AX, spot_super_glue_t5_mix's WSC-simple eval, AX-b, AX-g: no train split) failed: the rate function
  was asked to weigh them and raised "has no 'train' split"."""
  import tasks  # noqa: F401  (registers spot_glue_ax_v200)
  sub = "test_spot_sub_mix_with_eval_only"
  if sub in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(sub)
  seqio.MixtureRegistry.add(sub, [("spot_bundled_movie", 1.0), ("spot_glue_ax_v200", 0.0)])
  name = strategies.register_mixture("test_spot_with_sub_eval_only", [sub, TARGET],
                                     strategies.examples_proportional)
  mixture = seqio.get_mixture_or_task(name)
  movie, target, ax = (seqio.get_mixture_or_task(t) for t in ("spot_bundled_movie", TARGET, "spot_glue_ax_v200"))
  assert mixture.rate_per_task_name[sub] == float(movie.num_input_examples("train"))
  assert mixture.get_rate(movie) == pytest.approx(float(movie.num_input_examples("train")))
  assert mixture.get_rate(target) == float(target.num_input_examples("train"))
  assert mixture.get_rate(ax) == 0.0


def test_best_of_top_k_keeps_the_source_with_the_best_short_run(frozen, library, tmp_path):
  lib = library[0]
  ranked = [("spot_bundled_movie", 0.9), ("spot_bundled_number", 0.5),
            ("spot_bundled_topic", 0.1)]
  init = strategies.best_of_top_k(frozen, lib, ranked, TARGET, str(tmp_path), steps=4, top_k=2, run=RUN)
  assert [s["task"] for s in init.sources] == ["spot_bundled_movie", "spot_bundled_number"]
  best = max(init.sources, key=lambda s: s["selection_score"])  # first of equals = better ranked
  assert init.extra["chosen"] == best["task"]
  np.testing.assert_array_equal(init.prompt, lib.get(best["task"]).prompt)
  for s in init.sources:  # each recorded score is the validation metric of that short run's prompt
    run_dir = str(tmp_path / f"from_{s['task']}")
    short = prompt_io.load_prompt(prompt_io.checkpoint_export_dir(run_dir, 4))
    assert strategies.evaluate_prompt(frozen, TARGET, short, RUN) == s["metrics"]
    assert s["selection_score"] == s["metrics"]["accuracy"]


def test_best_of_top_k_never_picks_nan_and_says_a_tie(frozen, library, tmp_path, monkeypatch, caplog):
  lib = library[0]
  scores = {"spot_bundled_movie": float("nan"), "spot_bundled_number": 0.5, "spot_bundled_topic": 0.5}
  monkeypatch.setattr(strategies, "_train_from", lambda *a, **k: np.zeros((2, 2), np.float32))
  runs = iter(scores.values())
  monkeypatch.setattr(strategies, "evaluate_prompt", lambda *a, **k: {"accuracy": next(runs)})
  ranked = [(t, 1.0 - i / 10) for i, t in enumerate(scores)]
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    init = strategies.best_of_top_k(frozen, lib, ranked, TARGET, str(tmp_path), steps=4, top_k=3, run=RUN)
  # The NaN run came first: a plain `>` never replaces it.
  assert init.extra["chosen"] == "spot_bundled_number"
  assert "tied with spot_bundled_topic, the better-ranked is kept" in init.description
  assert "ties with spot_bundled_topic" in caplog.text
  runs = iter([float("nan")] * 3)
  init = strategies.best_of_top_k(frozen, lib, ranked, TARGET, str(tmp_path), steps=4, top_k=3, run=RUN)
  assert init.extra["chosen"] == "spot_bundled_movie" and "no source scored a number" in init.description


def test_mixture_run_refuses_another_mixture_or_init(frozen, library, tmp_path):
  lib = library[0]
  ranked = [("spot_bundled_topic", 0.8), ("spot_bundled_movie", 0.7), ("spot_bundled_number", 0.1)]
  first = strategies.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN)
  run_dir = str(tmp_path / first.extra["mixture"])
  assert os.path.exists(os.path.join(run_dir, run_record.INIT_SHA256_FILE))
  trained = _train_records(run_dir)
  again = strategies.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN)
  np.testing.assert_array_equal(again.prompt, first.prompt)  # the identical call reuses it
  assert _train_records(run_dir) == trained
  # Another top-2 (another library or ranking) has the same mixture name but other tasks: refused.
  other = [("spot_bundled_number", 0.9)] + ranked[:2]
  with pytest.raises(ValueError, match="new MODEL_DIR") as e:
    strategies.multitask_mixture(frozen, lib, other, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN)
  assert run_dir in str(e.value) and "spot_bundled_number" in str(e.value)
  with pytest.raises(ValueError, match="new MODEL_DIR"):  # another rate
    strategies.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2, run=RUN,
                                 rate=2.0)
  with pytest.raises(ValueError, match="new MODEL_DIR"):  # another base init
    strategies.multitask_mixture(frozen, lib, ranked, TARGET, str(tmp_path), steps=2, top_k=2,
                                 run=strategies.RunConfig(**{**vars(RUN), "seed": 1}))
  assert _train_records(run_dir) == trained


def test_source_names_that_differ_in_an_odd_character_get_their_own_run_directory():
  """glue:rte and glue_rte (seqio allows ':') shared one selection run directory, whose init record then
  refused the second as "a previous pipeline run with other settings"."""
  from spot_jax.spot.training_runs import _safe
  assert _safe("glue_rte_v200") == "glue_rte_v200"  # plain names keep their directories
  assert _safe("glue:rte") != _safe("glue_rte") and _safe("glue:rte").startswith("glue_rte_")
  assert _safe("glue:rte") == _safe("glue:rte")
