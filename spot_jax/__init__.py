"""spot_jax: soft-prompt tuning of a frozen T5 in JAX, and SPoT prompt transfer."""
from spot_jax.config import T5Config, size_config

__version__ = "0.1.0"


def load_t5(path, dtype="float32", **config_overrides):
  """Load a T5X checkpoint, a Hugging Face T5 folder or a `gs://` path (see `spot_jax.loader`)."""
  from spot_jax.loader import load_t5 as _load
  return _load(path, dtype=dtype, **config_overrides)


__all__ = ["T5Config", "size_config", "load_t5", "__version__"]
