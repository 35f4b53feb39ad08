"""spot_jax: soft-prompt tuning of a frozen T5 in JAX, and SPoT prompt transfer."""
import os as _os
import sys as _sys

# TensorFlow (seqio's data pipeline only) logs start-up noise at ERROR level, e.g. a failed CUDA probe
# (`failed call to cuInit ... UNKNOWN ERROR (303)`) on every machine without a GPU: level 3 (what the
# demo always set) keeps TensorFlow's C++ log lines below FATAL out of a command's output. It is read
# when TensorFlow loads: set before that, never over the user's own setting (0 shows them all).
if "TF_CPP_MIN_LOG_LEVEL" not in _os.environ and "tensorflow" not in _sys.modules:
  _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

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
