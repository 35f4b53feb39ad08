"""Adafactor with prompt-tuning's settings, checked against the update rule written out by hand."""
import jax.numpy as jnp
import numpy as np
import optax

from spot_jax import optim


def test_first_steps_follow_the_prompt_tuning_update_rule():
  tx = optim.adafactor()
  p = jnp.asarray(np.random.RandomState(0).normal(size=(4, 3)), jnp.float32)
  g1 = jnp.asarray(np.random.RandomState(1).normal(size=(4, 3)), jnp.float32)
  state = tx.init(p)
  u, state = tx.update(g1, state, p)
  # Step 1: beta2 = 1 - 1**-0.8 = 0, so v = g^2 and the scaled update is sign(g) (RMS 1: no clipping);
  # lr 0.3; weight decay 1e-5 * p applied directly, not scaled by the learning rate.
  np.testing.assert_allclose(u, -0.3 * np.sign(g1) - 1e-5 * p, rtol=1e-5, atol=1e-7)
  p2 = optax.apply_updates(p, u)
  g2 = 2.0 * g1
  u2, _ = tx.update(g2, state, p2)
  beta2 = 1 - 2.0 ** -0.8
  v = beta2 * np.square(g1) + (1 - beta2) * np.square(g2)
  scaled = g2 / np.sqrt(v + 1e-30)
  scaled = scaled / max(1.0, np.sqrt(np.mean(np.square(scaled))) / 1.0)
  np.testing.assert_allclose(u2, -0.3 * scaled - 1e-5 * p2, rtol=1e-4, atol=1e-6)


def test_second_moment_is_not_factored_for_the_prompt():
  state = optim.adafactor().init(jnp.zeros((100, 64)))
  shapes = [x.shape for x in __import__("jax").tree.leaves(state)]
  assert (100, 64) in shapes  # full second moment, no row/column factors


def _t5x_factored_update(g, v_row, v_col, step, param, lr=0.3, decay=0.8, wd=1e-5):
  """T5X Adafactor's update for a [rows, cols] parameter with rows < cols, written out in NumPy."""
  beta2 = 1.0 - (step + 1.0) ** -decay
  g2 = np.square(g) + 1e-30
  v_row = beta2 * v_row + (1 - beta2) * g2.mean(axis=1)
  v_col = beta2 * v_col + (1 - beta2) * g2.mean(axis=0)
  y = g * (v_row / v_row.mean())[:, None] ** -0.5 * v_col[None, :] ** -0.5
  y = y / max(1.0, np.sqrt(np.mean(np.square(y))))
  return -lr * y - wd * param, v_row, v_col


def test_factored_follows_t5x_size_rule_and_update():
  tx = optim.adafactor(factored=True)
  # Under 128 rows T5X's heuristic keeps the full second moment: the same update as unfactored.
  p = jnp.asarray(np.random.RandomState(2).normal(size=(100, 160)), jnp.float32)
  g = jnp.asarray(np.random.RandomState(3).normal(size=(100, 160)), jnp.float32)
  u_f, _ = tx.update(g, tx.init(p), p)
  u_u, _ = optim.adafactor().update(g, optim.adafactor().init(p), p)
  np.testing.assert_allclose(u_f, u_u, rtol=1e-6)
  # 150 x 256: factored into row and column statistics, two steps against T5X's formula.
  rng = np.random.RandomState(4)
  p = rng.normal(size=(150, 256)).astype(np.float32)
  state = tx.init(jnp.asarray(p))
  assert (150, 256) not in [x.shape for x in __import__("jax").tree.leaves(state)]
  v_row, v_col = np.zeros(150), np.zeros(256)
  for step in range(2):
    g = (rng.normal(size=(150, 256)) * rng.uniform(0.1, 3.0, size=(150, 1))).astype(np.float32)
    u, state = tx.update(jnp.asarray(g), state, jnp.asarray(p))
    want, v_row, v_col = _t5x_factored_update(g.astype(np.float64), v_row, v_col, step, p.astype(np.float64))
    np.testing.assert_allclose(np.asarray(u), want, rtol=2e-4, atol=1e-6)
    p = p + np.asarray(u)


def test_same_settings_give_the_same_transformation():
  assert optim.adafactor() is optim.adafactor()
  assert optim.adafactor(weight_decay=0.0) is not optim.adafactor()


def test_rsqrt_schedule_warms_up_then_decays():
  s = optim.linear_warmup_rsqrt_decay(learning_rate=1.0, warmup_steps=10)
  np.testing.assert_allclose([float(s(0)), float(s(9))], [0.1, 1.0], rtol=1e-6)
  np.testing.assert_allclose(float(s(39)), np.sqrt(10 / 40), rtol=1e-6)


def test_learning_rate_schedule_is_the_one_the_optimizer_applies():
  s = optim.linear_warmup_rsqrt_decay(learning_rate=0.5, warmup_steps=4)
  assert optim.learning_rate_schedule(optim.adafactor(learning_rate=s)) is s
  constant = optim.learning_rate_schedule(optim.adafactor(learning_rate=0.2))
  assert float(constant(0)) == float(constant(1000)) == np.float32(0.2)
  assert float(optim.learning_rate_schedule(optim.adafactor())(7)) == np.float32(0.3)  # constant_schedule()
  assert optim.learning_rate_schedule(optax.sgd(0.1)) is None  # not ours: nothing to log
  # The applied rate: Adafactor's first update is -lr * sign(grad) (then weight decay), lr = s(0).
  tx = optim.adafactor(learning_rate=s, weight_decay=0.0)
  p = jnp.ones((3, 2))
  g = jnp.array([[1.0, -2.0], [3.0, -4.0], [0.5, 0.25]])
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u), -float(s(0)) * np.sign(np.asarray(g)), rtol=1e-5)


def test_decay_counts_from_the_initial_checkpoints_step_as_t5x_does():
  """T5X restores the step of checkpoint_N and decays with β2 = 1 − (step − step_offset + 1)^−0.8:
  prompt tuning from checkpoint_1100000 starts at β2 ≈ 0.9999853, not at 0."""
  n = 1_100_000
  beta2 = 1.0 - (n + 1.0) ** -0.8  # the first update is made at global step N (T5X's step counter)
  assert abs(beta2 - 0.9999853) < 1e-7
  np.testing.assert_allclose(optim.second_moment_decay(0, initial_step=n), beta2, atol=1e-7)
  tx = optim.adafactor(initial_step=n, weight_decay=0.0)
  p = jnp.asarray(np.random.RandomState(0).normal(size=(4, 3)), jnp.float32)
  grads = [jnp.asarray(np.random.RandomState(s).normal(size=(4, 3)) * s, jnp.float32) for s in (1, 2, 3)]
  state = tx.init(p)
  v = np.zeros((4, 3))
  for i, g in enumerate(grads):
    u, state = tx.update(g, state, p)
    # T5X's update, written out: its float32 decay at global step N + i, step_offset 0.
    b = 1.0 - (np.float32(n + i) + np.float32(1.0)) ** np.float32(-0.8)
    v = b * v + (1.0 - b) * (np.square(np.asarray(g, np.float64)) + 1e-30)
    y = np.asarray(g, np.float64) / np.sqrt(v)
    y = y / max(1.0, np.sqrt(np.mean(np.square(y))))
    np.testing.assert_allclose(u, -0.3 * y, rtol=2e-4, atol=1e-6)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(state[0].v, v, rtol=2e-3)  # the second moment itself (float32 decay)
  # With N = 0 the decay is optax's count from 0 (β2 = 0 at the first update), as before.
  assert float(optim.second_moment_decay(0)) == 0.0
  # The trainer rebuilds the gin-built optimizer with the checkpoint's step (equal settings: one object).
  base = optim.adafactor(learning_rate=0.2)
  moved = optim.with_initial_step(base, n)
  assert moved is optim.with_initial_step(base, n) and moved is not base
  assert optim.adafactor_arguments(moved)["initial_step"] == n
  assert float(optim.learning_rate_schedule(moved)(5)) == float(optim.learning_rate_schedule(base)(5))
  assert optim.with_initial_step(base, 0) is base
  assert optim.with_initial_step(optax.sgd(0.1), n) is None
