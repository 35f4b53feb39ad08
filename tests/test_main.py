"""The `spot-jax` entry point: dispatch, help, and `export` into each prompt format."""
import errno
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from spot_jax import __main__ as cli
from spot_jax import prompt_export


@pytest.fixture
def model_dir(tmp_path):
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
  prompt_export.export_numpy_checkpoint(prompt, str(tmp_path / "run"), 10)
  prompt_export.export_numpy_checkpoint(prompt + 1, str(tmp_path / "run"), 20)
  return tmp_path / "run", prompt + 1


def test_export_to_each_format(model_dir, tmp_path, capsys):
  run, latest = model_dir
  assert cli.main(["export", str(run), str(tmp_path / "p.npy"), "--format", "npy"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), latest)
  assert cli.main(["export", str(run), str(tmp_path / "t5x"), "--format", "t5x"]) == 0
  with open(tmp_path / "t5x" / "encoder.prompt.prompt.prompt", "rb") as f:
    np.testing.assert_array_equal(np.load(f), latest)
  assert cli.main(["export", str(run), str(tmp_path / "peft"), "--format", "peft", "--base_model", "t5-base"]) == 0
  tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
  assert list(tensors) == ["prompt_embeddings"]
  np.testing.assert_array_equal(tensors["prompt_embeddings"], latest)
  config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
  assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "SEQ_2_SEQ_LM"
  assert config["num_virtual_tokens"] == 3 and config["token_dim"] == 4
  assert config["num_transformer_submodules"] == 1 and config["base_model_name_or_path"] == "t5-base"
  assert "wrote peft prompt (3, 4)" in capsys.readouterr().out


def test_peft_export_takes_the_runs_hf_checkpoint_as_its_base_model(tmp_path, capsys):
  """AutoPeftModel loads an adapter's base_model_name_or_path: a run on a HF folder records it in its
  exports, and the adapter names it; with none recorded (or a T5X checkpoint) a note says what to pass."""
  from spot_jax import checkpoints
  from spot_jax.config import size_config
  from spot_jax.model import init_params
  import jax
  config = size_config("tiny", vocab_size=16, d_model=4, num_heads=1, head_dim=4, d_ff=8)
  params = init_params(config, jax.random.PRNGKey(0))
  hf_dir, t5x_dir = str(tmp_path / "hf_t5"), str(tmp_path / "t5x")
  checkpoints.write_hf(params, config, hf_dir)
  t5x_ckpt = checkpoints.write_t5x(params, t5x_dir, step=1)
  prompt = np.ones((3, 4), np.float32)
  for name, frozen in (("hf_run", hf_dir), ("t5x_run", t5x_ckpt), ("bare_run", None)):
    prompt_export.export_numpy_checkpoint(prompt, str(tmp_path / name), 5, frozen_model=frozen)
    assert cli.main(["export", str(tmp_path / name), str(tmp_path / f"{name}_peft"), "--format", "peft"]) == 0
    base = json.loads((tmp_path / f"{name}_peft" / "adapter_config.json").read_text())["base_model_name_or_path"]
    out = capsys.readouterr()
    if frozen == hf_dir:
      assert base == hf_dir and f"base_model_name_or_path: {hf_dir}" in out.out
    else:
      assert base is None and "pass --base_model HF_DIR_OR_ID" in out.err
  # --base_model wins over what the run recorded.
  assert cli.main(["export", str(tmp_path / "hf_run"), str(tmp_path / "named"), "--format", "peft",
                   "--base_model", "google/t5-v1_1-base"]) == 0
  assert json.loads((tmp_path / "named" / "adapter_config.json").read_text())[
      "base_model_name_or_path"] == "google/t5-v1_1-base"


def test_peft_export_keeps_a_hub_base_model_and_makes_a_relative_one_absolute(model_dir, tmp_path,
                                                                                monkeypatch, capsys):
  """A PEFT -> PEFT export keeps the source adapter's Hub id (it need not be downloaded here), and a
  relative --base_model is written absolute, so AutoPeftModel finds it from any working directory."""
  run, _ = model_dir
  hub = tmp_path / "hub_adapter"
  prompt_export.export_peft(np.ones((3, 4), np.float32), str(hub), base_model_name_or_path="google/t5-v1_1-base")
  assert cli.main(["export", str(hub), str(tmp_path / "again"), "--format", "peft"]) == 0
  assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())[
      "base_model_name_or_path"] == "google/t5-v1_1-base"
  assert "note:" not in capsys.readouterr().err
  monkeypatch.chdir(tmp_path)
  (tmp_path / "local_t5").mkdir()
  assert cli.main(["export", str(run), "rel", "--format", "peft", "--base_model", "./local_t5"]) == 0
  assert json.loads((tmp_path / "rel" / "adapter_config.json").read_text())[
      "base_model_name_or_path"] == str(tmp_path / "local_t5")


def test_help_and_unknown_command(capsys):
  assert cli.main([]) == 0
  assert "spot-jax demo" in capsys.readouterr().out
  assert cli.main(["frobnicate"]) == 2
  err = capsys.readouterr().err
  assert "unknown command 'frobnicate'\n" in err and "did you mean" not in err
  # A typo of a command names the command.
  assert cli.main(["trian"]) == 2
  assert "unknown command 'trian' (did you mean 'train'?)" in capsys.readouterr().err
  assert cli.main(["libary"]) == 2
  assert "(did you mean 'library'?)" in capsys.readouterr().err


def test_export_never_replaces_other_files(model_dir, tmp_path, capsys):
  run, latest = model_dir
  user_dir = tmp_path / "mine"
  user_dir.mkdir()
  (user_dir / "important.txt").write_text("keep me")
  for fmt in ("peft", "t5x"):
    for extra in ([], ["--overwrite"]):
      assert cli.main(["export", str(run), str(user_dir), "--format", fmt, *extra]) == 1
      assert "holds files that are not a" in capsys.readouterr().err
  assert sorted(p.name for p in user_dir.iterdir()) == ["important.txt"]
  assert cli.main(["export", str(run), str(user_dir), "--format", "npy"]) == 1
  assert "is a directory, but an npy export is one file" in capsys.readouterr().err


def test_export_to_a_path_ending_in_a_slash(model_dir, tmp_path, capsys, monkeypatch):
  """`export RUN x/newdir/ --format npy` said "[Errno 20] Not a directory: 'x/newdir/.tmp-…'" and left an
  empty x/newdir: a trailing '/' names a directory, which an npy export is not; t5x/peft write into it."""
  run, latest = model_dir
  monkeypatch.chdir(tmp_path)
  (tmp_path / "x").mkdir()
  assert cli.main(["export", str(run), "x/newdir/", "--format", "npy"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("spot-jax export: error: x/newdir/ ends in '/', a directory, but an npy export is "
                        "one file: name a .npy path, e.g. x/newdir/prompt.npy") and ".tmp-" not in err
  assert list((tmp_path / "x").iterdir()) == []  # nothing left behind
  for fmt in ("t5x", "peft"):
    assert cli.main(["export", str(run), f"x/{fmt}/", "--format", fmt, "--base_model", "t5"]) == 0
    assert "Errno" not in capsys.readouterr().err
  np.testing.assert_array_equal(np.load(tmp_path / "x" / "t5x" / "prompt.npy"), latest)
  assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["peft", "t5x"]


def test_a_failed_export_leaves_no_new_directories(model_dir, tmp_path, capsys, monkeypatch):
  run, _ = model_dir
  from spot_jax import fileio
  real_open = fileio.open_file

  def full(path, mode):  # the disk fills at the export's first write
    if "w" in mode:
      raise OSError(errno.ENOSPC, "No space left on device", path)
    return real_open(path, mode)
  monkeypatch.setattr(fileio, "open_file", full)
  (tmp_path / "x").mkdir()
  for fmt, out in (("npy", tmp_path / "x" / "new" / "deeper" / "p.npy"), ("t5x", tmp_path / "x" / "new" / "t5x"),
                   ("peft", tmp_path / "x" / "new" / "peft")):
    assert cli.main(["export", str(run), str(out), "--format", fmt, "--base_model", "t5"]) == 1
    err = capsys.readouterr().err
    assert err == (f"spot-jax export: error: cannot write {out}: No space left on device: free some space or "
                   "choose another directory\n")  # the destination, not its `.tmp-` name
    assert list((tmp_path / "x").iterdir()) == []  # not even the folders made for OUT


def test_export_replaces_its_own_kind_only_with_overwrite(model_dir, tmp_path, capsys):
  run, latest = model_dir
  for fmt, out in (("npy", tmp_path / "p.npy"), ("peft", tmp_path / "peft"), ("t5x", tmp_path / "t5x")):
    assert cli.main(["export", str(run / "numpy_checkpoints" / "checkpoint_10"), str(out), "--format", fmt]) == 0
    assert cli.main(["export", str(run), str(out), "--format", fmt]) == 1
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(run), str(out), "--format", fmt, "--overwrite"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), latest)
  tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
  np.testing.assert_array_equal(tensors["prompt_embeddings"], latest)


def test_export_to_an_unwritable_place_names_it(model_dir, tmp_path, capsys, monkeypatch):
  run, _ = model_dir
  from spot_jax import fileio

  real_open = fileio.open_file

  def denied(path, mode):  # what a read-only folder does (the suite runs as root, which may write anywhere)
    if "w" in mode:
      raise PermissionError(errno.EACCES, "Permission denied", path)
    return real_open(path, mode)
  monkeypatch.setattr(fileio, "open_file", denied)
  assert cli.main(["export", str(run), str(tmp_path / "p.npy"), "--format", "npy"]) == 1
  err = capsys.readouterr().err
  assert f"cannot write {tmp_path / 'p.npy'}: Permission denied" in err and ".tmp-" not in err
  assert not list(tmp_path.glob("p.npy*"))


def test_export_from_a_model_dir_says_which_step_it_took_and_why(tmp_path, capsys, monkeypatch):
  """`spot-jax export run1 exp/p.npy` said `wrote npy prompt (5, 4)`, not that it took the best step
  (10) rather than the last (30). It now names the step and why that one."""
  monkeypatch.chdir(tmp_path)
  prompt = np.ones((5, 4), np.float32)
  for step in (10, 20, 30):
    prompt_export.export_numpy_checkpoint(prompt * step, "run1", step)
  assert cli.main(["export", "run1", "exp/newest.npy", "--format", "npy"]) == 0
  assert capsys.readouterr().out == (
      "wrote npy prompt (5, 4) to exp/newest.npy: step 30 of run1, its newest export, as it has no "
      "numpy_checkpoints/best (training writes one when it evaluates: EVAL_PERIOD)\n")
  prompt_export.export_numpy_checkpoint(prompt * 10, "run1", 10, name="best", metrics={"accuracy": 90.0})
  assert cli.main(["export", "run1", "exp/p.npy", "--format", "npy"]) == 0
  assert capsys.readouterr().out == (
      "wrote npy prompt (5, 4) to exp/p.npy: step 10 of run1, its best-on-validation export "
      "(numpy_checkpoints/best), not its newest step 30: --which latest takes that one\n")
  np.testing.assert_array_equal(np.load(tmp_path / "exp" / "p.npy"), prompt * 10)
  assert cli.main(["export", "run1", "exp/l.npy", "--format", "npy", "--which", "latest"]) == 0
  assert capsys.readouterr().out == ("wrote npy prompt (5, 4) to exp/l.npy: step 30 of run1, its newest export "
                                     "(--which latest)\n")
  # A source that is the prompt itself (one export, a file): nothing was picked, nothing more is said.
  assert cli.main(["export", "run1/numpy_checkpoints/checkpoint_20", "exp/c.npy", "--format", "npy"]) == 0
  assert cli.main(["export", "exp/p.npy", "exp/again.npy", "--format", "npy"]) == 0
  assert capsys.readouterr().out == "wrote npy prompt (5, 4) to exp/c.npy\nwrote npy prompt (5, 4) to exp/again.npy\n"


def test_peft_export_without_a_base_model_speaks_of_a_run_only_when_there_is_one(tmp_path, capsys):
  """Exporting a PEFT adapter (or a .npy) that names no base model printed a note about "the run's
  frozen model" although there was no run. The note now says what the source is."""
  prompt = np.ones((3, 4), np.float32)
  prompt_export.export_peft(prompt, str(tmp_path / "adapter"))
  np.save(tmp_path / "p.npy", prompt)
  prompt_export.export_numpy_checkpoint(prompt, str(tmp_path / "run"), 5)
  fix = ("pass --base_model HF_DIR_OR_ID for AutoPeftModelForSeq2SeqLM, or load it with "
         "PeftModel.from_pretrained(your_t5, ADAPTER_DIR)\n")
  for source, why in (("adapter", "the source adapter names none either"),
                      ("p.npy", "a .npy file records no model"),
                      ("run", "the run's frozen model is not a Hugging Face folder it recorded")):
    assert cli.main(["export", str(tmp_path / source), str(tmp_path / f"{source}_out"), "--format", "peft"]) == 0
    assert capsys.readouterr().err == f"note: the adapter's base_model_name_or_path is unset ({why}): {fix}"
