"""The conventional first stage of the sa_ft baselines: the base model SFT-trained on the alignment data
(baselines.sa_steps steps, default teacher.steps), written to WORKDIR/safety_aligned/model."""

from __future__ import annotations

from pathlib import Path

from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import base_model, trainable
from reft_jax.models.hf_io import save_model
from reft_jax.runtime.workdir import model_dir
from reft_jax.train import runs


def run(ctx: RunContext) -> Path:
    cfg = ctx.cfg
    out = ctx.workdir.safety_aligned
    steps = cfg.baselines.sa_steps or cfg.teacher.steps
    with cost.StageCost(out, "safety_alignment") as stage:
        model = trainable(cfg, base_model(cfg, ctx.vocab), "alignment_adapters")
        align = ctx.batches(ctx.alignment, "alignment_batches")
        aligned = runs.train(cfg, model, out, runs.safety_alignment(cfg, align.batch, steps=steps))
        save_model(aligned.model, ctx.tokenizer, model_dir(out))
        stage.flops = aligned.flops
    return out
