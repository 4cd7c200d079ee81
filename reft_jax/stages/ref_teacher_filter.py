"""Stage 2: the Ref-Teacher filter. The frozen teacher scores the user data by the cosine of each prompt's feature
with R_l, and flags what scores above tau (WORKDIR/filter/: scores.jsonl, kept.jsonl, flagged.jsonl, report.json)."""

from __future__ import annotations

import json

import numpy as np

from reft_jax import cost
from reft_jax import filter as rfilter
from reft_jax.context import RunContext
from reft_jax.data import TokenizedDataset
from reft_jax.errors import ReftError
from reft_jax.models.from_config import load_stage_model
from reft_jax.stages.common import prompt_flops, write_filter
from reft_jax.state import FrozenModel
from reft_jax.workdir import Workdir, model_dir


def teacher_settings(wd: Workdir) -> tuple[np.ndarray, int, float]:
    """The teacher stage's R_l, layer and tau."""
    try:
        r = np.load(wd.refusal_feature)
        settings = json.loads(wd.filter_settings.read_text())
    except FileNotFoundError as e:
        raise ReftError(f"{e.filename}: missing; run `reft-jax train-teacher` first") from None
    return r, int(settings["layer"]), float(settings["tau"])


def flags(ctx: RunContext, examples: list[dict], ds: TokenizedDataset) -> np.ndarray:
    """The Ref-Teacher filter's verdicts on other prompts (prompt-only examples, and tokenized): cos(f_l, R_l) > tau."""
    cfg, wd = ctx.cfg, ctx.workdir
    r, layer, tau = teacher_settings(wd)
    teacher = FrozenModel.of(load_stage_model(model_dir(wd.teacher), cfg, "teacher"))
    scores = rfilter.score(teacher, ds, r, layer, batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets),
                           progress=cfg.logging.progress)
    return scores > tau


def run(ctx: RunContext) -> dict:
    cfg, wd = ctx.cfg, ctx.workdir
    with cost.Stage(wd.filter(), "filter") as stage:
        teacher = load_stage_model(model_dir(wd.teacher), cfg, "teacher")
        r, layer, tau = teacher_settings(wd)
        result = rfilter.run_filter(FrozenModel.of(teacher), ctx.user, r, layer, tau, batch_size=cfg.filter.batch_size,
                                    buckets=list(cfg.data.buckets), progress=cfg.logging.progress)
        report = write_filter(ctx, result, wd.filter())
        stage.flops = prompt_flops(teacher.cfg, ctx.prompt_batches(ctx.user, cfg.filter.batch_size))
    return report
