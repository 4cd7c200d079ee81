"""What several stages do the same way: save a trained model, write a filter's outputs, count scoring FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from reft_jax import cost
from reft_jax.data import Batches
from reft_jax.filter import FilterResult
from reft_jax.models import ModelConfig, Transformer, save_pretrained
from reft_jax.models.hf_io import GENERATION_CONFIG


def save_model(model: Transformer, tokenizer, folder: Path) -> None:
    """A Hugging Face folder with the tokenizer, whose special tokens generation_config.json names (a model
    from random init has none in its config); every process takes part (gathers), process 0 writes."""
    save_pretrained(model, folder)
    if jax.process_index() == 0:
        tokenizer.save_pretrained(str(folder))
        if not model.cfg.is_classifier:
            ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
            config = json.loads((folder / GENERATION_CONFIG).read_text())
            config.update({k: v for k, v in ids.items() if config.get(k) is None and v is not None})
            (folder / GENERATION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def write_filter(result: FilterResult, folder: Path, **fields) -> dict:
    """scores.jsonl and report.json (process 0); the report, with `fields` (what was scored, the settings)."""
    report = {**result.report(), **fields}
    if jax.process_index() == 0:
        result.write(folder, **fields)
    return report


def prompt_flops(model_cfg: ModelConfig, batches: Batches) -> int:
    """Forward FLOPs of one pass over prompt batches (a scoring pass)."""
    return cost.forward_flops(model_cfg, batches.batch, batches.num_steps)
