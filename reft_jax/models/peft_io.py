"""LoRA adapters as PEFT folders: `adapter_config.json` and `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained(base, folder)` loads onto the transformers base model.

Our adapter on a projection is W + (alpha / rank) * A @ B with A [in, rank] and B [rank, out]; PEFT's is
W + (lora_alpha / r) * B' A' on [out, in] weights with lora_A [r, in] and lora_B [out, r], so lora_A = A^T and
lora_B = B^T, with the same scale (no rsLoRA).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from reft_jax.errors import ReftError
from reft_jax.models.hf_io import host_array
from reft_jax.models.hub import is_hub_id, split_id
from reft_jax.models.transformer import Transformer

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_NAMES = {"lora_a": "lora_A", "lora_b": "lora_B"}


def save_adapter(model: Transformer, path: str | os.PathLike, base_model: str) -> Path:
    """Writes the model's LoRA adapter as a PEFT folder for `base_model` (a hub id `org/name[@revision]` or a
    local folder: `base_model_name_or_path` and `revision`). Every process takes part (gathers); process 0
    writes."""
    lora = model.opts.lora
    if lora is None:
        raise ReftError("no LoRA adapter to export: this model was trained without one (model.lora.rank = 0); "
                        "export the whole model instead")
    tensors = {}
    for key, variable in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        parts = [str(p) for p in key]  # ("layers", "self_attn", "q_proj", "lora_a"): stacked over the layers
        module, which = ".".join(parts[1:-1]), _PEFT_NAMES[parts[-1]]
        value = host_array(variable[...])
        for i in range(value.shape[0]):
            name = f"base_model.model.model.layers.{i}.{module}.{which}.weight"
            tensors[name] = np.ascontiguousarray(np.asarray(value[i], np.float32).T)
    folder = Path(path)
    if jax.process_index() != 0:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if model.cfg.is_classifier else "CAUSAL_LM",
        "base_model_name_or_path": split_id(base_model)[0] if is_hub_id(base_model) else base_model,
        "revision": split_id(base_model)[1] if is_hub_id(base_model) else None,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(lora.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return folder
