"""The optimizer: AdamW with warmup + cosine or constant schedule, gradient clipping and accumulation."""

from __future__ import annotations

import jax
import optax

from reft_jax.config.schema import OptimSection
from reft_jax.errors import ConfigError

# Parameters that weight decay applies to: matrices, not norms or biases.
_DECAYED = ("kernel", "embed_tokens", "lora_a", "lora_b")


def learning_rate_schedule(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    """The learning rate per update: linear warmup, then cosine decay to end_lr_ratio x peak, or constant."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=cfg.learning_rate * cfg.end_lr_ratio)
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)), optax.constant_schedule(cfg.learning_rate)],
            [warmup])
    raise ConfigError(f"optim.schedule: {cfg.schedule!r} is not 'cosine' or 'constant'")


def _decay_mask(params):
    def decayed(path, _):
        return any(getattr(k, "key", None) in _DECAYED for k in path)
    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: OptimSection, total_steps: int) -> optax.GradientTransformation:
    """total_steps counts optimizer updates; with grad_accum = k each update consumes k step calls."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=_decay_mask),
    )
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum)
    return tx
