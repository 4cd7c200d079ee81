"""What several stages share: the registration of a filter, writing its outputs, counting scoring FLOPs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from reft_jax.data import Batches
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models import ModelConfig
from reft_jax.refusal.scoring import FilterResult
from reft_jax.runtime.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Filter:
    """A filter of the user data, as its module registers it (reft_jax.stages.FILTERS): the name methods use, its
    stage (`run` scores the user data into `folder` of the workdir: scores.jsonl, report.json, ...; done when
    report.json exists), the stages it reads, how a user produces it (for errors), and `flags`, its verdicts on
    other prompts (flags(ctx, examples, tokenized) -> bool per prompt: the over-refusal rows), and when a run
must skip it."""

    name: str
    run: Callable[[RunContext], dict]
    flags: Callable[..., np.ndarray]
    folder: str = ""  # "" = filters/NAME
    stage: str = ""  # "" = filter:NAME
    needs: tuple[str, ...] = ()
    command: str = ""  # "" = a run of a method that uses it
    unavailable: Callable[..., str | None] = lambda cfg: None  # why a run config cannot use it (its methods skip)
    inputs: tuple[str, ...] = ()  # the config fields its scores depend on, besides the model's and its needs'
    reads: tuple[str, ...] = ()  # dataset groups it reads besides the user data (RunContext DATASETS)

    def __post_init__(self):
        object.__setattr__(self, "folder", self.folder or f"filters/{self.name}")
        object.__setattr__(self, "stage", self.stage or f"filter:{self.name}")
        object.__setattr__(self, "command", self.command or f"reft-jax run with the {self.name} filter")

    def path(self, wd: Workdir) -> Path:
        return wd.root / self.folder


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
        result.write(folder, [row_digest(ex) for ex in ctx.user_examples], **extra)
        result.write_rows(folder, rows)
    return {**result.report(), **extra}


def row_digest(example: dict) -> str:
    """What identifies a user row among others: its prompt and response as trained (a reviewed file's rows are
    matched to the filter's scores by it: `finetune --kept`)."""
    return hashlib.sha256(json.dumps([example["prompt"], example["response"]]).encode()).hexdigest()[:16]


def _describe(user) -> str:
    if user.mix == "none":
        return str(user.source)
    return f"{user.task} poisoned with harmful pairs (n={user.n}, p={user.p})"


def prompt_flops(model_cfg: ModelConfig, batches: Batches) -> int:
    """Forward FLOPs of one pass over prompt batches (a scoring pass)."""
    return cost.forward_passes(model_cfg, batches.batch, batches.num_steps)
