"""`library add|list|similarity|retrieve|init` run in-process on a temporary library."""
import json
import os

import numpy as np
import pytest

from spot_jax import prompt_export as pexp
from spot_jax.spot import cli
from spot_jax.spot import similarity as sim
from spot_jax.spot.library import PromptLibrary


@pytest.fixture
def sources(tmp_path):
  """Three source runs in three formats plus a target embedding close to source `rte`."""
  rng = np.random.default_rng(0)
  p = {t: rng.normal(size=(4, 16)).astype(np.float32) for t in ("rte", "boolq", "cb")}
  emb = {t: rng.normal(size=(4, 16)).astype(np.float32) for t in p}
  run = str(tmp_path / "rte_run")
  pexp.export_numpy_checkpoint(emb["rte"], run, 10, name="task_embedding")
  pexp.export_numpy_checkpoint(p["rte"], run, 100, name="best", metrics={"accuracy": 0.7})
  pexp.export_peft(p["boolq"], str(tmp_path / "boolq_peft"))
  pexp.save_npy(emb["boolq"], str(tmp_path / "boolq_emb.npy"))
  pexp.save_npy(p["cb"], str(tmp_path / "cb.npy"))
  target = emb["rte"] + 0.05 * rng.normal(size=(4, 16)).astype(np.float32)
  pexp.save_npy(target, str(tmp_path / "target.npy"))
  return tmp_path, p, emb


def _build(tmp_path):
  lib = str(tmp_path / "lib")
  assert cli.main(["library", "add", "--library", lib, "--task", "rte", "--model-id", "tiny",
                   str(tmp_path / "rte_run")]) == 0
  assert cli.main(["add", "--library", lib, "--task", "boolq", "--task-embedding",
                   str(tmp_path / "boolq_emb.npy"), "--metrics", '{"accuracy": 0.8}', "--steps", "50",
                   str(tmp_path / "boolq_peft")]) == 0
  assert cli.main(["add", "--library", lib, "--task", "cb", str(tmp_path / "cb.npy")]) == 0
  return lib


def test_add_and_list(sources, capsys):
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  out = capsys.readouterr().out
  assert "added rte: prompt [4, 16], task embedding [4, 16] from step 10, steps 100" in out
  assert cli.main(["list", "--library", lib]) == 0
  out = capsys.readouterr().out
  assert "3 task(s), model tiny, d_model 16" in out
  rows = {line.split()[0]: line for line in out.splitlines()[2:]}
  assert set(rows) == {"boolq", "cb", "rte"}
  assert "accuracy=0.7" in rows["rte"] and "100" in rows["rte"]
  assert "accuracy=0.8" in rows["boolq"] and "50" in rows["boolq"]
  assert rows["cb"].split()[2] == "-"  # no task embedding
  assert cli.main(["list", "--library", lib, "--json"]) == 0
  data = json.loads(capsys.readouterr().out)
  assert [e["task"] for e in data["entries"]] == ["boolq", "cb", "rte"]
  # A mistaken add is undone from the command line; an unknown task is one error line.
  assert cli.main(["remove", "--library", lib, "--task", "cb"]) == 0
  assert "removed cb from" in capsys.readouterr().out and "cb" not in os.listdir(lib)
  assert cli.main(["remove", "--library", lib, "--task", "cb"]) == 1
  assert "error: task 'cb' is not in library" in capsys.readouterr().err


def test_add_errors(sources, tmp_path, capsys):
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  capsys.readouterr()
  pexp.save_npy(np.ones((4, 32)), str(tmp_path / "big.npy"))
  assert cli.main(["add", "--library", lib, "--task", "wide", str(tmp_path / "big.npy")]) == 1
  err = capsys.readouterr().err
  assert "d_model 32" in err and "d_model 16" in err
  assert cli.main(["add", "--library", lib, "--task", "cb", str(tmp_path / "cb.npy")]) == 1
  assert "--overwrite" in capsys.readouterr().err
  assert cli.main(["add", "--library", lib, "--task", "x", str(tmp_path / "nothing")]) == 1
  assert "does not exist" in capsys.readouterr().err


def test_similarity_writes_json_and_png(sources, capsys):
  tmp_path, p, _ = sources
  lib = _build(tmp_path)
  capsys.readouterr()
  out_dir = str(tmp_path / "sim")
  assert cli.main(["similarity", "--library", lib, "--measure", "c_concat", "--measure", "e_average",
                   "--kind", "prompt", "--out-dir", out_dir]) == 0
  out = capsys.readouterr().out
  assert "== c_concat (prompt): 3 pairs" in out
  data = json.load(open(os.path.join(out_dir, "similarity_c_concat.json")))
  assert data["names"] == ["boolq", "cb", "rte"]
  m = np.array(data["matrix"])
  np.testing.assert_allclose(m, m.T)
  assert m[0, 2] == pytest.approx(sim.c_concat(p["boolq"], p["rte"]), rel=1e-5)
  for name in ("similarity_c_concat.png", "similarity_e_average.png"):
    with open(os.path.join(out_dir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # the printed table is ranked
  scores = [float(line.split()[-1]) for line in out.split("== e_average")[0].splitlines()
            if line.strip()[:1].isdigit()]
  assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_similarity_compares_task_embeddings_by_default_as_retrieve_does(sources, capsys):
  """`library similarity` compared final prompts by default (--kind prompt) where `retrieve` and `spot`
  rank by task embeddings, as SPoT measures task similarity."""
  tmp_path, p, emb = sources
  lib = _build(tmp_path)  # rte and boolq have a task embedding, cb has none
  capsys.readouterr()
  out_dir = str(tmp_path / "sim")
  with pytest.warns(UserWarning, match=r"\['cb'\] have no task embedding; their final prompt is used instead"):
    assert cli.main(["similarity", "--library", lib, "--measure", "e_average", "--out-dir", out_dir]) == 0
  out = capsys.readouterr().out
  assert "== e_average (task_embedding; final prompt of cb): 3 pairs" in out
  data = json.load(open(os.path.join(out_dir, "similarity_e_average_task_embedding.json")))
  assert data["kind"] == "task_embedding" and data["final_prompt_for"] == ["cb"]
  assert data["names"] == ["boolq", "cb", "rte"]
  m = np.array(data["matrix"])
  assert m[0, 2] == pytest.approx(sim.e_average(emb["boolq"], emb["rte"]), rel=1e-5)
  assert m[1, 2] == pytest.approx(sim.e_average(p["cb"], emb["rte"]), rel=1e-5)
  assert not os.path.exists(os.path.join(out_dir, "similarity_e_average.json"))
  # A library without any task embedding compares its final prompts, with a note; asked for, it is refused.
  bare = str(tmp_path / "bare")
  for task in ("rte", "cb"):
    pexp.save_npy(p[task], str(tmp_path / f"{task}_final.npy"))
    assert cli.main(["add", "--library", bare, "--task", task, "--model-id", "m",
                     str(tmp_path / f"{task}_final.npy")]) == 0
  capsys.readouterr()
  assert cli.main(["similarity", "--library", bare, "--out-dir", out_dir]) == 0
  out, err = capsys.readouterr()
  assert "== cos_avg_tokens (prompt): 1 pairs" in out
  assert f"note: no entry of library {bare} has a task embedding" in err and "--kind prompt" in err
  assert json.load(open(os.path.join(out_dir, "similarity_cos_avg_tokens.json")))["kind"] == "prompt"
  assert cli.main(["similarity", "--library", bare, "--kind", "task_embedding", "--out-dir", out_dir]) == 1
  assert "no entry has a task embedding" in capsys.readouterr().err


def test_similarity_on_needs_model_and_uses_activations(sources, capsys, monkeypatch):
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  assert cli.main(["similarity", "--library", lib, "--measure", "on"]) == 1
  assert "--model" in capsys.readouterr().err
  seen = {}

  def fake_fn(model_path, input_ids):
    seen["args"] = (model_path, input_ids)
    return lambda prompt: np.stack([prompt, prompt - 0.5, -prompt])  # [layers=3, P, d]

  monkeypatch.setattr(cli, "model_activations_fn", fake_fn)
  assert cli.main(["similarity", "--library", lib, "--measure", "on", "--model", "/ckpt",
                   "--window", "all", "--out-dir", str(tmp_path / "on")]) == 0
  assert seen["args"] == ("/ckpt", None)  # the model's own '<extra_id_0>' + EOS (cli.default_input_ids)
  assert cli.main(["similarity", "--library", lib, "--measure", "on", "--model", "/ckpt", "--input-ids", "7,1",
                   "--window", "all", "--out-dir", str(tmp_path / "on")]) == 0
  assert seen["args"] == ("/ckpt", [7, 1])
  data = json.load(open(tmp_path / "on" / "similarity_on_task_embedding.json"))
  assert data["window"] is None and np.allclose(np.diag(data["matrix"]), 1.0)


def test_retrieve_ranks_related_source_first(sources, capsys):
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  capsys.readouterr()
  with pytest.warns(UserWarning, match="cb"):  # cb has no task embedding: final prompt used
    assert cli.main(["retrieve", "--library", lib, "--target", str(tmp_path / "target.npy"),
                     "--json"]) == 0
  ranked = json.loads(capsys.readouterr().out)
  assert [r["task"] for r in ranked][0] == "rte" and len(ranked) == 3
  with pytest.warns(UserWarning, match="no task embedding"):
    assert cli.main(["retrieve", "--library", lib, "--target", str(tmp_path / "target.npy"),
                       "--exclude", "rte", "--top-k", "1", "--measure", "cos_per_token"]) == 0
  out = capsys.readouterr().out
  assert "rte" not in out.split("\n", 1)[1] and len(out.strip().splitlines()) == 3
  # A k below 1: 0 crashed the table with a TypeError, -1 dropped the last source without a word.
  for k in ("0", "-1"):
    with pytest.raises(SystemExit) as e:
      cli.main(["retrieve", "--library", lib, "--target", str(tmp_path / "target.npy"), "--top-k", k])
    assert e.value.code == 2 and f"--top-k: must be >= 1, got {k}" in capsys.readouterr().err
  assert cli.main(["retrieve", "--library", lib, "--target", str(tmp_path / "target.npy"), "--exclude", "rt"]) == 1
  assert "error: exclude names ['rt'], which the library does not hold (its tasks: ['boolq', 'cb', 'rte'])" in \
      capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*no task embedding")
def test_init_writes_weighted_average(sources, capsys):
  tmp_path, p, emb = sources
  lib = _build(tmp_path)
  capsys.readouterr()
  out_npy = str(tmp_path / "init.npy")
  assert cli.main(["init", "--library", lib, "--target", str(tmp_path / "target.npy"), "--out",
                   out_npy, "--top-k", "2", "--measure", "c_concat", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  srcs = summary["sources"]
  assert srcs[0]["task"] == "rte" and len(srcs) == 2
  target = np.load(tmp_path / "target.npy")
  cands = {"rte": emb["rte"], "boolq": emb["boolq"], "cb": p["cb"]}
  scores = {t: sim.c_concat(target, v) for t, v in cands.items()}
  top2 = sorted(scores, key=scores.get, reverse=True)[:2]
  w = np.array([max(scores[t], 0) for t in top2])
  w = w / w.sum()
  manual = sum(wi * p[t] for wi, t in zip(w, top2))  # the FINAL prompts are averaged
  np.testing.assert_allclose(np.load(out_npy), manual, rtol=1e-5, atol=1e-6)
  assert [s["task"] for s in srcs] == top2
  assert cli.main(["init", "--library", lib, "--target", str(tmp_path / "target.npy"), "--out",
                   str(tmp_path / "top1.npy"), "--strategy", "top1"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "top1.npy"), p["rte"])


def test_init_out_is_replaced_only_with_overwrite_and_never_a_directory(sources, capsys):
  """`library init --out` silently replaced an existing file (export refuses without --overwrite) and
  ended in a raw IsADirectoryError traceback for a directory."""
  tmp_path, p, _ = sources
  lib = _build(tmp_path)
  target = str(tmp_path / "target.npy")
  out = tmp_path / "mine.npy"
  np.save(out, np.zeros((2, 2), np.float32))
  (tmp_path / "a_dir").mkdir()
  capsys.readouterr()
  for where, said in ((out, f"error: {out} exists: pass --overwrite to replace it"),
                      (tmp_path / "a_dir", f"error: {tmp_path / 'a_dir'} is a directory, but an npy export is "
                       "one file"),
                      (f"{tmp_path}/new/", f"error: {tmp_path}/new/ ends in '/', a directory")):
    assert cli.main(["init", "--library", lib, "--target", target, "--out", str(where), "--strategy",
                     "top1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(said) and len(err.splitlines()) == 1, err
  np.testing.assert_array_equal(np.load(out), np.zeros((2, 2), np.float32))
  assert os.listdir(tmp_path / "a_dir") == [] and not os.path.exists(tmp_path / "new")
  assert cli.main(["init", "--library", lib, "--target", target, "--out", str(out), "--strategy", "top1",
                   "--overwrite"]) == 0
  np.testing.assert_array_equal(np.load(out), p["rte"])


def test_a_read_only_or_full_library_is_one_line_naming_it(sources, capsys, monkeypatch):
  """`library add` into a read-only file system, `init --out` on a full disk: tracebacks (only a
  PermissionError was ever expected). Now one line naming the destination and the fix."""
  import errno
  from spot_jax import fileio
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  capsys.readouterr()
  real_open = fileio.open_file
  raised = {}

  def unwritable(path, mode):
    if "w" in mode:
      raise OSError(raised["errno"], os.strerror(raised["errno"]), path)
    return real_open(path, mode)
  monkeypatch.setattr(fileio, "open_file", unwritable)
  raised["errno"] = errno.EROFS
  assert cli.main(["add", "--library", lib, "--task", "cb2", str(tmp_path / "cb.npy")]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"error: cannot write {lib}{os.sep}cb2") and ": Read-only file system: choose another " \
      "directory" in err and ".tmp-" not in err and len(err.splitlines()) == 1, err
  raised["errno"] = errno.ENOSPC
  out = tmp_path / "init.npy"
  assert cli.main(["init", "--library", lib, "--target", str(tmp_path / "target.npy"), "--out", str(out),
                   "--strategy", "top1"]) == 1
  assert capsys.readouterr().err == (f"error: cannot write {out}: No space left on device: free some space or "
                                     "choose another directory\n")
  raised["errno"] = errno.EBADF  # a bug keeps its traceback
  with pytest.raises(OSError, match="Bad file descriptor"):
    cli.main(["init", "--library", lib, "--target", str(tmp_path / "target.npy"), "--out", str(out),
              "--strategy", "top1"])
  assert "cb2" not in PromptLibrary(lib).tasks() and not [n for n in os.listdir(lib) if ".tmp-" in n]


@pytest.mark.filterwarnings("ignore:.*no task embedding")
def test_target_can_be_a_model_dir(sources, capsys):
  tmp_path, _, emb = sources
  lib = _build(tmp_path)
  short = str(tmp_path / "target_run")
  pexp.export_numpy_checkpoint(emb["boolq"] + 0.01, short, 5)  # no task_embedding export: newest used
  capsys.readouterr()
  with pytest.warns(UserWarning) as caught:
    assert cli.main(["retrieve", "--library", lib, "--target", short, "--json"]) == 0
  said = " | ".join(str(w.message) for w in caught)
  assert "no task_embedding export" in said and "from step 5, " in said  # the newest export's step
  assert json.loads(capsys.readouterr().out)[0]["task"] == "boolq"
  pexp.export_numpy_checkpoint(emb["rte"], short, 2, name="task_embedding")  # preferred when present
  with pytest.warns(UserWarning, match=r"from step 2, .*rte \(step 10\)"):  # the library's is from 10
    assert cli.main(["retrieve", "--library", lib, "--target", short, "--json"]) == 0
  assert json.loads(capsys.readouterr().out)[0]["task"] == "rte"


def test_library_list_skips_crash_leftovers(tmp_path, capsys):
  import shutil
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  lib.add("spot_bundled_movie", np.ones((2, 4), np.float32), "t5_tiny")
  lib.add("spot_bundled_nli", np.ones((2, 4), np.float32), "t5_tiny")
  shutil.copytree(os.path.join(d, "spot_bundled_nli"), os.path.join(d, "spot_bundled_nli.tmp-ed0e9335"))
  os.rename(os.path.join(d, "spot_bundled_movie"), os.path.join(d, "spot_bundled_movie.old-1a2b3c4d"))
  shutil.copytree(os.path.join(d, "spot_bundled_movie.old-1a2b3c4d"),
                  os.path.join(d, "spot_bundled_movie.tmp-1a2b3c4d"))
  assert cli.main(["library", "list", "--library", d, "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert [r["task"] for r in out["entries"]] == ["spot_bundled_movie", "spot_bundled_nli"]


def test_similarity_on_refuses_ids_beyond_a_small_vocabulary(sources, capsys, monkeypatch):
  import types

  import jax
  import spot_jax
  from spot_jax import config as config_lib
  from spot_jax import model as model_lib
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  cfg = config_lib.size_config("tiny", vocab_size=1152).replace(d_model=16)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s)).astype(np.float32),
                        model_lib.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
  monkeypatch.setattr(spot_jax, "load_t5", lambda path: types.SimpleNamespace(config=cfg, params=params))
  out = str(tmp_path / "on")
  assert cli.main(["similarity", "--library", lib, "--measure", "on", "--model", "/ckpt",
                   "--out-dir", out]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "no default input ids" in err and "1152" in err and "--input-ids" in err
  assert not os.path.exists(os.path.join(out, "similarity_on_task_embedding.json"))
  assert cli.main(["similarity", "--library", lib, "--measure", "on", "--model", "/ckpt",
                   "--input-ids", "1000,1", "--window", "all", "--out-dir", out]) == 0
  m = np.array(json.load(open(os.path.join(out, "similarity_on_task_embedding.json")))["matrix"])
  assert np.allclose(np.diag(m), 1.0) and 0 < m[0, 1] < 1  # real scores, not zeros


def test_retrieve_and_init_show_a_tie_that_decided_the_top_k(tmp_path, capsys, caplog):
  """Two sources with one embedding score alike: which is 'best' is name order, and the output says so."""
  rng = np.random.default_rng(3)
  lib = str(tmp_path / "lib")
  same, other = rng.normal(size=(4, 16)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)
  for task, p in (("twin_b", same), ("twin_a", same), ("other", other)):
    pexp.save_npy(p, str(tmp_path / f"{task}.npy"))
    assert cli.main(["add", "--library", lib, "--task", task, "--model-id", "m", "--task-embedding",
                     str(tmp_path / f"{task}.npy"), str(tmp_path / f"{task}.npy")]) == 0
  pexp.save_npy(same + 0.01 * rng.normal(size=(4, 16)).astype(np.float32), str(tmp_path / "target.npy"))
  capsys.readouterr()
  argv = ["--library", lib, "--target", str(tmp_path / "target.npy"), "--top-k", "1"]
  with caplog.at_level("WARNING", logger="spot_jax.spot"):
    assert cli.main(["retrieve", *argv, "--json"]) == 0
  ranked = json.loads(capsys.readouterr().out)
  assert ranked == [{"task": "twin_a", "score": pytest.approx(ranked[0]["score"]), "tied": True}]
  assert "top-1 selection is decided by a tie: twin_a, twin_b" in caplog.text
  assert cli.main(["retrieve", *argv[:-2]]) == 0  # the table marks both twins, not the other source
  out = capsys.readouterr().out
  assert [l.endswith("(tied)") for l in out.splitlines()[2:5]] == [True, True, False]
  assert "tie: the top-3" not in out and "all 3" not in out
  assert cli.main(["init", *argv, "--strategy", "top1", "--out", str(tmp_path / "i.npy"), "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["sources"][0]["tied"] and summary["ties"]["tied"]
  assert summary["ties"]["sources"] == ["twin_a", "twin_b"] and summary["ties"]["chosen"] == ["twin_a"]
  assert cli.main(["init", *argv, "--out", str(tmp_path / "i.npy"), "--overwrite"]) == 0
  assert "tie: the top-1 selection is decided by a tie" in capsys.readouterr().out


def test_help_names_the_command_users_type(capsys):
  """`spot-jax library VERB --help` shows `spot-jax library VERB`, not the module path."""
  with pytest.raises(SystemExit):
    cli.main(["library", "add", "--help"])
  assert capsys.readouterr().out.startswith("usage: spot-jax library add ")


def test_reading_commands_refuse_a_missing_library(sources, capsys):
  tmp_path, _, _ = sources
  typo = str(tmp_path / "lbi")
  for verb in (["list"], ["similarity"], ["retrieve", "--target", str(tmp_path / "target.npy")],
               ["init", "--target", str(tmp_path / "target.npy"), "--out", str(tmp_path / "i.npy")]):
    assert cli.main([*verb, "--library", typo]) == 1
    assert f"error: library {typo} does not exist: check the --library path" in capsys.readouterr().err
  assert not os.path.exists(typo) and not os.path.exists(tmp_path / "i.npy")


def test_damaged_record_fails_every_command_alike(sources, capsys):
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  open(os.path.join(lib, "cb", "record.json"), "w").write("{x")
  capsys.readouterr()
  for verb in (["list"], ["similarity"], ["retrieve", "--target", str(tmp_path / "target.npy")]):
    assert cli.main([*verb, "--library", lib]) == 1
    err = capsys.readouterr().err
    assert "error: library entry 'cb': " in err and "record.json is not valid JSON" in err
    assert "--task cb --overwrite SOURCE" in err and len(err.splitlines()) == 1


def test_entry_without_record_or_prompt_fails_every_command_naming_the_fix(sources, capsys):
  tmp_path, _, _ = sources
  lib = _build(tmp_path)
  target = str(tmp_path / "target.npy")
  reads = (["list"], ["similarity"], ["retrieve", "--target", target],
           ["init", "--target", target, "--out", str(tmp_path / "i.npy")])
  os.remove(os.path.join(lib, "rte", "record.json"))  # rte would rank first for this target
  capsys.readouterr()
  for verb in reads:
    assert cli.main([*verb, "--library", lib]) == 1
    err = capsys.readouterr().err
    assert "error: library entry 'rte': " in err and "rte/record.json is missing" in err, verb
    assert "--task rte --overwrite SOURCE" in err and "library remove --library" in err
    assert len(err.splitlines()) == 1
  assert cli.main(["remove", "--library", lib, "--task", "rte"]) == 0
  os.remove(os.path.join(lib, "cb", "prompt.npy"))
  capsys.readouterr()
  for verb in reads:
    assert cli.main([*verb, "--library", lib]) == 1
    err = capsys.readouterr().err
    assert "error: library entry 'cb': " in err and "cb/prompt.npy is missing" in err, verb
  assert not os.path.exists(tmp_path / "i.npy")


def _spot_run(run_dir, target, ranked, transfer):
  """The result.json `spot-jax spot --strategy best_of_top_k` writes, with every source measured."""
  from spot_jax.spot.pipeline import TargetResult
  from spot_jax import fileio
  chosen = [{"task": t, "score": s, "metrics": {"accuracy": transfer[t]}, "selection_score": transfer[t]}
            for t, s in ranked]
  result = TargetResult(target=target, strategy="best_of_top_k", rank_by="similarity", measure="cos_avg_tokens",
                        top_k=len(ranked), steps=20, ranked=ranked, chosen=chosen, init_description="",
                        transfer_metrics={}, extra={"selection_steps": 20})
  fileio.write_json_atomic(os.path.join(run_dir, "result.json"), result.to_dict(), default=float)


def test_transferability_judges_rankings_of_spot_runs(sources, tmp_path, capsys):
  tmp, _, emb = sources
  lib = _build(tmp)
  # Two targets: one whose ranking matches its transfer row, one where the best source came last.
  _spot_run(tmp / "t1", "t1", [("rte", 0.9), ("boolq", 0.5), ("cb", 0.1)], {"rte": 80.0, "boolq": 70.0, "cb": 60.0})
  _spot_run(tmp / "t2", "t2", [("rte", 0.9), ("boolq", 0.5), ("cb", 0.1)], {"rte": 60.0, "boolq": 70.0, "cb": 80.0})
  out_json = tmp / "judged.json"
  assert cli.main(["transferability", str(tmp / "t1"), str(tmp / "t2" / "result.json"), "--k", "1",
                   "--out", str(out_json)]) == 0
  text = capsys.readouterr().out
  assert "rte (1)" in text and "cb (3)" in text and "summary" in text
  judged = json.loads(out_json.read_text())["as run"]
  t1, t2 = judged["targets"]
  assert t1["kendall_tau"] == pytest.approx(1.0) and t2["kendall_tau"] == pytest.approx(-1.0)
  assert t1["regret"]["@1"] == 0.0 and t2["regret"]["@1"] == pytest.approx(25.0)  # (80 - 60) / 80
  assert judged["summary"]["best_in_top_1"] == 1 and judged["summary"]["regret@1"] == pytest.approx(12.5)
  # Re-ranked by two measures: t1's run has the target's task embedding (the rte source's, so rte
  # ranks first by cos_avg_tokens, which gives 1 for a prompt against itself).
  pexp.export_numpy_checkpoint(emb["rte"], str(tmp / "t1" / "task_embedding"), 10, name="task_embedding")
  assert cli.main(["transferability", str(tmp / "t1"), "--library", lib, "--measure", "cos_avg_tokens",
                   "--measure", "e_average", "--json"]) == 0
  both = json.loads(capsys.readouterr().out)
  assert set(both) == {"cos_avg_tokens", "e_average"}
  assert both["cos_avg_tokens"]["targets"][0]["sources"][0]["task"] == "rte"
  assert cli.main(["transferability", str(tmp / "t1"), "--measure", "cos_avg_tokens"]) == 1
  assert "needs the library" in capsys.readouterr().err
  assert cli.main(["transferability", str(tmp / "nowhere")]) == 1
  assert "no result.json" in capsys.readouterr().err


def test_a_metrics_path_that_is_not_there_is_named_as_such(tmp_path, capsys):
  np.save(tmp_path / "p.npy", np.ones((4, 8), np.float32))
  assert cli.main(["add", "--library", str(tmp_path / "lib"), "--task", "rte", "--model-id", "tiny",
                   str(tmp_path / "p.npy"), "--metrics", str(tmp_path / "missing.json")]) == 1
  err = capsys.readouterr().err
  assert "is neither a JSON object nor an existing JSON file: check the path" in err, err
