"""spot_jax/dropout.py: hashed dropout masks are Bernoulli, keyed, and laid out as configured."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spot_jax import dropout as D
from spot_jax.config import size_config

CFG = size_config("tiny", dropout_rate=0.1)


@pytest.mark.parametrize("per_element", [False, True], ids=["16bit_cpu", "32bit_per_element"])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_masks_are_bernoulli_independent_and_keyed(rate, per_element):
  """The hashed random bits give Bernoulli(1-rate) masks: the right keep rate, no correlation
  between neighbours or between calls with different keys, same mask for the same key. Both bit
  layouts: two 16-bit draws per hashed word (CPU) and one hash per element (accelerators)."""
  x = jnp.ones((1000, 1000), jnp.float32)
  drop = lambda key: D.Dropout(rate, per_element).apply({}, x, False, rngs={"dropout": key})
  a = np.asarray(drop(jax.random.key(0))) > 0
  b = np.asarray(drop(jax.random.key(1))) > 0
  n, keep = a.size, 1 - rate
  tol = 5 * np.sqrt(keep * rate / n)  # 5 sigma
  assert abs(a.mean() - keep) < tol and abs(b.mean() - keep) < tol
  np.testing.assert_array_equal(a, np.asarray(drop(jax.random.key(0))) > 0)
  assert abs((a & b).mean() - keep ** 2) < 5 * np.sqrt(keep ** 2 * (1 - keep ** 2) / n)
  flat = a.reshape(-1).astype(np.float64) - keep
  for lag in (1, 2, 1000):  # the two halves of one word, the next word, the next row
    assert abs(np.mean(flat[:-lag] * flat[lag:])) / (keep * rate) < 0.01, lag
  kept = np.asarray(drop(jax.random.key(0)))[a]
  levels = 2 ** 32 if per_element else 65536
  np.testing.assert_allclose(kept, 1 / (1 - round(rate * levels) / levels), rtol=1e-6)
  # a raw uint32[2] key (the pre-typed-key API) works the same way
  assert abs((np.asarray(drop(jax.random.PRNGKey(7))) > 0).mean() - keep) < tol


def test_dropout_bits_config_selects_the_mask_layout():
  """`T5Config.dropout_bits="per_element"` makes each mask a pure elementwise function of the index
  (no 16-bit split, which needs a bitcast and a slice that XLA cannot fuse); "16bit" keeps the split;
  an unknown value is refused."""
  x = jnp.ones((4, 6), jnp.float32)
  jaxpr = lambda bits: str(jax.make_jaxpr(lambda k: D.Dropout(0.1, D.per_element_bits(
      CFG.replace(dropout_bits=bits))).apply({}, x, False, rngs={"dropout": k}))(jax.random.key(0)))
  assert "bitcast_convert_type" not in jaxpr("per_element")
  assert "bitcast_convert_type" in jaxpr("16bit")
  assert D.per_element_bits(CFG) is None  # "auto": by backend at trace time
  with pytest.raises(ValueError, match="dropout_bits"):
    CFG.replace(dropout_bits="8bit")


def test_dropout_bits_beyond_the_hash_counter_fall_back_to_jax_random():
  """A mask of 2^32 words or more would wrap the uint32 counter: such calls use jax.random.bits
  (checked on the traced program, nothing is allocated)."""
  small = str(jax.make_jaxpr(lambda k: D._hashed_bits(k, 1000))(jax.random.key(0)))
  huge = str(jax.make_jaxpr(lambda k: D._hashed_bits(k, 2 ** 32))(jax.random.key(0)))
  assert "random_bits" not in small and "random_bits" in huge
  assert "random_bits" in str(jax.make_jaxpr(lambda k: D._hashed_bits(k, 2 ** 32))(
      jax.random.PRNGKey(0)))


@pytest.mark.parametrize("per_element", [False, True])
def test_recomputed_dropout_equals_dropout_of_the_function_and_its_gradient(per_element):
  """Same key, same mask: `recomputed(fn, *args)` is `Dropout(fn(*args))` in value and gradient;
  only what the backward pass stores differs (a remat primitive in the jaxpr)."""
  fn = lambda a, b: jnp.tanh(a) * b
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(3, 40)), jnp.float32) for _ in range(2))
  drop = D.Dropout(0.3, per_element)

  def loss(method):
    def f(a, b):
      out = drop.apply({}, a, b, rngs={"dropout": jax.random.key(7)}, method=method)
      return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))
    return f
  stored = loss(lambda m, a, b: m(fn(a, b), deterministic=False))
  recomputed = loss(lambda m, a, b: m.recomputed(fn, a, b, deterministic=False))
  np.testing.assert_allclose(recomputed(a, b), stored(a, b), rtol=1e-6)
  for g1, g2 in zip(jax.grad(recomputed, (0, 1))(a, b), jax.grad(stored, (0, 1))(a, b)):
    np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-6)
  assert "prevent_cse" in str(jax.make_jaxpr(jax.grad(recomputed))(a, b))  # a remat primitive
  assert "prevent_cse" not in str(jax.make_jaxpr(jax.grad(stored))(a, b))
  # without dropout (rate 0, or deterministic) `fn` is still recomputed, and nothing is dropped
  for rate, deterministic in ((0.0, False), (0.3, True)):
    plain = lambda a, b: jnp.sum(D.Dropout(rate, per_element).apply(
        {}, a, b, method=lambda m, a, b: m.recomputed(fn, a, b, deterministic=deterministic)))
    np.testing.assert_allclose(plain(a, b), jnp.sum(fn(a, b)), rtol=1e-6)
    assert "prevent_cse" in str(jax.make_jaxpr(jax.grad(plain))(a, b))
  # some entries are dropped, so the test would notice a mask that differs
  assert np.any(np.asarray(drop.apply({}, a, deterministic=False, rngs={"dropout": jax.random.key(7)})) == 0)


@pytest.mark.parametrize("per_element", [False, True])
def test_broadcast_dropout_shares_one_mask_across_positions_as_t5x(per_element):
  """`broadcast_dims=(-2,)` (T5X's residual, embedding and MLP dropout; its attention dropout over the
  queries): one Bernoulli(0.7) draw per [batch, feature], the same at every position, each kept
  value scaled by 1/keep; the same under `recomputed`."""
  x = jnp.ones((64, 9, 32), jnp.float32)
  rngs = {"dropout": jax.random.key(3)}
  out = np.asarray(D.Dropout(0.3, per_element, (-2,)).apply({}, x, deterministic=False, rngs=rngs))
  kept = out != 0
  assert (kept == kept[:, :1]).all()  # shared along the positions
  assert abs(kept[:, 0].mean() - 0.7) < 0.03 and 0 < kept[:, 0].mean(axis=0).min()  # each feature varies
  np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-3)
  per_elem = np.asarray(D.Dropout(0.3, per_element).apply({}, x, deterministic=False, rngs=rngs)) != 0
  assert not (per_elem == per_elem[:, :1]).all()  # the default draws per element
  recomputed = D.Dropout(0.3, per_element, (-2,)).apply(
      {}, x, method=lambda m, a: m.recomputed(jnp.tanh, a, deterministic=False), rngs=rngs)
  np.testing.assert_allclose(np.asarray(recomputed), np.where(kept, np.tanh(1.0) / 0.7, 0), rtol=1e-3)


def test_the_model_shares_masks_where_t5x_does_and_the_kernel_norm_refuses_it():
  """dropout_broadcast=True: the T5 layers' dropout (`layers.dropout`) shares masks across
  positions, the one after the encoder's final norm does not (T5X's own exception)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from spot_jax import layers  # pylint: disable=g-import-not-at-top
  cfg = size_config("tiny", dropout_rate=0.5, dropout_broadcast=True)
  x = jnp.ones((8, 6, 16), jnp.float32)

  class Sites(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.dropout(cfg, True)(x), layers.dropout(cfg, True, broadcast=False)(x)
  shared, own = (np.asarray(o) != 0 for o in Sites().apply({}, x, rngs={"dropout": jax.random.key(0)}))
  assert (shared == shared[:, :1]).all() and not (own == own[:, :1]).all()
  with pytest.raises(ValueError, match=r"norm_impl='pallas' draws its dropout masks per element.*"
                                       r"dropout_broadcast=False"):
    size_config("tiny", norm_impl="pallas", dropout_broadcast=True)
  assert size_config("tiny", norm_impl="pallas", dropout_broadcast=True, dropout_rate=0.0).norm_impl == "pallas"
