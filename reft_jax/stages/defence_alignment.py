"""The alignment stage of the defences that align the base model their own way before plain finetuning:
Vaccine, RepNoise and Booster (reft_jax.train.defences), each baselines.sa_steps step calls from the base model
(the budget of sa_ft's safety alignment), written to WORKDIR/DEFENCE_aligned/model."""

from __future__ import annotations

import functools
from pathlib import Path

from reft_jax.config.schema import RunConfig
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models import flops
from reft_jax.models.from_config import base_model, lora_config, trainable
from reft_jax.models.hf_io import save_model
from reft_jax.runtime.workdir import model_dir
from reft_jax.train import defences, runs

NEEDS_HARMFUL = ("repnoise", "booster")  # the defences that train against harmful answers too


def update(cfg: RunConfig, defence: str):
    """The defence's update with the run's settings."""
    d, block = cfg.defences, cfg.model.loss_block
    if defence == "vaccine":
        return defences.Vaccine(rho=d.vaccine.rho, block=block)
    if defence == "repnoise":
        return defences.RepNoise(alpha=d.repnoise.alpha, beta=d.repnoise.beta, block=block, seed=cfg.seed)
    return defences.Booster(lam=d.booster.lam, alpha=d.booster.alpha, block=block)


def run(ctx: RunContext, defence: str) -> Path:
    cfg = ctx.cfg
    out = ctx.workdir.aligned(defence)
    steps = cfg.baselines.sa_steps or cfg.teacher.steps
    with cost.StageCost(out, f"alignment:{defence}") as stage:
        model = trainable(cfg, base_model(cfg, ctx.vocab), salt=4)
        align = ctx.batches(ctx.alignment, seed_offset=5).batch
        harmful = ctx.batches(ctx.harmful_pairs, seed_offset=6).batch if defence in NEEDS_HARMFUL else None
        aligned = runs.train_alignment_defence(cfg, model, out, update(cfg, defence), align, harmful, steps=steps)
        save_model(aligned, ctx.tokenizer, model_dir(out))
        stage.flops = defence_flops(defence, model.cfg, lora_config(cfg), align, harmful, steps)
    return out


def defence_flops(defence: str, model_cfg, lora, align, harmful, steps: int) -> int:
    """The model FLOPs of `steps` steps: every forward/backward pass the defence's update makes."""
    total = cost.train_passes(model_cfg, lora, align, steps)  # the pass whose gradient is the alignment's
    if defence == "vaccine":  # + the pass that finds the perturbation (no weight gradients)
        return total + cost.flops_over(functools.partial(flops.input_gradient_flops, model_cfg, lora=lora),
                                       align, steps)
    if defence == "repnoise":  # + the harmful batch, with its vocabulary projection at every depth
        return (total + cost.train_passes(model_cfg, lora, harmful, steps)
                + cost.flops_over(functools.partial(flops.logit_lens_flops, model_cfg, lora=lora), harmful, steps))
    return total + 2 * cost.train_passes(model_cfg, lora, harmful, steps)  # booster: the harmful loss at w and w'
