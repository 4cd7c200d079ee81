"""The alignment stage of the defences that align the base model their own way before plain finetuning:
Vaccine, RepNoise and Booster (reft_jax.train.defences), each baselines.sa_steps step calls from the base model
(the budget of sa_ft's safety alignment), written to WORKDIR/DEFENCE_aligned/model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from reft_jax.config.schema import RunConfig
from reft_jax.config.streams import stream_seed
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import base_model, trainable
from reft_jax.models.hf_io import save_model
from reft_jax.runtime.workdir import Workdir, model_dir
from reft_jax.train import defences, runs


@dataclasses.dataclass(frozen=True)
class Defence:
    """An alignment-stage defence as registered (DEFENCES): its update (reft_jax.train.defences, which counts its
    own FLOPs) built from the run's config, and whether it also trains on harmful answers (data.alignment's
    harmful pairs). Its stage is alignment:NAME, its folder NAME_aligned/; methods start from it by name."""

    name: str
    update: Callable[[RunConfig], object]
    harmful_pairs: bool = False

    @property
    def stage(self) -> str:
        return f"alignment:{self.name}"

    def path(self, wd: Workdir) -> Path:
        return wd.seed_root / f"{self.name}_aligned"


def run(ctx: RunContext, defence: Defence) -> Path:
    cfg = ctx.cfg
    out = defence.path(ctx.workdir)
    steps = cfg.baselines.sa_steps or cfg.teacher.steps
    with cost.StageCost(out, defence.stage) as stage:
        model = trainable(cfg, base_model(cfg, ctx.vocab), "alignment_adapters")
        align = ctx.batches(ctx.alignment, "alignment_batches").batch
        harmful = ctx.batches(ctx.harmful_pairs, "harmful_pair_batches").batch if defence.harmful_pairs else None
        aligned = runs.train(cfg, model, out, runs.alignment_defence(defence.update(cfg), align, harmful, steps=steps))
        save_model(aligned.model, ctx.tokenizer, model_dir(out))
        stage.flops = aligned.flops
    return out


DEFENCES = {d.name: d for d in (
    Defence("vaccine", lambda cfg: defences.Vaccine(rho=cfg.defences.vaccine.rho, block=cfg.model.loss_block)),
    Defence("repnoise", lambda cfg: defences.RepNoise(alpha=cfg.defences.repnoise.alpha, beta=cfg.defences.repnoise.beta,
                                                      block=cfg.model.loss_block, seed=stream_seed(cfg, "repnoise_noise")), harmful_pairs=True),
    Defence("booster", lambda cfg: defences.Booster(lam=cfg.defences.booster.lam, alpha=cfg.defences.booster.alpha,
                                                    block=cfg.model.loss_block), harmful_pairs=True),
)}
