"""The prompt library: entries, refusals, atomicity, damaged entries, concurrent writes (what an
entry records from its source: test_library_entry.py)."""
import json
import os
import re
import time

import numpy as np
import pytest

from spot_jax import prompt_export as pexp
from spot_jax.spot import library as lib_mod
from spot_jax.spot.library import PromptLibrary


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


def test_add_without_model_id_takes_the_frozen_model_the_source_records(tmp_path, capsys):
  """`library add` needed --model-id for an empty library, where `spot` names the frozen model by its
  checkpoint path's last two parts; a library built with another id then refused `spot`'s runs. Now
  the id comes from the source's records by the same rule; --model-id wins; a mismatch is refused."""
  from spot_jax.spot import cli
  from spot_jax.spot.training_runs import default_model_id
  frozen = str(tmp_path / "models" / "aud" / "hf_t5")
  run = str(tmp_path / "runs" / "rte")
  pexp.export_numpy_checkpoint(_prompt(seed=1), run, 8, frozen_model=frozen, task="rte")
  lib_dir = str(tmp_path / "lib")
  assert cli.main(["add", "--library", lib_dir, "--task", "rte", run]) == 0
  assert "model aud/hf_t5 ->" in capsys.readouterr().out
  lib = PromptLibrary(lib_dir)
  assert lib.model_id == "aud/hf_t5" == default_model_id(frozen, None)  # what `spot` would compare
  # A PEFT adapter's base_model_name_or_path, and another library's entry, are records too.
  adapter = pexp.export_peft(_prompt(seed=2), str(tmp_path / "adapter"), base_model_name_or_path=frozen)
  assert lib.add("cb", adapter, None)["model_id"] == "aud/hf_t5"
  assert PromptLibrary(str(tmp_path / "lib2")).add("rte", os.path.join(lib_dir, "rte"), None)["model_id"] == \
      "aud/hf_t5"
  # The explicit id wins over the record (and a mismatch with the library is still refused).
  assert PromptLibrary(str(tmp_path / "lib3")).add("rte", run, "hf_tiny")["model_id"] == "hf_tiny"
  other = str(tmp_path / "runs" / "boolq")
  pexp.export_numpy_checkpoint(_prompt(seed=3), other, 8, frozen_model=str(tmp_path / "hf_tiny"), task="boolq")
  with pytest.raises(ValueError, match=rf"its frozen model is '{tmp_path.name}/hf_tiny' \(from {tmp_path}/hf_tiny, "
                                       r"which .*boolq/numpy_checkpoints/checkpoint_8/export\.json \(frozen_model\) "
                                       r"records\) but the library holds prompts of 'aud/hf_t5'.*--model-id aud/hf_t5"):
    lib.add("boolq", other, None)
  assert "boolq" not in lib
  # A library named after the same folder by a shorter path (INITIAL_CHECKPOINT_PATH=hf_t5 as typed) takes it.
  short = PromptLibrary(str(tmp_path / "lib4"))
  short.add("cb", _prompt(seed=4), "hf_t5")
  assert short.add("rte", run, None)["model_id"] == "hf_t5"
  # A library named by the model's folder alone, as the docs name it (t5_1_1_lm100k_base), takes a run
  # whose record is that folder's checkpoint; a part of a folder's name is no match.
  step_run = str(tmp_path / "runs" / "wsc")
  pexp.export_numpy_checkpoint(_prompt(seed=5), step_run, 8, task="wsc",
                               frozen_model=str(tmp_path / "t5_1_1_lm100k_base" / "checkpoint_1100000"))
  by_folder = PromptLibrary(str(tmp_path / "lib6"))
  by_folder.add("cb", _prompt(seed=4), "t5_1_1_lm100k_base")
  assert by_folder.add("wsc", step_run, None)["model_id"] == "t5_1_1_lm100k_base"
  partial = PromptLibrary(str(tmp_path / "lib7"))
  partial.add("cb", _prompt(seed=4), "lm100k_base")
  with pytest.raises(ValueError, match="but the library holds prompts of 'lm100k_base'"):
    partial.add("wsc", step_run, None)
  # Without a record (a .npy), an empty library still needs the id, and says why.
  np.save(tmp_path / "p.npy", _prompt())
  with pytest.raises(ValueError, match=r"lib5 is empty and the prompt's source records no frozen model.*"
                                       r"--model-id"):
    PromptLibrary(str(tmp_path / "lib5")).add("x", str(tmp_path / "p.npy"), None)


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


def test_failed_add_leaves_no_partial_entry(tmp_path, disk_full):
  lib = PromptLibrary(str(tmp_path / "lib"))
  disk_full.arm()
  with pytest.raises(OSError, match="disk full"):
    lib.add("rte", _prompt(d=8), "t5_tiny", task_embedding=_prompt(seed=3))
  # no entry, no temporary, library not claimed (the write lock's file stays: it is no entry)
  assert os.listdir(tmp_path / "lib") == [".lock"]
  disk_full.disarm()
  lib.add("rte", _prompt(d=16), "other")  # the failed add did not fix d_model
  old = lib.get("rte").prompt
  disk_full.arm()
  with pytest.raises(OSError):
    lib.add("rte", _prompt(d=16, seed=9), "other", overwrite=True)
  disk_full.disarm()
  np.testing.assert_array_equal(lib.get("rte").prompt, old)
  assert sorted(os.listdir(tmp_path / "lib")) == [".lock", "library.json", "rte"]


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


def test_damaged_entry_is_an_error_naming_the_fix_everywhere(tmp_path):
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  lib.add("rte", _prompt(seed=1), "t5_tiny", task_embedding=_prompt(seed=2))
  lib.add("cb", _prompt(seed=3), "t5_tiny")
  open(os.path.join(d, "cb", "record.json"), "w").write("{x")
  fix = r"re-add the task with `spot-jax library add --library .* --task cb --overwrite SOURCE`"
  for read in (lib.list, lambda: lib.get("cb"), lib.prompts, lambda: lib.prompts("task_embedding")):
    with pytest.raises(ValueError, match=rf"entry 'cb': .*cb/record\.json is not valid JSON.*{fix}"):
      read()
  open(os.path.join(d, "cb", "record.json"), "w").write('{"task": "cb"}')
  with pytest.raises(ValueError, match=rf"record\.json lacks \['model_id', 'd_model', 'prompt_length'\].*{fix}"):
    lib.list()
  lib.add("cb", _prompt(seed=3), "t5_tiny", overwrite=True)  # the fix the message names works
  assert lib.tasks() == ["cb", "rte"]
  open(os.path.join(d, "rte", "task_embedding.npy"), "wb").write(pexp.npy_bytes(_prompt())[:40])
  for read in (lib.list, lambda: lib.get("rte"), lib.prompts, lambda: lib.prompts("task_embedding")):
    with pytest.raises(ValueError, match=r"entry 'rte': .*task_embedding\.npy is not a complete \.npy file "
                                         r"\(truncated\?\).*--task rte --overwrite"):
      read()


def test_missing_or_truncated_entry_files_are_errors_not_silent_drops(tmp_path):
  """An entry that lost its record.json is not skipped (its prompt would have ranked first); one that
  lost or truncated its prompt.npy fails `list` too, each naming the entry and the fix."""
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  for i, t in enumerate(("boolq", "cb", "rte")):
    lib.add(t, _prompt(seed=i), "t5_tiny", task_embedding=_prompt(seed=10 + i))
  os.makedirs(os.path.join(d, "similarity"))  # `library similarity`'s default output: not an entry
  open(os.path.join(d, "similarity", "similarity_e_average.json"), "w").write("{}")
  _crash_copy(d, "rte", "rte.tmp-0badc0de")  # an in-progress write: still ignored
  os.remove(os.path.join(d, "rte.tmp-0badc0de", "record.json"))
  os.remove(os.path.join(d, "boolq", "record.json"))
  assert lib.tasks() == ["boolq", "cb", "rte"]
  fix = (r"re-add the task with `spot-jax library add --library .* --task boolq --overwrite SOURCE`, or "
         r"drop the entry with `spot-jax library remove --library .* --task boolq` \(or delete .*boolq\)")
  for read in (lib.list, lambda: lib.get("boolq"), lib.prompts, lambda: lib.prompts("task_embedding"),
               lambda: lib.record("boolq")):
    with pytest.raises(ValueError, match=rf"entry 'boolq': .*boolq/record\.json is missing .*{fix}"):
      read()
  os.remove(os.path.join(d, "library.json"))  # lost too: the model id comes from a readable record
  assert lib.meta["model_id"] == "t5_tiny"
  lib.add("boolq", _prompt(seed=0), None, overwrite=True)  # the fix the message names works
  assert [r["task"] for r in lib.list()] == ["boolq", "cb", "rte"]
  os.remove(os.path.join(d, "boolq", "record.json"))
  lib.remove("boolq")  # and so does the other
  assert lib.tasks() == ["cb", "rte"]

  os.remove(os.path.join(d, "rte", "prompt.npy"))
  for read in (lib.list, lambda: lib.get("rte"), lib.prompts):
    with pytest.raises(ValueError, match=r"entry 'rte': .*rte/prompt\.npy is missing.*--task rte --overwrite"):
      read()
  lib.add("rte", _prompt(seed=2), "t5_tiny", overwrite=True)
  assert [r["task"] for r in lib.list()] == ["cb", "rte"]

  good = open(os.path.join(d, "cb", "prompt.npy"), "rb").read()
  open(os.path.join(d, "cb", "prompt.npy"), "wb").write(good[:-8])  # the data cut short
  with pytest.raises(ValueError, match=r"entry 'cb': .*cb/prompt\.npy is not a complete \.npy file "
                                       r"\(truncated\?\).*--task cb --overwrite"):
    lib.list()
  np.save(os.path.join(d, "cb", "prompt.npy"), _prompt(p=3))  # whole, but not what the record says
  with pytest.raises(ValueError, match=r"cb/prompt\.npy holds shape \[3, 8\], but its record\.json says "
                                       r"\[4, 8\]"):
    lib.prompts()
  np.save(os.path.join(d, "cb", "prompt.npy"), _prompt(seed=1))
  os.remove(os.path.join(d, "cb", "task_embedding.npy"))  # the record says it has one
  os.remove(os.path.join(d, "rte", "record.json"))
  with pytest.raises(ValueError, match=r"2 damaged entries:\n  library entry 'cb': .*task_embedding\.npy is "
                                       r"missing.*\n  library entry 'rte': .*record\.json is missing"):
    lib.list()


def test_concurrent_adds_wait_for_each_other_then_check(tmp_path, monkeypatch):
  """Two adds at the same moment into an empty library: the second waits for the first's write, then
  is refused (another model's d_model; the same task without overwrite) instead of mixing them."""
  import threading
  d = str(tmp_path / "lib")
  in_write, release = threading.Event(), threading.Event()
  write = lib_mod.fileio.atomic_write_dir

  def slow_first_write(directory, files):
    if not in_write.is_set():  # the first add stops inside its write, holding the lock
      in_write.set()
      assert release.wait(10)
    write(directory, files)
  monkeypatch.setattr(lib_mod.fileio, "atomic_write_dir", slow_first_write)
  first = threading.Thread(target=lambda: PromptLibrary(d).add("rte", _prompt(d=8), "t5_small"))
  first.start()
  assert in_write.wait(10)
  errors = {}

  def second(name, task, prompt, model_id):
    try:
      PromptLibrary(d).add(task, prompt, model_id)
    except (ValueError, FileExistsError) as e:
      errors[name] = e
  others = [threading.Thread(target=second, args=("model", "cb", _prompt(d=16), "t5_base")),
            threading.Thread(target=second, args=("same_task", "rte", _prompt(d=8, seed=3), "t5_small"))]
  for t in others:
    t.start()
  time.sleep(0.3)
  assert all(t.is_alive() for t in others)  # waiting for the lock, nothing written
  assert sorted(os.listdir(d)) == [".lock"]
  release.set()
  for t in [first] + others:
    t.join(10)
  assert isinstance(errors["model"], ValueError) and "d_model 16" in str(errors["model"])
  assert isinstance(errors["same_task"], FileExistsError) and "overwrite" in str(errors["same_task"])
  lib = PromptLibrary(d)
  assert lib.tasks() == ["rte"] and lib.meta["model_id"] == "t5_small"
  np.testing.assert_array_equal(lib.get("rte").prompt, _prompt(d=8))


def test_a_write_held_too_long_is_refused_naming_its_holder(tmp_path, monkeypatch):
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  lib.add("rte", _prompt(), "t5_tiny")
  monkeypatch.setattr(lib_mod, "LOCK_TIMEOUT_S", 0.2)
  with lib_mod.fileio.exclusive_lock(d, "library add"):  # another process's add, as the lock sees it
    with pytest.raises(lib_mod.fileio.InUseError, match=rf"{re.escape(d)} is in use by another "
                                                        rf"library write \(pid {os.getpid()} on .*\) for over"):
      lib.add("cb", _prompt(), "t5_tiny")
    with pytest.raises(lib_mod.fileio.InUseError):
      lib.remove("rte")
    assert lib.tasks() == ["rte"] and [r["task"] for r in lib.list()] == ["rte"]  # reads do not wait
  lib.add("cb", _prompt(), "t5_tiny")
  assert lib.tasks() == ["cb", "rte"]


def test_damaged_library_json_loses_nothing(tmp_path):
  d = str(tmp_path / "lib")
  lib = PromptLibrary(d)
  lib.add("rte", _prompt(d=8), "t5_tiny")
  open(os.path.join(d, "library.json"), "w").write("{x")
  with pytest.warns(UserWarning, match=r"library\.json is not valid JSON.*entries' records.*Delete"):
    assert lib.meta["model_id"] == "t5_tiny" and lib.meta["d_model"] == 8
  with pytest.warns(UserWarning), pytest.raises(ValueError, match="d_model 16"):
    lib.add("cb", _prompt(d=16), "t5_tiny")


def test_reading_a_missing_library_says_it_does_not_exist(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"library .*typo does not exist: check the --library path"):
    PromptLibrary.existing(str(tmp_path / "typo"))
  PromptLibrary(str(tmp_path / "lib")).add("rte", _prompt(), "t5_tiny")
  assert PromptLibrary.existing(str(tmp_path / "lib")).tasks() == ["rte"]


def test_an_entry_of_another_library_brings_its_task_embedding_steps_and_metrics(tmp_path):
  """Copying an entry into another library dropped its task embedding, steps and metrics."""
  first = PromptLibrary(str(tmp_path / "one"))
  first.add("a", _prompt(seed=0), "m", task_embedding=_prompt(seed=1), task_embedding_step=100, steps=1000,
            metrics={"accuracy": 71.5})
  second = PromptLibrary(str(tmp_path / "two"))
  record = second.add("a", str(tmp_path / "one" / "a"), "m")
  assert (record["has_task_embedding"], record["task_embedding_step"], record["steps"], record["metrics"]) == (
      True, 100, 1000, {"accuracy": 71.5})
  np.testing.assert_array_equal(second.get("a").task_embedding, _prompt(seed=1))
  np.testing.assert_array_equal(second.get("a").prompt, _prompt(seed=0))


def test_a_directory_that_is_not_an_entry_is_never_replaced_by_an_add(tmp_path):
  """`library similarity` writes <lib>/similarity/: `add --task similarity --overwrite` deleted it."""
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("a", _prompt(seed=0), "m")
  (tmp_path / "lib" / "similarity").mkdir()
  (tmp_path / "lib" / "similarity" / "similarity_cos_avg_tokens.json").write_text("{}")
  for overwrite in (False, True):
    with pytest.raises(FileExistsError, match=r"similarity is in the way: it is not an entry of library .*move "
                                              r"it out of the library"):
      lib.add("similarity", _prompt(seed=1), "m", overwrite=overwrite)
  assert os.listdir(tmp_path / "lib" / "similarity") == ["similarity_cos_avg_tokens.json"]
  assert lib.tasks() == ["a"]


def test_a_library_whose_entries_were_all_removed_takes_another_model(tmp_path):
  """library.json outlived its entries: an emptied library refused another model's prompts."""
  lib = PromptLibrary(str(tmp_path / "lib"))
  lib.add("a", _prompt(d=8), "m")
  lib.remove("a")
  assert lib.meta == {} and lib.model_id is None
  lib.add("b", _prompt(d=16), "other")
  assert (lib.d_model, lib.model_id) == (16, "other")
  assert json.loads((tmp_path / "lib" / "library.json").read_text())["model_id"] == "other"


def test_steps_below_one_are_refused_and_non_finite_metrics_recorded_as_null(tmp_path):
  """Before: `--steps -5` was stored, and `{"accuracy": NaN}` written as non-standard JSON."""
  lib = PromptLibrary(str(tmp_path / "lib"))
  prompt = np.ones((4, 8), np.float32)
  for kwargs, message in ((dict(steps=-5), r"steps must be a positive integer \(training steps\), got -5"),
                          (dict(steps=True), r"steps must be a positive integer"),
                          (dict(task_embedding=prompt, task_embedding_step=0), r"task_embedding_step must be a positive"),
                          (dict(metrics=[0.8]), r"metrics must be a JSON object")):
    with pytest.raises(ValueError, match=message):
      lib.add("rte", prompt, "tiny", **kwargs)
  assert lib.tasks() == [] and not os.path.exists(tmp_path / "lib" / "rte")
  with pytest.warns(UserWarning, match=r"metric\(s\) \['pearson'\] are NaN or infinite: recorded as null"):
    lib.add("rte", prompt, "tiny", steps=5, metrics={"accuracy": 81.2, "pearson": float("nan"), "note": "x"})
  assert lib.record("rte")["steps"] == 5
  with open(tmp_path / "lib" / "rte" / "record.json") as f:
    assert json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))["metrics"] == {
        "accuracy": 81.2, "pearson": None, "note": "x"}
