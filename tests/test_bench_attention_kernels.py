"""bench/attention_kernels.py: its variants compute what they claim, and its figures add up."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench import attention_kernels


# Rows that differ from `pallas_t5` / `pallas_t5_atomic` by their GPU launch only (blocks, warps,
# stages): at these lengths every block size covers the whole sequence, and the CPU interpreter
# ignores warps and stages, so they would repeat those rows' check at the cost of their compiles.
LAUNCH_ONLY = {"pallas_t5_128x64", "pallas_t5_64x128", "pallas_t5_s3", "pallas_t5_128x64_w8s3",
               "pallas_t5_64x128_atomic"}


def test_variants_match_the_models_call_and_the_table_adds_up(tmp_path, capsys):
  names = set(attention_kernels.row_names())
  assert names == {"model", "no_mask", "no_bias", "no_bias_no_mask", "pad128", "einsum",
                   "pallas_no_bias", "pallas_t5", "pallas_t5_atomic", "pallas_t5_full_bias",
                   "model_short", "pallas_t5_short", "pad128_plain", "mosaic_fa3_f16", "cross",
                   "cross_einsum", "cross_pallas"} | LAUNCH_ONLY
  result = attention_kernels.run("tiny", batch=2, input_length=20, prompt_length=5,
                                 target_length=4, dtype="float32", repeats=1,
                                 only=tuple(sorted(names - LAUNCH_ONLY)))
  rows = result["rows"]
  assert set(rows) == names - LAUNCH_ONLY
  assert result["length"] == 25
  # All rows are full length: dropping the mask, padding to 128, the einsum form or the Pallas
  # kernel (interpreted on CPU) change nothing against the row each is compared with.
  compared = {"no_mask": "model", "pad128": "model", "einsum": "model", "cross_einsum": "cross",
              "no_bias_no_mask": "no_bias", "pallas_no_bias": "no_bias", "pallas_t5": "model",
              "pallas_t5_atomic": "model", "pallas_t5_full_bias": "model",
              "pallas_t5_short": "model_short", "cross_pallas": "cross"}
  for name, reference in compared.items():
    assert rows[name]["compared_with"] == reference
    assert rows[name]["max_abs_diff"] < 1e-4, (name, rows[name]["max_abs_diff"])
  # Without the bias the output is another function (a check that could not pass by accident).
  assert rows["no_bias"]["max_abs_diff"] > 1e-2
  # FlashAttention-3 on Mosaic GPU runs on Hopper only: here it is skipped, and says why.
  assert "Hopper" in rows["mosaic_fa3_f16"]["skipped"] and "forward_ms" not in rows["mosaic_fa3_f16"]
  for row in (r for r in rows.values() if "skipped" not in r):
    assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
    assert abs(row["step_ms"] - row["forward_backward_ms"] * row["layers"]) < 1e-9
  flops = 4 * 2 * 4 * 25 * 25 * 16  # 4·B·H·L·L·Dh of tiny (4 heads of 16)
  model = rows["model"]
  assert abs(model["forward_tflops"] * 1e12 * model["forward_ms"] / 1e3 - flops) / flops < 1e-6
  # the short rows count the FLOPs of their valid third (8 of 25 positions)
  short = rows["model_short"]
  assert abs(short["forward_tflops"] * 1e12 * short["forward_ms"] / 1e3 - flops * 64 / 625) < 1e-3

  assert attention_kernels.main(["--size", "tiny", "--batch", "2", "--input-length", "20",
                                 "--prompt-length", "5", "--target-length", "4", "--repeats", "1",
                                 "--only", "model,pad128", "--json", str(tmp_path / "a.json")]) == 0
  captured = capsys.readouterr()
  printed = captured.out
  assert "pad128" in printed and "no_bias" not in printed
  # each row also on stderr as soon as it is timed
  assert [line.split()[1] for line in captured.err.splitlines() if line.startswith("[row]")] == \
      ["model", "pad128"]
  assert attention_kernels.main(["--size", "tiny", "--batch", "2", "--input-length", "20",
                                 "--prompt-length", "5", "--target-length", "4", "--repeats", "1",
                                 "--only", "mosaic_fa3_f16"]) == 0
  assert "skipped: Mosaic GPU kernels need an NVIDIA Hopper GPU" in capsys.readouterr().out
  assert set(json.loads((tmp_path / "a.json").read_text())["rows"]) == {"model", "pad128"}


def test_padded_plain_row_lets_the_zero_keys_take_part():
  """`pad128_plain` (the bound the FlashAttention-3 row is compared with) is softmax attention over
  the length padded with zero keys and values, unmasked: a function of its own, checked here
  against that formula written out."""
  fn = attention_kernels._variants(25, pallas_interpret=True)["pad128_plain"][0]
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  q, k, v = (jax.random.normal(key, (2, 25, 4, 16), jnp.float32) for key in keys)
  got = np.asarray(fn(q, k, v, None, None))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k)                       # T5: no 1/sqrt(d) scaling
  scores = np.concatenate([scores, np.zeros(scores.shape[:3] + (128 - 25,))], axis=-1)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  want = np.einsum("bhqk,bkhd->bqhd", probs[..., :25], v)           # the padded values are zeros
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  unpadded = np.asarray(attention_kernels._variants(25, True)["no_bias_no_mask"][0](
      q, k, v, None, None))
  assert np.abs(got - unpadded).max() > 1e-3


def test_short_rows_are_the_model_on_a_third_of_the_positions():
  """`model_short` is the model's call with every row's length cut to a third: its valid rows are
  attention over those keys alone, its padding rows zero; `pallas_t5_short` gives the same."""
  variants = attention_kernels._variants(25, pallas_interpret=True)
  keys = jax.random.split(jax.random.PRNGKey(2), 4)
  q, k, v = (jax.random.normal(key, (2, 25, 4, 16), jnp.float32) for key in keys[:3])
  bias = attention_kernels.toeplitz_bias(keys[3], 4, 25, jnp.float32)
  lengths = jnp.array([25, 5])
  got = np.asarray(variants["model_short"][0](q, k, v, bias, lengths))
  for row, n in ((0, 8), (1, 5)):
    scores = np.einsum("qhd,khd->hqk", q[row, :n], k[row, :n]) + np.asarray(bias[0, :, :n, :n])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(got[row, :n], np.einsum("hqk,khd->qhd", probs, v[row, :n]),
                               rtol=1e-5, atol=1e-5)
    assert not np.any(got[row, n:])
  ours = np.asarray(variants["pallas_t5_short"][0](q, k, v, bias, lengths))
  np.testing.assert_allclose(ours, got, rtol=1e-5, atol=1e-5)


def test_the_bench_bias_is_a_function_of_the_offset_and_its_band_holds_it():
  bias = np.asarray(attention_kernels.toeplitz_bias(jax.random.PRNGKey(4), 3, 7, jnp.float32))
  assert bias.shape == (1, 3, 7, 7)
  i, j = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
  band = np.asarray(attention_kernels.band_of(jnp.asarray(bias)))
  assert band.shape == (3, 13) and np.unique(band).size == 39           # 13 distinct per head
  np.testing.assert_array_equal(band[:, j - i + 6], bias[0])


def test_only_names_real_rows_and_the_gpu_suite_asks_for_real_rows(capsys):
  """A misspelt `--only` row would silently time nothing on the GPU: it is refused, naming it."""
  import os
  import re
  import pytest
  with pytest.raises(SystemExit):
    attention_kernels.main(["--size", "tiny", "--only", "model,pallas_t5_64x64"])
  assert "no variant named pallas_t5_64x64" in capsys.readouterr().err
  suite = open(os.path.join(os.path.dirname(attention_kernels.__file__), "gpu_suite.sh")).read()
  rows = re.search(r"ATTENTION_ROWS:-([\w,]+)\}", suite).group(1).split(",")
  assert "model" in rows and "pallas_t5" in rows
  assert set(rows) <= set(attention_kernels.row_names())
