"""What several stages do the same way: write a filter's outputs, count scoring FLOPs."""

from __future__ import annotations

from pathlib import Path

import jax

from reft_jax.data import Batches
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models import ModelConfig
from reft_jax.refusal.scoring import FilterResult


def write_filter(ctx: RunContext, result: FilterResult, folder: Path, **fields) -> dict:
    """A filter's verdicts on the user data (process 0 writes): scores.jsonl, kept.jsonl and flagged.jsonl (the
    rows as read, with scores), and report.json with the metrics, `fields` (the filter's settings), which user
    data was scored (its fingerprint: finetuning checks it), and without labels the top-scored rows."""
    rows = [ex.get("row") or {k: ex[k] for k in ("prompt", "response", "harmful")} for ex in ctx.user_examples]
    user = {"source": _describe(ctx.cfg.data.user), "num_examples": len(rows), "fingerprint": ctx.user_fingerprint}
    extra = {"data": "user", "user_data": user, **fields}
    if (result.label < 0).any():
        extra["top_scored"] = result.top_scored(rows)
    if jax.process_index() == 0:
        result.write(folder, **extra)
        result.write_rows(folder, rows)
    return {**result.report(), **extra}


def _describe(user) -> str:
    if user.mix == "none":
        return str(user.source)
    return f"{user.task} poisoned with harmful pairs (n={user.n}, p={user.p})"


def prompt_flops(model_cfg: ModelConfig, batches: Batches) -> int:
    """Forward FLOPs of one pass over prompt batches (a scoring pass)."""
    return cost.forward_passes(model_cfg, batches.batch, batches.num_steps)
