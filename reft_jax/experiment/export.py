"""What a finetuning hands back (`reft-jax export`): a method's model as a transformers folder (LoRA merged), or
its LoRA adapter as a PEFT folder for the base model it was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax

from reft_jax.errors import ConfigError, ReftError
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.models.hf_io import save_model
from reft_jax.models.peft_io import ADAPTER_CONFIG
from reft_jax.runtime.workdir import adapter_dir, model_dir


def export(ctx: RunContext, out: Path, method: str = "ref_teacher", *, adapter: bool = False) -> Path:
    """A method's finetuned model as a Hugging Face folder with the tokenizer (LoRA merged); with adapter, its
    LoRA adapter as a PEFT folder instead, for the base model it was trained on. A base built from random init
    (model.init) has no folder of its own: it is written to OUT/base_model, and the adapter points there."""
    if method not in METHODS:
        raise ConfigError(f"export: unknown method {method!r} (available: {', '.join(METHODS)})")
    folder = METHODS[method].path(ctx.workdir)
    out = Path(out)
    if not adapter:
        save_model(load_stage_model(model_dir(folder), ctx.cfg, method), ctx.tokenizer, out)
        return out
    source = adapter_dir(folder)
    if not (source / ADAPTER_CONFIG).exists():
        raise ReftError(f"{source}: no adapter here; a method trained with LoRA (model.lora.rank > 0) writes one "
                        f"(without LoRA, export the whole model: drop --adapter)")
    if jax.process_index() == 0:
        shutil.copytree(source, out, dirs_exist_ok=True)
        ctx.tokenizer.save_pretrained(str(out))
    if not ctx.cfg.model.path:
        base = str((out / "base_model").absolute())
        save_model(base_model(ctx.cfg, ctx.vocab), ctx.tokenizer, Path(base))
        if jax.process_index() == 0:
            config = json.loads((out / ADAPTER_CONFIG).read_text())
            config["base_model_name_or_path"] = base
            (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
