"""T5X native checkpoints: write/read round trip, the real T5X-written fixture, spec rewriting, errors."""
import json
import os
import re
import shutil

import ml_dtypes
import msgpack
import numpy as np
import pytest

from spot_jax.checkpoints import (CheckpointError, absolute_spec, detect_format, read_params, read_t5x,
                                  write_t5x)
from spot_jax.checkpoints.infer_config import expected_shapes, flatten, unflatten
from spot_jax.checkpoints.t5x import DUMMY_BUCKET, choose_chunk_shape, decode_msgpack
from spot_jax.config import T5Config

# `../shared/fixtures` beside the repository (CI has it); override with SPOT_JAX_T5X_FIXTURE.
REAL = os.environ.get("SPOT_JAX_T5X_FIXTURE", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "t5x_tiny_checkpoint",
    "checkpoint_3"))

TINY = T5Config(vocab_size=16, d_model=8, num_heads=2, head_dim=4, d_ff=12, num_encoder_layers=2,
                num_decoder_layers=1, relative_attention_num_buckets=4)


def _params(config=TINY, seed=0, bf16=("token_embedder/embedding",)):
  rng = np.random.default_rng(seed)
  flat = {name: rng.standard_normal(shape).astype(np.float32)
          for name, shape in expected_shapes(config).items()}
  for name in bf16:
    flat[name] = flat[name].astype(ml_dtypes.bfloat16)
  return unflatten(flat)


def _assert_same(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(np.asarray(fa[k], np.float32), np.asarray(fb[k], np.float32), err_msg=k)


def test_round_trip_is_exact_with_bf16_and_inline_arrays(tmp_path):
  params = _params()
  ckpt = write_t5x(params, str(tmp_path), step=42)
  assert ckpt == os.path.join(str(tmp_path), "checkpoint_42")
  files = sorted(os.listdir(ckpt))
  assert "checkpoint" in files and not any(".tmp" in f for f in os.listdir(str(tmp_path)))
  # 2-D kernels go to zarr (gzip level 1), layer-norm scales and relpos tables stay inline.
  emb = os.path.join(ckpt, "target.token_embedder.embedding")
  zarray = json.load(open(os.path.join(emb, ".zarray")))
  assert zarray["dtype"] == "bfloat16" and zarray["compressor"] == {"id": "gzip", "level": 1}
  assert "target.encoder.layers_0.attention.query.kernel" in files
  assert not any("layer_norm" in f or "rel_embedding" in f for f in files)
  raw = open(os.path.join(ckpt, "checkpoint"), "rb").read()
  state = decode_msgpack(raw)
  assert state["version"] == 3 and int(state["optimizer"]["state"]["step"]) == 42
  target = state["optimizer"]["target"]
  assert target["token_embedder"]["embedding"]["kvstore"] == {
      "driver": "gfile", "path": "target.token_embedder.embedding"}
  assert isinstance(target["encoder"]["encoder_norm"]["scale"], np.ndarray)
  # Inline arrays are msgpack ExtType 1, as flax writes them.
  seen = []
  msgpack.unpackb(raw, ext_hook=lambda code, data: seen.append(code) or None, strict_map_key=False)
  assert set(seen) == {1}
  # flax (what T5X restores with) decodes it to the same tree.
  serialization = pytest.importorskip("flax.serialization")
  restored = serialization.msgpack_restore(raw)
  assert restored["optimizer"]["state"]["step"].shape == () and int(restored["optimizer"]["state"]["step"]) == 42
  np.testing.assert_array_equal(restored["optimizer"]["target"]["encoder"]["encoder_norm"]["scale"],
                                flatten(params)["encoder/encoder_norm/scale"])

  ckpt_dir, back = read_t5x(ckpt)
  assert ckpt_dir == ckpt
  _assert_same(params, back)
  assert flatten(back)["token_embedder/embedding"].dtype == ml_dtypes.bfloat16


def test_model_dir_reads_newest_step_and_infers_config(tmp_path):
  write_t5x(_params(seed=1), str(tmp_path), step=2)
  newest = _params(seed=2)
  write_t5x(newest, str(tmp_path), step=10)
  assert detect_format(str(tmp_path)) == "t5x"
  config, params = read_params(str(tmp_path))
  _assert_same(newest, params)
  assert config == TINY.replace(dropout_rate=config.dropout_rate)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    write_t5x(newest, str(tmp_path), step=10)


def test_relu_tied_variant_is_inferred(tmp_path):
  v10 = TINY.replace(feed_forward="relu", tie_word_embeddings=True)
  write_t5x(_params(v10), str(tmp_path), step=1)
  config, params = read_params(str(tmp_path))
  assert config.feed_forward == "relu" and config.tie_word_embeddings
  assert "logits_dense" not in params["decoder"] and "wi" in params["encoder"]["layers_0"]["mlp"]


def test_dtype_cast_and_overrides(tmp_path):
  write_t5x(_params(bf16=()), str(tmp_path), step=1)
  config, params = read_params(str(tmp_path), dtype="bfloat16",
                               overrides={"relative_attention_max_distance": 64, "dtype": "bfloat16"})
  assert config.relative_attention_max_distance == 64 and config.dtype == "bfloat16"
  assert all(v.dtype == ml_dtypes.bfloat16 for v in flatten(params).values())


def test_given_config_must_agree(tmp_path):
  write_t5x(_params(), str(tmp_path), step=1)
  config, _ = read_params(str(tmp_path), config=TINY.replace(relative_attention_max_distance=32))
  assert config.relative_attention_max_distance == 32  # non-shape fields come from the caller
  with pytest.raises(CheckpointError) as e:
    read_params(str(tmp_path), config=TINY.replace(d_ff=64, num_heads=4, head_dim=2))
  msg = str(e.value)
  assert "d_ff: config says 64, checkpoint has 12" in msg and "num_heads: config says 4" in msg
  assert "head_dim: config says 2, checkpoint has 4" in msg and "d_model" not in msg


def test_a_variant_mismatch_names_the_variant_file_that_matches(tmp_path):
  """models/t5_1_0.gin with models/sizes/from_checkpoint.gin on a gated-GELU checkpoint said "...
  models/sizes/from_checkpoint.gin in place of the size file", the file already in use, and named no
  variant file. Now: the variant file of the checkpoint's kind, and from_checkpoint.gin only when a
  dimension differs."""
  write_t5x(_params(), str(tmp_path / "gated"), step=1)  # TINY: gated-GELU, untied (T5 1.1)
  t5_1_0 = {"feed_forward": "relu", "tie_word_embeddings": True}
  with pytest.raises(CheckpointError) as e:  # models/t5_1_0.gin + from_checkpoint.gin
    read_params(str(tmp_path / "gated"), overrides=t5_1_0, check_shape_overrides=True)
  msg = str(e.value)
  assert "feed_forward: config says 'relu', checkpoint has 'gated-gelu'" in msg, msg
  assert ("The checkpoint's MLP and output embedding are those of --gin_file=models/t5_1_1.gin: give it in place "
          "of the variant file (or models/t5_1_1_lm_adapted.gin, the same architecture).") in msg, msg
  assert "from_checkpoint" not in msg and "field by field" not in msg, msg
  with pytest.raises(CheckpointError) as e:  # a size file too: its dimensions differ as well
    read_params(str(tmp_path / "gated"), config=TINY.replace(d_ff=64, **t5_1_0))
  msg = str(e.value)
  assert ("models/sizes/from_checkpoint.gin in place of the size file, with the variant file (models/*.gin) "
          "that matches it: --gin_file=models/t5_1_1.gin (or models/t5_1_1_lm_adapted.gin") in msg, msg
  relu = TINY.replace(**t5_1_0)
  write_t5x(_params(relu), str(tmp_path / "relu"), step=1)
  with pytest.raises(CheckpointError, match=r"those of --gin_file=models/t5_1_0.gin: give it in place of the "
                                            r"variant file\.$"):
    read_params(str(tmp_path / "relu"), overrides={"feed_forward": "gated-gelu", "tie_word_embeddings": False},
                check_shape_overrides=True)


def test_the_variant_files_are_those_gin_models_sets():
  """`VARIANT_GIN_FILES` names each variant file by the kind its bindings set."""
  import pathlib
  import gin
  from spot_jax import gin_utils
  from spot_jax.checkpoints.infer_config import variant_gin_file
  files = sorted(p for p in (gin_utils.GIN_DIR / "models").glob("*.gin") if not p.name.endswith("_bf16.gin"))
  assert {p.name for p in files} == {"t5_1_0.gin", "t5_1_1.gin", "t5_1_1_lm_adapted.gin", "mt5.gin"}
  for path in files:
    gin_utils.parse_gin([str(path)], [])
    config = T5Config(**{name: gin.query_parameter(f"spot_jax.model_config.{name}")
                         for name in ("feed_forward", "tie_word_embeddings", "vocab_size")})
    want = "models/t5_1_1.gin" if path.name == "t5_1_1_lm_adapted.gin" else f"models/{path.name}"
    assert variant_gin_file(config) == want, path
    assert pathlib.Path(gin_utils.GIN_DIR / want).is_file()
  gin.clear_config()


def test_missing_array_is_named(tmp_path):
  flat = flatten(_params())
  del flat["encoder/layers_1/mlp/wo/kernel"]
  write_t5x(unflatten(flat), str(tmp_path), step=1)
  with pytest.raises(CheckpointError, match=r"missing array 'encoder/layers_1/mlp/wo/kernel'"):
    read_params(str(tmp_path))


def test_shape_contradicting_config_is_named(tmp_path):
  flat = flatten(_params())
  flat["decoder/layers_0/mlp/wi_1/kernel"] = np.zeros((8, 5), np.float32)
  write_t5x(unflatten(flat), str(tmp_path), step=1)
  with pytest.raises(CheckpointError, match=r"'decoder/layers_0/mlp/wi_1/kernel' has shape \(8, 5\).*"
                                            r"expects \(8, 12\)"):
    read_params(str(tmp_path))


def test_corrupt_msgpack_and_missing_zarr(tmp_path):
  ckpt = write_t5x(_params(), str(tmp_path / "a"), step=1)
  os.rename(os.path.join(ckpt, "target.encoder.layers_0.mlp.wo.kernel"), os.path.join(ckpt, "moved"))
  with pytest.raises(CheckpointError, match="encoder/layers_0/mlp/wo/kernel"):
    read_t5x(ckpt)
  bad = tmp_path / "b" / "checkpoint_1"
  bad.mkdir(parents=True)
  (bad / "checkpoint").write_bytes(b"\xc1\xc1 not msgpack")
  with pytest.raises(CheckpointError, match="not a valid msgpack checkpoint file"):
    read_params(str(bad))
  (bad / "checkpoint").write_bytes(msgpack.packb({"params": {}}))
  with pytest.raises(CheckpointError, match="no optimizer/target"):
    read_params(str(bad))


def test_missing_chunk_file_is_an_error_not_zeros(tmp_path):
  """T5X stores every chunk (no fill value): a deleted chunk file must not read back as zeros."""
  ckpt = write_t5x(_params(), str(tmp_path), step=1)
  array_dir = os.path.join(ckpt, "target.encoder.layers_0.mlp.wo.kernel")
  chunks = [f for f in os.listdir(array_dir) if not f.startswith(".")]
  os.remove(os.path.join(array_dir, chunks[0]))
  with pytest.raises(CheckpointError, match=r"encoder/layers_0/mlp/wo/kernel.*missing or damaged") as e:
    read_params(str(tmp_path))
  assert "copy the checkpoint again" in str(e.value) and "tensorstore_spec" not in str(e.value)


@pytest.mark.parametrize("damage,reason", [
    ("no_directory", r"\.zarray\" does not exist"),
    ("no_zarray", r"\.zarray\" does not exist"),
    ("invalid_json", r"Invalid JSON"),
    ("no_shape", r"\"shape\""),
])
def test_damaged_array_metadata_names_the_parameter_and_the_fix(tmp_path, damage, reason):
  """TensorStore's error ends with the whole spec as JSON (kilobytes); the message keeps its one line."""
  ckpt = write_t5x(_params(), str(tmp_path), step=1)
  array_dir = os.path.join(ckpt, "target.encoder.layers_0.mlp.wo.kernel")
  zarray = os.path.join(array_dir, ".zarray")
  if damage == "no_directory":
    shutil.rmtree(array_dir)
  elif damage == "no_zarray":
    os.remove(zarray)
  else:
    with open(zarray, "w") as f:
      f.write("{not json" if damage == "invalid_json" else json.dumps({"zarr_format": 2}))
  with pytest.raises(CheckpointError) as e:
    read_params(str(tmp_path))
  msg = str(e.value)
  assert re.search(rf"parameter 'encoder/layers_0/mlp/wo/kernel' at {re.escape(array_dir)} .*{reason}.*"
                   r"Fix: copy the checkpoint again", msg), msg
  assert "tensorstore_spec" not in msg and len(msg) < 800, msg
  assert e.value.__cause__ is None and e.value.__suppress_context__  # no spec in the traceback either


def test_chunks_omitted_for_a_declared_fill_value_read_as_fills(tmp_path):
  """Zarr lets a writer with a fill value skip chunks equal to it: those are not damage."""
  import tensorstore as ts
  ckpt = write_t5x(_params(), str(tmp_path), step=1)
  name = "target.encoder.layers_0.mlp.wo.kernel"
  want = read_t5x(ckpt)[1]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  array_dir = os.path.join(ckpt, name)
  shutil.rmtree(array_dir)
  store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": array_dir},
                   "metadata": {"shape": list(want.shape), "chunks": list(want.shape),
                                "dtype": "<f4", "fill_value": 0,
                                "compressor": {"id": "gzip", "level": 1}}}, create=True).result()
  store.write(np.zeros_like(want)).result()  # equal to the fill value: the chunk is not written
  assert [f for f in os.listdir(array_dir) if not f.startswith(".")] == []
  got = read_t5x(ckpt)[1]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
  np.testing.assert_array_equal(got, np.zeros_like(want))


def test_path_of_neither_format(tmp_path):
  (tmp_path / "notes.txt").write_text("hi")
  with pytest.raises(CheckpointError, match="neither a T5X checkpoint .* nor a Hugging Face"):
    read_params(str(tmp_path))
  with pytest.raises(CheckpointError, match="does not exist"):
    read_params(str(tmp_path / "nope"))


def test_spec_rewrite_local_and_gcs():
  stored = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": "target.a.kernel"},
            "metadata": {"shape": [2, 2]}}
  local = absolute_spec(stored, "ckpts/checkpoint_3")
  assert local["kvstore"] == {"driver": "file",
                              "path": os.path.join(os.path.abspath("ckpts/checkpoint_3"), "target.a.kernel")}
  assert stored["kvstore"]["driver"] == "gfile"  # input untouched
  written_on_gcs = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": DUMMY_BUCKET,
                                                  "path": "target.a.kernel"}}
  for spec in (stored, written_on_gcs):
    got = absolute_spec(spec, "gs://t5-data/pretrained_models/t5x/small/checkpoint_1100000/")
    assert got["kvstore"] == {"driver": "gcs", "bucket": "t5-data",
                              "path": "pretrained_models/t5x/small/checkpoint_1100000/target.a.kernel"}
  # tensorstore < 0.1.14 layout: `path` beside `kvstore`.
  legacy = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": DUMMY_BUCKET}, "path": "target.b"}
  got = absolute_spec(legacy, "gs://bkt/run/checkpoint_1")
  assert got["kvstore"] == {"driver": "gcs", "bucket": "bkt", "path": "run/checkpoint_1/target.b"}
  assert "path" not in got
  # A GCS-written checkpoint copied to local disk reads locally.
  assert absolute_spec(written_on_gcs, "/data/ck")["kvstore"] == {"driver": "file",
                                                                  "path": "/data/ck/target.a.kernel"}
  with pytest.raises(CheckpointError, match="unsupported TensorStore kvstore driver 's3'"):
    absolute_spec({"driver": "zarr", "kvstore": {"driver": "s3", "path": "x"}}, "/d")


def test_chunk_shape_divides_and_fits():
  assert choose_chunk_shape([8, 4], 1000) == [8, 4]
  for shape, target in (([32128, 4], 16384), ([4, 32128], 4096), ([768, 2048], 100000)):
    chunks = choose_chunk_shape(shape, target)
    assert all(s % c == 0 for s, c in zip(shape, chunks)) and np.prod(chunks) <= target


def test_real_t5x_checkpoint_loads_and_runs(shared_fixtures):
  # Skips with the reason in a fresh clone; fails under CI, which has ../shared/fixtures.
  real = REAL if "SPOT_JAX_T5X_FIXTURE" in os.environ else str(
      shared_fixtures / "t5x_tiny_checkpoint" / "checkpoint_3")
  config, params = read_params(real)
  assert (config.vocab_size, config.d_model, config.num_heads, config.head_dim, config.d_ff) == (
      32128, 4, 2, 2, 8)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 2)
  assert config.feed_forward == "gated-gelu" and not config.tie_word_embeddings
  assert config.relative_attention_num_buckets == 4 and config.relative_attention_max_distance == 128
  flat = flatten(params)
  assert set(flat) == set(expected_shapes(config))  # optimizer state is not read
  assert all(v.dtype == np.float32 for v in flat.values())
  jnp = pytest.importorskip("jax.numpy")
  from spot_jax.model import T5
  logits = T5(config).apply({"params": params}, jnp.asarray([[5, 6, 7, 1, 0]]), jnp.asarray([[0, 5, 6]]))
  assert logits.shape == (1, 3, 32128) and bool(jnp.all(jnp.isfinite(logits)))


def test_version_2_bfloat16_stored_as_uint16(tmp_path):
  params = _params()
  flat = flatten(params)
  flat["token_embedder/embedding"] = flat["token_embedder/embedding"].view(np.uint16)
  ckpt = write_t5x(unflatten(flat), str(tmp_path), step=1)
  from spot_jax.checkpoints.t5x import encode_msgpack
  path = os.path.join(ckpt, "checkpoint")
  state = decode_msgpack(open(path, "rb").read())
  state["version"] = 2
  open(path, "wb").write(encode_msgpack(state))
  _, back = read_t5x(ckpt)
  _assert_same(params, back)


# ----------------------------------------------------------------------------- the paths users pass

def test_the_checkpoint_file_itself_reads_its_directory(tmp_path):
  params = _params()
  ckpt = write_t5x(params, str(tmp_path), step=7)
  config, got = read_params(os.path.join(ckpt, "checkpoint"))  # the msgpack file, not its directory
  assert config.vocab_size == TINY.vocab_size
  _assert_same(params, got)


def test_a_missing_step_lists_the_steps_there(tmp_path):
  write_t5x(_params(), str(tmp_path), step=7)
  write_t5x(_params(), str(tmp_path), step=30)
  with pytest.raises(CheckpointError, match=r"checkpoint_9 does not exist; .* exists and its checkpoints are "
                                            r"steps \[7, 30\]"):
    read_params(str(tmp_path / "checkpoint_9"))


def test_step_directories_without_a_checkpoint_file(tmp_path):
  (tmp_path / "checkpoint_100" / "target.token_embedder.embedding").mkdir(parents=True)
  with pytest.raises(CheckpointError, match=r"has checkpoint_100 but no `checkpoint` msgpack file in any of "
                                            r"them: an incomplete copy"):
    read_params(str(tmp_path))
  (tmp_path / "checkpoint_100" / "_CHECKPOINT_METADATA").write_text("{}")
  # Orbax's step metadata without T5X's `state` item (read in tests/test_checkpoints_t5x_orbax.py).
  with pytest.raises(CheckpointError, match=r"checkpoint_100 is an Orbax checkpoint step without its `state` item"):
    read_params(str(tmp_path / "checkpoint_100"))


class _SilentGcs:
  """tf.io.gfile stand-in for a machine without network: every call waits (as TF's retries do)."""

  def __init__(self, error=None):
    import threading
    self.release = threading.Event()
    self.error = error

  def exists(self, path):
    if self.error is not None:
      raise self.error
    self.release.wait(60)
    return True

  isdir = listdir = exists


class FailedPreconditionError(Exception):
  """Named as tf.errors' class is."""


def test_gcs_without_network_fails_fast_naming_the_fix(monkeypatch):
  import time
  from spot_jax.checkpoints import t5x
  gcs = _SilentGcs()
  monkeypatch.setattr(t5x, "_gfile", lambda: gcs)
  monkeypatch.setenv("SPOT_JAX_GCS_TIMEOUT", "0.5")
  start = time.monotonic()
  try:
    with pytest.raises(CheckpointError, match=r"no answer from Google Cloud Storage for "
                                              r"gs://silent-bucket/t5x/checkpoint_1 within 0.5 s.*gcloud auth "
                                              r"application-default login.*gsutil -m cp -r "
                                              r"gs://silent-bucket/t5x/checkpoint_1 DIR.*SPOT_JAX_GCS_TIMEOUT"):
      read_params("gs://silent-bucket/t5x/checkpoint_1")
  finally:
    gcs.release.set()
  assert time.monotonic() - start < 10


def test_gcs_error_is_a_checkpoint_error_naming_the_fix(monkeypatch):
  from spot_jax.checkpoints import t5x
  error = FailedPreconditionError("Error executing an HTTP request: libcurl code 6 meaning 'Could not resolve "
                                  "hostname'")
  monkeypatch.setattr(t5x, "_gfile", lambda: _SilentGcs(error))
  with pytest.raises(CheckpointError, match=r"cannot read gs://failing-bucket/ckpt: FailedPreconditionError: "
                                            r"Error executing an HTTP request.*copy the files to local disk"):
    read_params("gs://failing-bucket/ckpt")
