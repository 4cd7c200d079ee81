"""Teacher and student training runs: the steps of `steps.py` driven by the loop of `loop.py`.

`batch_at(step)` gives the batch of a step (a pure function of the step index, so that resuming is exact);
the refusal feature R_l is recomputed by the current teacher over a fixed prompt pool every
`refusal.update_every` steps, the first time from the base model, and is checkpointed with the state.
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
from reft_jax.train.steps import (Batch, FrozenModel, StudentLoss, TeacherLoss, make_feature_fn,
                                  make_student_step, make_teacher_step)


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


def refusal_layer(cfg, model: Transformer) -> int:
    """refusal.layer, where -1 means the middle block (num_layers // 2)."""
    layer = int(cfg.refusal.layer)
    return model.cfg.num_layers // 2 if layer < 0 else layer


def compute_refusal_feature(features_fn, frozen: FrozenModel, pool: Sequence[Batch]) -> jax.Array:
    """R_l over a fixed pool of labelled prompt batches (difference in means, float32)."""
    feats = jnp.concatenate([features_fn(frozen, b) for b in pool])
    harmful = np.concatenate([np.asarray(b["harmful"]) for b in pool])
    weight = np.concatenate([np.asarray(b["example_weight"]) for b in pool])
    refusal.check_refusal_classes(harmful, weight)
    return refusal.refusal_feature(feats, harmful, weight)


def train_teacher(cfg, model: Transformer, workdir: str | Path, batch_at: Callable[[int], Batch],
                  pool: Sequence[Batch]) -> tuple[Transformer, np.ndarray]:
    """Trains the Ref-Teacher from `model` (the base); returns the teacher and its final R_l."""
    layer = refusal_layer(cfg, model)
    updates = max(int(cfg.teacher.steps) // int(cfg.optim.grad_accum), 1)
    tx = make_optimizer(cfg.optim, updates)
    place = _Placement(cfg, model, tx, batch_at(0))
    step = make_teacher_step(tx, TeacherLoss(layer=layer, lam=float(cfg.refusal.lam), kind=cfg.refusal.kind),
                             state_sharding=place.state_sharding, batch_sharding=place.batch_sharding)
    features = make_feature_fn(layer)
    every = int(cfg.refusal.update_every)

    def refresh(state, extras, i):
        if i % every == 0:
            extras = {"refusal_feature": compute_refusal_feature(features, FrozenModel.of_train_state(state), pool)}
        return extras

    def step_fn(state, extras, i):
        return step(state, place.batch(batch_at(i)), extras["refusal_feature"])

    extras = {"refusal_feature": jax.device_put(jnp.zeros((model.cfg.hidden_size,), jnp.float32),
                                                parallel.replicated(place.mesh))}
    place.check_memory(step, place.state, place.batch(batch_at(0)), extras["refusal_feature"], what="teacher step")
    state, extras = loop.run("teacher", workdir, _loop_config(cfg.teacher, cfg.checkpoint, cfg.logging),
                             place.state, step_fn, extras=extras, refresh=refresh,
                             meta={"seed": int(cfg.seed), "layer": layer}, run_config=cfg.to_dict())
    # The feature the filter uses is the final teacher's own.
    final = FrozenModel.of_train_state(state)
    r = compute_refusal_feature(features, final, pool)
    return final.model(), np.asarray(r)


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
                                               alpha=float(alpha)),
                             state_sharding=place.state_sharding, batch_sharding=place.batch_sharding,
                             teacher_sharding=None if teacher is None else parallel.frozen_model_sharding(
                                 frozen_teacher, place.mesh, units=place.units))

    def step_fn(state, extras, i):
        del extras
        return step(state, frozen_teacher, place.batch(user_at(i)), place.batch(align_at(i)))

    place.check_memory(step, place.state, frozen_teacher, place.batch(user_at(0)), place.batch(align_at(0)),
                       what="student step")
    state, _ = loop.run("student", workdir, _loop_config(cfg.student, cfg.checkpoint, cfg.logging), place.state,
                        step_fn, extras={}, meta={"seed": int(cfg.seed)}, run_config=cfg.to_dict())
    return state.model()
