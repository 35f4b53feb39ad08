"""Reading a Hugging Face PEFT prompt-tuning (or P-tuning) adapter as one encoder prompt (DESIGN.md §4, §6).

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` with one tensor
`prompt_embeddings`; its `.safetensors` file alone is read with the `adapter_config.json` beside it
(without one, only an odd row count is unambiguous). The metadata is checked as PEFT checks it:
peft_type (PROMPT_TUNING or P_TUNING; another adapter type is named), task_type SEQ_2_SEQ_LM,
token_dim, and num_virtual_tokens x num_transformer_submodules rows, of which (PEFT's 2P seq2seq
rows) the first P, the encoder's, are taken. An adapter saved under a name (OUT/<name>/) is pointed at.

`prompt_io.load_prompt` reads adapters through here (and re-exports these names);
`prompt_export.export_peft` writes them.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import numpy as np

from spot_jax import fileio
from spot_jax.export_layout import PEFT_CONFIG, PEFT_TENSOR, PEFT_WEIGHTS  # noqa: F401  (re-exported)


def adapter_dir_of(weights_file: str) -> Optional[str]:
  """The directory of a `.safetensors` file when its adapter_config.json is beside it, else None."""
  parent = os.path.dirname(weights_file.rstrip("/")) or "."
  return parent if fileio.exists(fileio.join(parent, PEFT_CONFIG)) else None


def adapter_weights(directory: str) -> Optional[str]:
  """The weights file of the PEFT adapter `directory` (None: it holds no adapter_config.json); a
  FileNotFoundError naming the fix when the config is there without the weights."""
  if not fileio.exists(fileio.join(directory, PEFT_CONFIG)):
    return None
  weights = fileio.join(directory, PEFT_WEIGHTS)
  if not fileio.exists(weights):
    extra = " (adapter_model.bin is a PyTorch pickle: re-save the adapter with safe_serialization=True)" \
        if fileio.exists(fileio.join(directory, "adapter_model.bin")) else ""
    raise FileNotFoundError(f"PEFT adapter directory {directory} has no {PEFT_WEIGHTS}{extra}")
  return weights


def check_not_named_adapters(path: str) -> None:
  """A ValueError pointing at the subfolder(s) when `path` holds PEFT adapters saved under a name."""
  named = _named_peft_adapters(path)
  if named:
    raise ValueError(f"{path} holds no adapter_config.json itself but PEFT adapters saved under a name in "
                     f"{', '.join(n + '/' for n in named)} (save_pretrained of an adapter not named 'default' "
                     f"writes OUT/<name>/): pass {'one of them, e.g. ' if len(named) > 1 else ''}"
                     f"{fileio.join(path, named[0])}")


def read_peft_prompt(weights_file: str, adapter_dir: Optional[str]) -> np.ndarray:
  """The encoder prompt of a PEFT adapter; its adapter_config.json (beside the weights) is read first
  and checked against the tensor, as PEFT would: another adapter type, another task type, a width or a
  row count the config does not give are errors naming the fix. `adapter_dir` is where the config
  is (None: a lone .safetensors file, see `adapter_dir_of`)."""
  # Not safetensors.numpy.load: it cannot decode bfloat16, the dtype of an adapter trained on a bf16 model.
  from spot_jax.checkpoints.hf import load_safetensors_bytes  # pylint: disable=g-import-not-at-top
  config = None
  if adapter_dir is not None:
    try:
      config = fileio.read_json_object(fileio.join(adapter_dir, PEFT_CONFIG))
    except ValueError as e:
      raise ValueError(f"{e}. Save the adapter again (PeftModel.save_pretrained or `spot-jax export "
                       "--format peft`)") from e
    _check_peft_kind(config, adapter_dir)
  with fileio.open_file(weights_file, "rb") as f:
    tensors = load_safetensors_bytes(f.read(), weights_file)
  keys = [k for k in tensors if k == PEFT_TENSOR or k.endswith("." + PEFT_TENSOR)]
  if len(keys) != 1:
    names = sorted(tensors)
    listed = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
    lora = "; its lora_A/lora_B tensors make it a LoRA adapter, not a soft prompt" \
        if any(".lora_" in n for n in names) else ""
    raise ValueError(f"{weights_file}: expected one tensor named {PEFT_TENSOR!r}, found {listed or 'none'}{lora}. "
                     "Pass a PEFT prompt-tuning adapter")
  arr = np.asarray(tensors[keys[0]])
  if arr.ndim != 2:
    return arr  # prompt_io.validate_prompt names the rank
  return _peft_encoder_rows(arr, config, weights_file)


# What other PEFT adapter types hold instead of one input prompt.
_PEFT_NOT_A_PROMPT = {
    "PREFIX_TUNING": "per-layer key/value prefixes, not an input prompt",
    "MULTITASK_PROMPT_TUNING": "a shared prompt combined with per-task factors, not one prompt",
    "ADAPTION_PROMPT": "LLaMA-Adapter's per-layer prompts, not an input prompt",
}
_PEFT_PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")  # P_TUNING saves its reparameterized prompt: what PEFT feeds


def _check_peft_kind(config: dict, where: str) -> None:
  """Refuses an adapter_config.json of another adapter type or another kind of model."""
  kind = config.get("peft_type")
  if kind is not None and kind not in _PEFT_PROMPT_TYPES:
    what = _PEFT_NOT_A_PROMPT.get(kind, "it changes the model's weights, which spot_jax keeps frozen")
    raise ValueError(f"{where}: this is a {kind} adapter, not a soft prompt ({what}); pass a PROMPT_TUNING "
                     "or P_TUNING adapter, or a .npy prompt")
  task = config.get("task_type")
  if task is not None and task != "SEQ_2_SEQ_LM":
    model = "a decoder-only model's prompt, e.g. GPT-2's" if task == "CAUSAL_LM" else "another kind of model's prompt"
    raise ValueError(f"{where}: task_type is {task!r} ({model}), not SEQ_2_SEQ_LM (T5): a prompt works only with "
                     f"the frozen model it was trained with. To use its rows anyway (e.g. as an initialization), "
                     f"save {PEFT_TENSOR} as a .npy and pass that")


def _peft_encoder_rows(arr: np.ndarray, config: Optional[dict], file: str) -> np.ndarray:
  """The encoder prompt among a PEFT tensor's rows, by the adapter_config.json (None: no config)."""
  rows, width = arr.shape
  if config is None:  # a lone .safetensors file: PEFT's seq2seq default stores 2P rows (P encoder + P decoder)
    if rows % 2:
      return arr  # an odd count cannot be P encoder + P decoder rows: one prompt
    raise ValueError(f"{file}: no {PEFT_CONFIG} beside it, so its {rows} rows may be one {rows}-token prompt "
                     f"or {rows // 2} encoder + {rows // 2} decoder rows (PEFT's seq2seq default, "
                     f"num_transformer_submodules=2): pass the adapter directory with its {PEFT_CONFIG}, "
                     "or save the rows you mean as a .npy")
  for key in ("token_dim", "num_virtual_tokens", "num_transformer_submodules"):
    value = config.get(key)  # PEFT writes integers; "4" would compare unequal to 4 below
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"{file}: {PEFT_CONFIG} says {key}={json.dumps(value)}, not a positive integer as PEFT "
                       f"writes it: correct it (e.g. {key}: 4, without quotes) or save the adapter again")
  token_dim = config.get("token_dim")
  if token_dim is not None and token_dim != width:
    raise ValueError(f"{file}: {PEFT_TENSOR} is {width} wide but {PEFT_CONFIG} says token_dim={token_dim} "
                     "(PEFT refuses to load it): the config belongs to another adapter or was edited; save the "
                     "adapter again, or correct token_dim")
  p = config.get("num_virtual_tokens")
  given = config.get("num_transformer_submodules")
  # PEFT's default when the config does not say: 2 for SEQ_2_SEQ_LM, else 1.
  subs = given if given is not None else (2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1)
  if subs not in (1, 2):
    raise ValueError(f"{file}: {PEFT_CONFIG} says num_transformer_submodules={subs}; PEFT writes 1 or 2. "
                     "Save the adapter again")
  if p is None:
    if subs == 1 or (given is None and rows % 2):
      return arr
    raise ValueError(f"{file}: {PEFT_CONFIG} has no num_virtual_tokens, so the encoder rows among {rows} "
                     f"(num_transformer_submodules={subs}) are unknown: add num_virtual_tokens, or save the "
                     "adapter again")
  if rows == subs * p and subs == 2:
    warnings.warn(f"{file}: PEFT stored {rows} prompt rows (num_transformer_submodules=2); using the first "
                  f"{p} (the encoder prompt, which PEFT feeds T5's encoder) and ignoring the decoder rows")
    return arr[:p]
  if rows == p and (subs == 1 or given is None):
    return arr
  raise ValueError(f"{file}: {PEFT_TENSOR} has {rows} rows but {PEFT_CONFIG} says num_virtual_tokens={p}, "
                   f"num_transformer_submodules={given if given is not None else f'{subs} (PEFT default)'}, "
                   f"i.e. {subs * p} rows (PEFT refuses to load it): save the adapter again, or correct the config")


def _named_peft_adapters(directory: str) -> list:
  """Sub-directories holding a PEFT adapter: save_pretrained writes an adapter not named 'default' there."""
  if not fileio.isdir(directory):
    return []
  names = sorted(n.rstrip("/") for n in fileio.listdir(directory))
  return [n for n in names if fileio.exists(fileio.join(directory, n, PEFT_CONFIG))]
