"""Teacher and student training runs: the steps of `steps.py` driven by the loop of `loop.py`.

`batch_at(step)` gives the batch of a step (a pure function of the step index, so that resuming is exact);
the refusal feature R_l is recomputed by the current teacher over a fixed prompt pool every
`refusal.update_every` steps, the first time from the base model, and is checkpointed with the state. With
`refusal.reg_pool` the regulariser also covers one pool batch per step (pool[step % len(pool)]), so that the
direction the teacher learns is the one R_l measures on the pool; each recomputation logs the pool's (and
held-out prompts') mean cosines and AUROC in metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax import parallel, refusal
from reft_jax.errors import ConfigError
from reft_jax.models import Transformer
from reft_jax.train import loop
from reft_jax.train.optim import make_optimizer
from reft_jax.refusal import Batch, make_feature_fn
from reft_jax.state import FrozenModel
from reft_jax.train.steps import StudentLoss, TeacherLoss, make_student_step, make_teacher_step


def _loop_config(run_cfg, checkpoint_cfg, logging_cfg) -> loop.LoopConfig:
    return loop.LoopConfig(steps=int(run_cfg.steps), checkpoint_every=int(checkpoint_cfg.every),
                           max_to_keep=int(checkpoint_cfg.max_to_keep), log_every=int(logging_cfg.every),
                           tensorboard=bool(logging_cfg.tensorboard), wandb=bool(logging_cfg.wandb),
                           progress=bool(logging_cfg.progress))


class _Placement:
    """Where a run's arrays live: the mesh of cfg.mesh and the shardings the logical-axis rules give."""

    def __init__(self, cfg, model: Transformer, tx, example_batch: Batch):
        self.mesh = parallel.make_mesh(cfg.mesh)
        self.units = parallel.head_units(model.cfg)
        self.state = parallel.create_sharded_train_state(model, tx, self.mesh, units=self.units)
        self.state_sharding = parallel.train_state_sharding(self.state, self.mesh, units=self.units)
        self.batch_sharding = parallel.batch_sharding(example_batch, self.mesh)
        self.activation_sharding = parallel.activation_sharding(self.mesh)
        self.plan_memory = bool(cfg.mesh.plan_memory)

    def batch(self, batch: Batch) -> Batch:
        return parallel.shard_batch(batch, self.mesh)

    def frozen(self, model: Transformer | None) -> FrozenModel | None:
        if model is None:
            return None
        return parallel.shard_frozen_model(FrozenModel.of(model), self.mesh, units=self.units)

    def check_memory(self, step, *args, what: str) -> None:
        if self.plan_memory and jax.process_index() == 0:
            parallel.plan_memory(step, *args, what=what)


def prompt_features(features_fn, frozen: FrozenModel, batches: Sequence[Batch]):
    """(features [N, D], harmful [N], example_weight [N]) of labelled prompt batches, rows in order."""
    feats = jnp.concatenate([features_fn(frozen, b) for b in batches])
    harmful = np.concatenate([np.asarray(b["harmful"]) for b in batches])
    weight = np.concatenate([np.asarray(b["example_weight"]) for b in batches])
    return feats, harmful, weight


def compute_refusal_feature(features_fn, frozen: FrozenModel, pool: Sequence[Batch]) -> jax.Array:
    """R_l over a fixed pool of labelled prompt batches (difference in means, float32)."""
    feats, harmful, weight = prompt_features(features_fn, frozen, pool)
    refusal.check_refusal_classes(harmful, weight)
    return refusal.refusal_feature(feats, harmful, weight)


def separation_metrics(feats, harmful, weight, r, prefix: str) -> dict[str, float]:
    """{prefix}_cos_harmful / _cos_harmless (mean cosine to r of each class) and {prefix}_auroc (harmful vs
    harmless by that cosine) over the rows with weight > 0 and a known label; a class without rows is left out."""
    cos = np.asarray(refusal.cosine_scores(feats, r), np.float64)
    harmful, weight = np.asarray(harmful), np.asarray(weight)
    pos, neg = (weight > 0) & (harmful == 1), (weight > 0) & (harmful == 0)
    out = {f"{prefix}_cos_harmful": cos[pos].mean()} if pos.any() else {}
    if neg.any():
        out[f"{prefix}_cos_harmless"] = cos[neg].mean()
    auroc = refusal.auroc(cos[pos | neg], harmful[pos | neg] == 1)
    if auroc is not None:
        out[f"{prefix}_auroc"] = auroc
    return {k: float(v) for k, v in out.items()}


def train_teacher(cfg, model: Transformer, workdir: str | Path, batch_at: Callable[[int], Batch],
                  pool: Sequence[Batch], held_out: Sequence[Batch] = ()) -> tuple[Transformer, np.ndarray]:
    """Trains the Ref-Teacher from `model` (the base); returns the teacher and its final R_l.

    held_out: labelled prompt batches never trained on (e.g. the eval harmful prompts and harmless prompts
    outside the pool); at each recomputation of R_l their mean cosines and AUROC are logged (heldout_*).
    """
    layer = refusal.feature_layer(int(cfg.refusal.layer), model.cfg.num_layers)
    steps = int(cfg.teacher.steps)
    updates = max(steps // int(cfg.optim.grad_accum), 1)
    tx = make_optimizer(cfg.optim, updates)
    place = _Placement(cfg, model, tx, batch_at(0))
    reg_pool = bool(cfg.refusal.reg_pool)
    step = make_teacher_step(tx, TeacherLoss(layer=layer, lam=float(cfg.refusal.lam), kind=cfg.refusal.kind,
                                             block=int(cfg.model.loss_block)),
                             state_sharding=place.state_sharding, batch_sharding=place.batch_sharding,
                             activation_sharding=place.activation_sharding, with_pool=reg_pool)
    features = make_feature_fn(layer)
    every = int(cfg.refusal.update_every)

    def refresh(state, extras, i):
        """R_l from the current teacher every `every` steps and after the last one, with its diagnostics."""
        if i % every and i != steps:
            return extras, {}
        frozen = FrozenModel.of_train_state(state)
        feats, harmful, weight = prompt_features(features, frozen, pool)
        refusal.check_refusal_classes(harmful, weight)
        r = refusal.refusal_feature(feats, harmful, weight)
        previous = np.asarray(extras["refusal_feature"], np.float64)
        metrics = {"refusal_step": float(i), "r_norm": float(jnp.linalg.norm(r)),
                   **separation_metrics(feats, harmful, weight, r, "pool")}
        if np.linalg.norm(previous) > 0:  # how far R_l turned since its last recomputation (-1: it flipped)
            metrics["r_cos_prev"] = float(refusal.cosine_scores(np.asarray(r, np.float64), previous))
        if held_out:
            metrics.update(separation_metrics(*prompt_features(features, frozen, held_out), r, "heldout"))
        return {"refusal_feature": r}, metrics

    def pool_batch(i):
        return (place.batch(pool[i % len(pool)]),) if reg_pool else ()

    def step_fn(state, extras, i):
        return step(state, place.batch(batch_at(i)), extras["refusal_feature"], *pool_batch(i))

    extras = {"refusal_feature": jax.device_put(jnp.zeros((model.cfg.hidden_size,), jnp.float32),
                                                parallel.replicated(place.mesh))}
    place.check_memory(step, place.state, place.batch(batch_at(0)), extras["refusal_feature"], *pool_batch(0),
                       what="teacher step")
    state, extras = loop.run("teacher", workdir, _loop_config(cfg.teacher, cfg.checkpoint, cfg.logging),
                             place.state, step_fn, extras=extras, refresh=refresh,
                             meta={"seed": int(cfg.seed), "layer": layer}, run_config=cfg.to_dict())
    # The feature the filter uses is the final teacher's own: the loop's last refresh, after the last step.
    r = extras["refusal_feature"] if steps > 0 else compute_refusal_feature(features, FrozenModel.of(model), pool)
    return state.model(), np.asarray(r)


def train_student(cfg, model: Transformer, teacher: Transformer | None, workdir: str | Path,
                  user_at: Callable[[int], Batch], align_at: Callable[[int], Batch], *,
                  alpha: float = 0.0) -> Transformer:
    """Finetunes the student from `model` (the base) on kept user data, distilling `teacher` on alignment data.
    teacher None (with distill.beta = 0): plain finetuning, the no-defence baseline. alpha > 0 adds the CE of
    the alignment responses (joint SFT on both datasets)."""
    if teacher is None and float(cfg.distill.beta) != 0:
        raise ConfigError("distill.beta must be 0 when finetuning without a teacher")
    updates = max(int(cfg.student.steps) // int(cfg.optim.grad_accum), 1)
    tx = make_optimizer(cfg.optim, updates)
    place = _Placement(cfg, model, tx, user_at(0))
    frozen_teacher = place.frozen(teacher)
    step = make_student_step(tx, StudentLoss(beta=float(cfg.distill.beta), temperature=float(cfg.distill.temperature),
                                               alpha=float(alpha), block=int(cfg.model.loss_block)),
                             state_sharding=place.state_sharding, batch_sharding=place.batch_sharding,
                             activation_sharding=place.activation_sharding, teacher_sharding=None if teacher is None else parallel.frozen_model_sharding(
                                 frozen_teacher, place.mesh, units=place.units))

    def step_fn(state, extras, i):
        del extras
        return step(state, frozen_teacher, place.batch(user_at(i)), place.batch(align_at(i)))

    place.check_memory(step, place.state, frozen_teacher, place.batch(user_at(0)), place.batch(align_at(0)),
                       what="student step")
    state, _ = loop.run("student", workdir, _loop_config(cfg.student, cfg.checkpoint, cfg.logging), place.state,
                        step_fn, extras={}, meta={"seed": int(cfg.seed)}, run_config=cfg.to_dict())
    return state.model()
