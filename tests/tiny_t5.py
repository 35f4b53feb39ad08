"""The tiny T5 and the right-padded batch that the model and layer tests share."""
import numpy as np

from spot_jax.config import size_config

CFG = size_config("tiny", vocab_size=96, dropout_rate=0.0, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
ENC = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 0, 0, 0, 0]], np.int32)
DEC = np.array([[0, 3, 4, 5], [0, 6, 7, 0]], np.int32)
