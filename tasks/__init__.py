"""seqio tasks and mixtures of spot_jax; importing this package registers all of them.

Importing never touches the network: vocabularies and TFDS builders resolve lazily.
"""
from tasks import vocab  # noqa: F401
from tasks import glue, super_glue, sources, rank_classification, mixtures  # noqa: F401
from tasks import user_data, ppt, bundled  # noqa: F401
