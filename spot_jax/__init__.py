"""spot_jax: soft-prompt tuning of a frozen T5 in JAX, and SPoT prompt transfer."""
from spot_jax import import_guard as _import_guard  # noqa: E402

# A user's own `tasks.py` (or `bench.py`) never stands in for spot_jax's top-level `tasks` (`bench`)
# package: importing it is one clear error (spot_jax/import_guard.py).
_import_guard.install()

from spot_jax.config import T5Config, size_config  # noqa: E402

__version__ = "0.1.0"


def load_t5(path, dtype="float32", **config_overrides):
  """Load a T5X checkpoint, a Hugging Face T5 folder or a `gs://` path (see `spot_jax.loader`)."""
  from spot_jax.loader import load_t5 as _load
  return _load(path, dtype=dtype, **config_overrides)


__all__ = ["T5Config", "size_config", "load_t5", "__version__"]
