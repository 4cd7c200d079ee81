"""Models from a run configuration (the `model` section): the base model M0, its trainable form, a stage's saved
model, with the runtime options (dtypes, attention, remat, scan) the config asks for. The pipeline and the
benchmark build through these, as a user's script would.

On several devices a checkpoint is loaded straight into its place on the run's mesh (`mesh`, by models.sharding's rules):
each device reads only its own slices of each tensor, so no device ever holds more of the model than its share
plus the tensor being read, and the run's train state and frozen teacher later find the weights already where
their shardings put them (runtime.parallel moves nothing)."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from reft_jax.config.schema import RunConfig
from reft_jax.config.streams import seed_of, stream_seed
from reft_jax.errors import ConfigError, ReftError
from reft_jax.models import sharding
from reft_jax.models.config import from_hf_dict, load_hf_config
from reft_jax.models.hf_io import Placer, checkpoint_folder, from_pretrained
from reft_jax.models.layers import LoraConfig
from reft_jax.models.transformer import RuntimeOptions, Transformer, add_lora


def runtime_options(cfg: RunConfig) -> RuntimeOptions:
    m = cfg.model
    return RuntimeOptions(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), attention=m.attention,
                          remat=m.remat, scan_layers=m.scan_layers)


def lora_config(cfg: RunConfig) -> LoraConfig | None:
    lora = cfg.model.lora
    return LoraConfig(**dataclasses.asdict(lora)) if lora.rank > 0 else None


def base_model(cfg: RunConfig, vocab_size: int | None = None) -> Transformer:
    """M0: the pretrained checkpoint at model.path, or a seeded random init from model.init (no LoRA)."""
    if cfg.model.path:
        return _load(cfg.model.path, cfg)
    opts = runtime_options(cfg)
    hf = dict(cfg.model.init)
    if not hf.get("vocab_size"):
        if vocab_size is None:
            raise ConfigError("model.init.vocab_size: 0 needs a tokenizer to size the vocabulary")
        hf["vocab_size"] = int(vocab_size)
    return Transformer(from_hf_dict(hf, where="config model.init"), opts, rngs=nnx.Rngs(seed_of(cfg.seed, "model_init")))


def trainable(cfg: RunConfig, model: Transformer, stream: str) -> Transformer:
    """The model to train: with model.lora.rank > 0, the base plus fresh adapters."""
    lora = lora_config(cfg)
    return add_lora(model, lora, nnx.Rngs(stream_seed(cfg, stream))) if lora else model


def vocab_of(cfg: RunConfig, tokenizer) -> int:
    """The vocabulary size the model will have: its checkpoint's, or the tokenizer's for a random init."""
    if cfg.model.path:
        return load_hf_config(Path(cfg.model.path).expanduser())[0].vocab_size
    return int(cfg.model.init.get("vocab_size") or len(tokenizer))


def load_stage_model(folder: Path, cfg: RunConfig, what: str) -> Transformer:
    """The teacher or student a previous stage wrote (what: "teacher" or "student")."""
    if not (folder / "config.json").exists():
        command = {"teacher": "train-teacher", "student": "finetune"}.get(what, "run")
        raise ReftError(f"{folder}: no {what} here; run `reft-jax {command}` first")
    return _load(folder, cfg)


def _load(path, cfg: RunConfig) -> Transformer:
    opts = runtime_options(cfg)
    folder = checkpoint_folder(path, opts.param_dtype)  # the placer needs its config.json before loading
    return from_pretrained(folder, opts.dtype, opts.param_dtype, attention=opts.attention, remat=opts.remat,
                           scan_layers=opts.scan_layers, placer=_placer(cfg, folder))


def _placer(cfg: RunConfig, folder: Path) -> Placer | None:
    """The placer that loads the checkpoint in `folder` into its shards on the run's mesh (cfg.mesh), or None
    (from_pretrained's default, one device) when there is one device."""
    if jax.device_count() == 1:
        return None
    units = sharding.head_units(load_hf_config(folder)[0])
    return sharding.mesh_placer(sharding.make_mesh(cfg.mesh), units=units)
