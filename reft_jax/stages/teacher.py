"""Stage 1: the Ref-Teacher, trained from the base model with the refusal-feature regulariser.

Writes the teacher (WORKDIR/teacher/model), its final refusal feature R_l (refusal_feature.npy) and the
filter's settings (filter.json: the layer R_l is read at and the threshold tau, calibrated on the labelled pool
when filter.calibrate_recall > 0)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np

from reft_jax import cost, refusal
from reft_jax import filter as rfilter
from reft_jax.context import RunContext
from reft_jax.errors import ReftError
from reft_jax.models.from_config import base_model, lora_config, trainable
from reft_jax.stages.common import save_model
from reft_jax.state import FrozenModel
from reft_jax.train import runs
from reft_jax.workdir import model_dir

logger = logging.getLogger(__name__)


def held_out_prompts(ctx: RunContext) -> list[dict]:
    """Batches of prompts the teacher never trains on, whose separation is logged at each R_l refresh: the eval
    harmful prompts and as many harmless ones from the pool's source that neither the pool nor the alignment
    data holds. Empty (with a warning) when they are not configured or cannot be read."""
    d = ctx.cfg.data
    if not (d.eval.harmful and d.pool.harmless):
        return []
    try:
        harmful = ctx.load_examples(d.eval.harmful, with_response=False, harmful=True)[: d.eval.n_harmful]
        seen = {tuple(ids) for ids in ctx.pool.prompt_ids + ctx.alignment.prompt_ids}
        candidates = ctx.load_examples(d.pool.harmless, with_response=False, harmful=False)[: len(harmful) + len(seen)]
        ds = ctx.tokenize(harmful + candidates, "tokenizing held-out prompts")
    except (ReftError, OSError) as e:
        logger.warning("teacher: no held-out refusal metrics (%s)", e)
        return []
    unseen = [i for i in range(len(harmful), len(ds)) if tuple(ds.prompt_ids[i]) not in seen]
    return list(ctx.prompt_batches(ds.select(list(range(len(harmful))) + unseen[: len(harmful)])))


def run(ctx: RunContext) -> Path:
    cfg, wd = ctx.cfg, ctx.workdir
    out = wd.teacher
    with cost.Stage(out, "teacher") as stage:
        model = trainable(cfg, base_model(cfg, ctx.vocab), salt=1)
        align = ctx.batches(ctx.alignment)
        pool = list(ctx.prompt_batches(ctx.pool))
        held_out = held_out_prompts(ctx)
        teacher, r = runs.train_teacher(cfg, model, out, align.batch, pool, held_out)
        layer = refusal.feature_layer(cfg.refusal.layer, teacher.cfg.num_layers)
        tau = cfg.filter.tau
        if cfg.filter.calibrate_recall > 0:
            pool_scores = rfilter.score(FrozenModel.of(teacher), ctx.pool, r, layer, batch_size=cfg.data.batch_size,
                                        buckets=list(cfg.data.buckets), progress=cfg.logging.progress)
            tau = refusal.calibrate_threshold(pool_scores, ctx.pool.harmful, cfg.filter.calibrate_recall)
        save_model(teacher, ctx.tokenizer, model_dir(out))
        if jax.process_index() == 0:
            np.save(wd.refusal_feature, np.asarray(r))
            wd.filter_settings.write_text(json.dumps({"layer": layer, "tau": tau}, indent=2) + "\n")
        steps, lora = cfg.teacher.steps, lora_config(cfg)
        refreshes = -(-steps // cfg.refusal.update_every) + 1  # R_l every update_every steps, and at the end
        scored = pool + held_out  # what each refresh runs forward
        stage.flops = (cost.train_flops(model.cfg, lora, align.batch, steps)
                       + refreshes * cost.forward_flops(model.cfg, scored.__getitem__, len(scored)))
        if cfg.refusal.reg_pool:  # a pool batch per step through blocks <= layer: that share of a train step
            stage.flops += layer * cost.train_flops(model.cfg, lora, lambda i: pool[i % len(pool)],
                                                    steps) // model.cfg.num_layers
    return out
