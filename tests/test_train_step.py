"""The prompt-only step: gradients reach the prompt alone, microbatching equals the full batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import optim, partitioning
from spot_jax import train_step as ts
from spot_jax.config import size_config
from spot_jax.model import init_params, param_logical_axes

CFG = size_config("tiny", vocab_size=64, d_model=32, num_heads=2, head_dim=16, d_ff=64, dropout_rate=0.0)


def _batch(seed=0):
  rs = np.random.RandomState(seed)
  enc = rs.randint(1, 64, (8, 10)).astype(np.int32)
  enc[::2, 7:] = 0
  tgt = rs.randint(2, 64, (8, 4)).astype(np.int32)
  w = np.ones_like(tgt)
  w[1::2, 3] = 0
  tgt[1::2, 3] = 0
  dec = np.concatenate([np.zeros((8, 1), np.int32), tgt[:, :-1]], axis=1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=tgt,
              decoder_loss_weights=w)


def test_microbatches_give_the_full_batch_update():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tx = optim.adafactor()
  prompt = np.random.RandomState(1).uniform(-0.5, 0.5, (3, 32)).astype(np.float32)
  out = []
  for mb in (1, 4):
    step = jax.jit(ts.make_train_step(CFG, tx, enable_dropout=False, num_microbatches=mb))
    state, metrics = step(ts.init_state(prompt, tx), params, _batch(), jax.random.key(0, impl="rbg"))
    out.append((np.asarray(state.prompt), float(metrics["loss"])))
  np.testing.assert_allclose(out[0][0], out[1][0], atol=1e-5)
  assert abs(out[0][1] - out[1][1]) < 1e-5


def test_loss_is_mean_token_cross_entropy_plus_z_loss():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
  total, count = ts.cross_entropy(logits, jnp.array([[0, 1]]), jnp.array([[1, 0]]), z_loss=0.0)
  np.testing.assert_allclose(float(total), -np.log(0.5), rtol=1e-6)
  assert float(count) == 1.0
  total_z, _ = ts.cross_entropy(logits + 1.0, jnp.array([[0, 1]]), jnp.array([[1, 1]]), z_loss=1e-4)
  expected = -np.log(0.5) - np.log(0.8) + 1e-4 * 2 * 1.0  # log Z = 1 after the shift
  np.testing.assert_allclose(float(total_z), expected, rtol=1e-5)


def _summed_token_loss(params, prompt, batch, z_loss=1e-4):
  """T5X's loss with LOSS_NORMALIZING_FACTOR=None, computed apart from train_step: optax's cross-entropy
  plus z-loss, summed over the weighted target tokens (not divided by their count)."""
  import optax
  from spot_jax.model import T5
  logits = T5(CFG).apply({"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                         prompt=prompt)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
  z = z_loss * jnp.square(jax.nn.logsumexp(logits, axis=-1))
  return jnp.sum((ce + z) * batch["decoder_loss_weights"])


@pytest.mark.parametrize("num_microbatches", [1, 2])
def test_the_gradient_is_that_of_the_summed_token_loss_as_t5x_without_a_normalizing_factor(num_microbatches):
  """prompt-tuning runs T5X with LOSS_NORMALIZING_FACTOR=None: the loss is summed over target tokens, so a
  batch with more of them weighs more. Plain SGD at rate 1 shows the gradient each step hands the optimizer."""
  import optax
  jax.config.update("jax_default_matmul_precision", "highest")
  try:
    params = init_params(CFG, jax.random.PRNGKey(0))
    tx = optax.sgd(1.0)
    prompt = np.random.RandomState(1).uniform(-0.5, 0.5, (3, 32)).astype(np.float32)
    full, sparse = _batch(0), _batch(1)
    sparse["decoder_loss_weights"] = sparse["decoder_loss_weights"].copy()
    sparse["decoder_loss_weights"][:, 1:] = 0  # 8 target tokens against the other batch's 28
    step = jax.jit(ts.make_train_step(CFG, tx, enable_dropout=False, num_microbatches=num_microbatches))
    state = ts.init_state(prompt, tx)
    expected = jnp.asarray(prompt)
    reference = jax.jit(jax.value_and_grad(_summed_token_loss, argnums=1))  # op by op it took ~20 s
    for batch in (full, sparse):
      counts = float(np.sum(batch["decoder_loss_weights"]))
      total, grad = reference(params, expected, batch)
      before = np.asarray(state.prompt)
      state, metrics = step(state, params, batch, jax.random.key(0, impl="rbg"))
      np.testing.assert_allclose(before - np.asarray(state.prompt), grad, rtol=2e-4, atol=1e-6)
      # Logged: the mean over target tokens, as before (comparable across batches and runs).
      np.testing.assert_allclose(float(metrics["loss"]), float(total) / counts, rtol=1e-5)
      assert float(metrics["target_tokens"]) == counts
      expected = expected - grad
  finally:
    jax.config.update("jax_default_matmul_precision", None)


@pytest.mark.parametrize("matmul_dtype", ["activation", "bfloat16"])
def test_compiled_step_has_no_weight_gradients(matmul_dtype):
  """XLA's FLOP count of the step is close to forward + activation backward, far below full backprop.
  With bfloat16 products too, whose custom backward also returns the kernel's cotangent: XLA must
  drop it, as it drops JAX's own."""
  cfg = CFG.replace(matmul_dtype=matmul_dtype)
  params = init_params(cfg, jax.random.PRNGKey(0))
  if matmul_dtype == "bfloat16":
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  tx = optim.adafactor()
  prompt = np.zeros((3, 32), np.float32)
  state = ts.init_state(prompt, tx)
  batch = _batch()
  rng = jax.random.key(0, impl="rbg")
  prompt_only = jax.jit(ts.make_train_step(cfg, tx, enable_dropout=False)).lower(state, params, batch, rng)
  loss_fn = ts.make_loss_fn(cfg, enable_dropout=False)
  full = jax.jit(jax.grad(lambda p, f: loss_fn(p, f, batch, rng)[0], argnums=(0, 1))).lower(prompt, params)
  flops_prompt = prompt_only.compile().cost_analysis()["flops"]
  flops_full = full.compile().cost_analysis()["flops"]
  assert flops_prompt < 0.85 * flops_full, (flops_prompt, flops_full)


def test_non_finite_update_is_skipped_and_flagged():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tx = optim.adafactor(learning_rate=float("inf"))
  prompt = np.ones((3, 32), np.float32)
  step = jax.jit(ts.make_train_step(CFG, tx, enable_dropout=False))
  state, _ = step(ts.init_state(prompt, tx), params, _batch(), jax.random.key(0, impl="rbg"))
  assert int(state.nonfinite_step) == 1 and int(state.step) == 1
  np.testing.assert_array_equal(np.asarray(state.prompt), prompt)


def test_a_prompt_diverging_to_huge_finite_values_is_flagged():
  """lr 1e30: the loss stays finite (the first RMSNorm rescales the prompt) but its norm overflows."""
  params = init_params(CFG, jax.random.PRNGKey(0))
  tx = optim.adafactor(learning_rate=1e30)
  prompt = np.ones((3, 32), np.float32)
  step = jax.jit(ts.make_train_step(CFG, tx, enable_dropout=False))
  state, metrics = step(ts.init_state(prompt, tx), params, _batch(), jax.random.key(0, impl="rbg"))
  assert np.isfinite(float(metrics["loss"]))
  assert int(state.nonfinite_step) == 1
  np.testing.assert_array_equal(np.asarray(state.prompt), prompt)
  assert float(metrics["prompt_norm"]) == float(np.linalg.norm(prompt))


def test_jitted_step_on_a_mesh_keeps_the_prompt_replicated():
  mesh = partitioning.make_mesh(2)
  shardings = partitioning.tree_shardings(param_logical_axes(CFG), mesh)
  params = jax.device_put(init_params(CFG, jax.random.PRNGKey(0)), shardings)
  tx = optim.adafactor()
  step = ts.jit_train_step(ts.make_train_step(CFG, tx, enable_dropout=True), mesh, shardings)
  state = jax.device_put(ts.init_state(np.zeros((3, 32), np.float32), tx), partitioning.replicated(mesh))
  state, metrics = step(state, params, partitioning.global_batch(_batch(), mesh), jax.random.key(0, impl="rbg"))
  assert state.prompt.sharding.spec == jax.sharding.PartitionSpec()
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_compiler_options_default_by_platform_and_reach_the_compile():
  import types
  cpu_mesh = partitioning.make_mesh(1)
  assert ts.default_compiler_options(cpu_mesh) == {}
  gpu_mesh = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform="gpu")]))
  assert ts.default_compiler_options(gpu_mesh) == {"xla_gpu_dot_merger_threshold_mb": 0}
  # An option XLA does not know fails the compile, so the options do reach it.
  shardings = partitioning.tree_shardings(param_logical_axes(CFG), cpu_mesh)
  params = jax.device_put(init_params(CFG, jax.random.PRNGKey(0)), shardings)
  tx = optim.adafactor()
  step = ts.jit_train_step(ts.make_train_step(CFG, tx, enable_dropout=False), cpu_mesh, shardings,
                           compiler_options={"xla_no_such_option_spot_jax": 1})
  state = ts.init_state(np.zeros((3, 32), np.float32), tx)
  batch = partitioning.global_batch(_batch(), cpu_mesh)
  lowered = step.lower(state, params, batch, jax.random.key(0, impl="rbg"))
  try:
    lowered.compile()
  except Exception as e:  # XLA's error type differs between jax versions
    assert "xla_no_such_option_spot_jax" in str(e)
  else:
    raise AssertionError("an unknown XLA option compiled: compiler_options did not reach XLA")


def _abstract_step_args(cfg, mesh, shardings, tx, batch_size, enc_len, dec_len, prompt_length=3):
  """Shapes and shardings of the step's arguments on `mesh`, for compiling without data."""
  from spot_jax.model import param_shapes
  is_shape = lambda x: isinstance(x, tuple)
  frozen = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh), param_shapes(cfg),
                        shardings, is_leaf=is_shape)
  rows, rep = partitioning.batch_sharding(mesh), partitioning.replicated(mesh)
  batch = {k: jax.ShapeDtypeStruct((batch_size, enc_len if k == "encoder_input_tokens" else dec_len), jnp.int32,
                                   sharding=rows) for k in ts.BATCH_KEYS}
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                       jax.eval_shape(lambda: ts.init_state(jnp.zeros((prompt_length, cfg.d_model)), tx)))
  return state, frozen, batch, jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)


def test_microbatches_on_a_data_parallel_mesh_cut_each_devices_memory_and_work():
  """On an 8x1 mesh, 4 microbatches of a 32-row batch must leave each device 1 row per microbatch. Split in
  contiguous blocks (the old split), microbatch i lived on 2 of the 8 data shards: XLA all-gathered it and
  every device computed all 4 of its rows, so the step kept mb=1's temp memory (60.3 vs 56.5 MiB per device
  for a d_model-512 T5) and ran each scan iteration at mb=1's FLOPs, 4 times."""
  import re
  cfg = CFG.replace(dropout_rate=0.1)
  mesh = partitioning.make_mesh(1)
  assert mesh.shape == {"data": 8, "model": 1}
  shardings = partitioning.tree_shardings(param_logical_axes(cfg), mesh)
  tx = optim.adafactor()
  args = _abstract_step_args(cfg, mesh, shardings, tx, batch_size=32, enc_len=64, dec_len=8)
  compiled = {}
  for mb in (1, 4):
    step = ts.make_train_step(cfg, tx, enable_dropout=True, num_microbatches=mb, mesh=mesh)
    compiled[mb] = ts.jit_train_step(step, mesh, shardings, donate=False).lower(*args).compile()
  temp = {mb: c.memory_analysis().temp_size_in_bytes for mb, c in compiled.items()}
  cost = {mb: c.cost_analysis() for mb, c in compiled.items()}
  flops = {mb: (v[0] if isinstance(v, list) else v)["flops"] for mb, v in cost.items()}
  assert temp[4] < 0.5 * temp[1], temp  # measured: 0.31
  assert flops[4] < 0.4 * flops[1], flops  # XLA counts the scan body once: 1 row instead of 4 (0.25)
  # No batch row moves between devices: no all-gather of the int32 token arrays.
  assert not re.search(r"s32\[[^\]]*\]\S* all-gather", compiled[4].as_text())


def test_microbatches_on_a_mesh_give_the_full_batch_update_and_mesh_independent_dropout():
  """mb=4 of a 32-row batch on meshes. Without dropout, one SGD step on 8x1 gives the prompt of the full
  batch on one device; with dropout, 8x1 and 4x2 give the prompt of mb=4 on one device (the masks follow
  each row's place in its microbatch, never the mesh). Tolerance: float32 rounding of the summed gradient
  at the highest matmul precision, rtol 2e-4 and atol 1e-6 (as the summed-loss test above); loss rtol 1e-5."""
  import optax
  cfg = CFG.replace(dropout_rate=0.3)
  jax.config.update("jax_default_matmul_precision", "highest")
  try:
    params = init_params(cfg, jax.random.PRNGKey(0))
    tx = optax.sgd(1.0)
    prompt = np.random.RandomState(1).uniform(-0.5, 0.5, (3, 32)).astype(np.float32)
    batch = {k: np.concatenate([v, _batch(1)[k], _batch(2)[k], _batch(3)[k]]) for k, v in _batch(0).items()}
    one, data8, model2 = (partitioning.make_mesh(1, devices=jax.devices()[:1]), partitioning.make_mesh(1),
                          partitioning.make_mesh(2))

    def run(mesh, mb, dropout):
      shardings = partitioning.tree_shardings(param_logical_axes(cfg), mesh)
      step = ts.jit_train_step(ts.make_train_step(cfg, tx, enable_dropout=dropout, num_microbatches=mb, mesh=mesh),
                               mesh, shardings, donate=False)
      state = jax.device_put(ts.init_state(prompt, tx), partitioning.replicated(mesh))
      state, metrics = step(state, jax.device_put(params, shardings), partitioning.global_batch(batch, mesh),
                            jax.random.key(0, impl="rbg"))
      return np.asarray(state.prompt), float(metrics["loss"])

    def assert_same(got, want, what):
      np.testing.assert_allclose(got[0], want[0], rtol=2e-4, atol=1e-6, err_msg=what)
      np.testing.assert_allclose(got[1], want[1], rtol=1e-5, err_msg=what)

    full = run(one, 1, False)
    assert_same(run(data8, 4, False), full, "8x1 mb=4 vs 1x1 mb=1, no dropout")
    dropped = run(one, 4, True)
    assert np.abs(dropped[0] - full[0]).max() > 1e-3  # dropout does act
    assert_same(run(data8, 4, True), dropped, "8x1 mb=4 vs 1x1 mb=4, dropout")
    assert_same(run(model2, 4, True), dropped, "4x2 mb=4 vs 1x1 mb=4, dropout")
  finally:
    jax.config.update("jax_default_matmul_precision", None)


def test_the_trainers_step_cache_keys_on_the_frozen_weights_shardings(monkeypatch):
  """A train() under T5X's 2-D rules ('embed' over 'data') after one under the default rules reused the
  step jitted for the default placement and failed with JAX's "Sharding passed to jit does not match the
  sharding on the respective arg"."""
  import gin
  from spot_jax import frozen_model
  from spot_jax import train as train_lib
  monkeypatch.setattr(train_lib, "_STEP_CACHE", {})
  mesh = partitioning.make_mesh(2)
  params = init_params(CFG, jax.random.PRNGKey(0))
  tx = optim.adafactor()
  _, default = frozen_model.place_frozen(params, CFG, mesh)
  first = train_lib._compiled_step(CFG, tx, mesh, False, 1, default)  # pylint: disable=protected-access
  assert train_lib._compiled_step(CFG, tx, mesh, False, 1, default) is first  # pylint: disable=protected-access
  rules_2d = tuple((k, "data") if k == "embed" else (k, v) for k, v in partitioning.DEFAULT_RULES)
  gin.bind_parameter("spot_jax.partitioning.logical_rules.rules", rules_2d)
  try:
    frozen, shardings = frozen_model.place_frozen(params, CFG, mesh)
    assert frozen["token_embedder"]["embedding"].sharding.spec == jax.sharding.PartitionSpec("model", "data")
    step = train_lib._compiled_step(CFG, tx, mesh, False, 1, shardings)  # pylint: disable=protected-access
    assert step is not first
    state = jax.device_put(ts.init_state(np.zeros((3, 32), np.float32), tx), partitioning.replicated(mesh))
    _, metrics = step(state, frozen, partitioning.global_batch(_batch(), mesh), jax.random.key(0, impl="rbg"))
    assert np.isfinite(float(metrics["loss"]))
  finally:
    gin.clear_config()


def test_a_batch_rule_other_than_data_is_refused():
  """Batches are always split over 'data' (as T5X's PjitPartitioner.data_partition_spec, which ignores the
  rules); a 'batch' rule saying otherwise was silently ignored."""
  import gin
  mesh = partitioning.make_mesh(2)
  for axis in (None, "model", ("data", "model")):
    rules = tuple((k, axis) if k == "batch" else (k, v) for k, v in partitioning.DEFAULT_RULES)
    gin.bind_parameter("spot_jax.partitioning.logical_rules.rules", rules)
    try:
      with pytest.raises(ValueError, match=r"logical rule \('batch', .*\) in spot_jax.partitioning.logical_rules"
                                           r".rules: spot_jax splits every batch over the mesh's 'data' axis"):
        partitioning.batch_sharding(mesh)
    finally:
      gin.clear_config()
  without_batch = tuple(r for r in partitioning.DEFAULT_RULES if r[0] != "batch")
  gin.bind_parameter("spot_jax.partitioning.logical_rules.rules", without_batch)
  try:
    assert partitioning.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
  finally:
    gin.clear_config()
  assert partitioning.batch_sharding(mesh).spec == jax.sharding.PartitionSpec("data")
