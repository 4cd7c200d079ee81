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
from reft_jax.runtime import atomic, parallel
from reft_jax.runtime.workdir import adapter_dir, model_dir


def export(ctx: RunContext, out: Path, method: str = "ref_teacher", *, adapter: bool = False,
           force: bool = False) -> Path:
    """A method's finetuned model as a Hugging Face folder with the tokenizer (LoRA merged); with adapter, its
    LoRA adapter as a PEFT folder instead, for the base model it was trained on. A base built from random init
    (model.init) has no folder of its own: it is written to OUT/base_model, and the adapter points there. OUT is
    built beside itself and replaces what was there whole: a previous export of the same kind, or with force
    any folder (check_out)."""
    if method not in METHODS:
        raise ConfigError(f"export: unknown method {method!r} (available: {', '.join(METHODS)})")
    folder = METHODS[method].path(ctx.workdir)
    out = Path(out)
    if out.absolute() in (ctx.workdir.root.absolute(), *ctx.workdir.root.absolute().parents):
        raise ReftError(f"{out}: holds the workdir; name another --out")
    check_out(out, adapter, force)
    source = adapter_dir(folder)
    if adapter and not (source / ADAPTER_CONFIG).exists():
        raise ReftError(f"{source}: no adapter here; a method trained with LoRA (model.lora.rank > 0) writes one "
                        f"(without LoRA, export the whole model: drop --adapter)")
    model = None if adapter else load_stage_model(model_dir(folder), ctx.cfg, method)
    primary = jax.process_index() == 0
    with atomic.staged(out, primary) as build:
        parallel.sync("export: folder staged")
        if model is not None:
            save_model(model, ctx.tokenizer, build)
        else:
            if primary:
                shutil.copytree(source, build, dirs_exist_ok=True)
                ctx.tokenizer.save_pretrained(str(build))
            if not ctx.cfg.model.path:
                save_model(base_model(ctx.cfg, ctx.vocab), ctx.tokenizer, build / "base_model")
                if primary:  # where the folder will be, not where it is built
                    config = json.loads((build / ADAPTER_CONFIG).read_text())
                    config["base_model_name_or_path"] = str((out / "base_model").absolute())
                    (build / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        parallel.sync("export: written")
    return out


def check_out(out: Path, adapter: bool, force: bool) -> None:
    """An export replaces only a previous export of the same kind (an adapter's folder holds adapter_config.json, a
    merged model's config.json without it), or, with force, any folder: two kinds of files in one folder would
    load as a model that is neither. A file is never replaced."""
    if out.exists() and not out.is_dir():
        raise ReftError(f"{out}: a file, not a folder; name a folder for --out")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    held, wanted = _kind(out), "an adapter export" if adapter else "a merged model export"
    if held != wanted:
        raise ReftError(f"{out}: holds {held}, not {wanted}; name another --out, or --force to replace the folder "
                        "whole")


def _kind(folder: Path) -> str:
    if (folder / ADAPTER_CONFIG).exists():
        return "an adapter export"
    return "a merged model export" if (folder / "config.json").exists() else "other files"
