"""Teacher and student training runs: the steps of `steps.py` driven by the loop of `loop.py`.

`batch_at(step)` gives the batch of a step (a pure function of the step index, so that resuming is exact);
the refusal feature R_l is recomputed by the current teacher over a fixed prompt pool every
`refusal.update_every` steps, the first time from the base model, and is checkpointed with the state. With
`refusal.reg_pool` the regulariser also covers one pool batch per step (pool[step % len(pool)]); each
recomputation logs the pool's (and the check split's) mean cosines and AUROC in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax import refusal
from reft_jax.config.schema import RunConfig
from reft_jax.data import Batch, process_slice
from reft_jax.errors import ConfigError
from reft_jax.models import ModelConfig, Transformer, flops
from reft_jax.refusal.feature import make_feature_fn
from reft_jax.runtime import parallel
from reft_jax.runtime.state import FrozenModel
from reft_jax.train import loop
from reft_jax.train.defences import Lisa
from reft_jax.train.optim import make_optimizer
from reft_jax.train.steps import StudentLoss, TeacherLoss, make_step


def _loop_config(cfg: RunConfig, steps: int) -> loop.LoopConfig:
    return loop.LoopConfig(steps, cfg.checkpoint, cfg.logging)


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a training run gives: the trained model, the model FLOPs of all its step calls (resumed ones
    included) counted by the step itself (its loss's or update's `flops`), and the teacher's final R_l."""

    model: Transformer
    flops: int
    r: np.ndarray | None = None


def local_rows(batch: Batch) -> Batch:
    """This process's rows of a batch every process holds whole (the refusal pool's), for a step whose batches
    are assembled from every process's rows (a multi-process run: each adds its own)."""
    rows = process_slice(len(batch["input_ids"]), jax.process_index(), jax.process_count())
    return {k: v[rows] for k, v in batch.items()}


def steps_flops(step, model: Transformer, batches_at: Callable[[int], tuple[Batch, ...]], steps: int) -> int:
    """The model FLOPs of `steps` calls of a step (a loss or update with `flops`), each on batches_at(i)."""
    return sum(step.flops(model.cfg, model.opts.lora, *map(parallel.global_shape, batches_at(i))) for i in range(steps))


class _Placement:
    """Where a run's arrays live: the mesh of cfg.mesh and the shardings the logical-axis rules give."""

    def __init__(self, cfg: RunConfig, model: Transformer, tx, example_batch: Batch):
        self.mesh = parallel.make_mesh(cfg.mesh)
        self.units = parallel.head_units(model.cfg)
        self.state = parallel.create_sharded_train_state(model, tx, self.mesh, units=self.units)
        self.state_sharding = parallel.train_state_sharding(self.state, self.mesh, units=self.units)
        self.batch_sharding = parallel.batch_sharding(example_batch, self.mesh)
        self.activation_sharding = parallel.activation_sharding(self.mesh)
        self.plan_memory = cfg.mesh.plan_memory

    def batch(self, batch: Batch) -> Batch:
        return parallel.shard_batch(batch, self.mesh)

    def frozen(self, model: Transformer | None) -> FrozenModel | None:
        if model is None:
            return None
        return parallel.shard_frozen_model(FrozenModel.of(model), self.mesh, units=self.units)

    def check_memory(self, step, *args, what: str) -> None:
        if self.plan_memory and jax.process_index() == 0:
            parallel.plan_memory(step, *args, what=what)


def labelled_features(features_fn, frozen: FrozenModel, batches: Sequence[Batch]):
    """(features [N, D], harmful [N], example_weight [N]) of labelled prompt batches, rows in order."""
    feats = jnp.concatenate([features_fn(frozen, b) for b in batches])
    harmful = np.concatenate([np.asarray(b["harmful"]) for b in batches])
    weight = np.concatenate([np.asarray(b["example_weight"]) for b in batches])
    return feats, harmful, weight


def compute_refusal_feature(features_fn, frozen: FrozenModel, pool: Sequence[Batch]) -> jax.Array:
    """R_l over a fixed pool of labelled prompt batches (difference in means, float32)."""
    feats, harmful, weight = labelled_features(features_fn, frozen, pool)
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


class RefusalRefresh(loop.Hook):
    """The teacher's every-N hook: R_l recomputed by the current teacher over the fixed pool (its carry, which
    the step reads), with the pool's and the check split's separation, the base model's check AUROC beside it,
    and how far R_l turned since the last recomputation as metrics."""

    def __init__(self, features_fn, pool: Sequence[Batch], check: Sequence[Batch], every: int, initial,
                 base_check_auroc: float | None = None):
        self.features_fn, self.pool, self.check, self.every = features_fn, pool, check, every
        self.base_check_auroc = base_check_auroc
        self.carry = initial

    def __call__(self, state, step: int) -> dict[str, float]:
        frozen = FrozenModel.of_train_state(state)
        feats, harmful, weight = labelled_features(self.features_fn, frozen, self.pool)
        refusal.check_refusal_classes(harmful, weight)
        r = refusal.refusal_feature(feats, harmful, weight)
        previous = np.asarray(self.carry, np.float64)
        metrics = {"refusal_step": float(step), "r_norm": float(jnp.linalg.norm(r)),
                   **separation_metrics(feats, harmful, weight, r, "pool")}
        if np.linalg.norm(previous) > 0:  # how far R_l turned since its last recomputation (-1: it flipped)
            metrics["r_cos_prev"] = float(refusal.cosine_scores(np.asarray(r, np.float64), previous))
        if self.check:
            metrics.update(separation_metrics(*labelled_features(self.features_fn, frozen, self.check), r, "check"))
        if self.base_check_auroc is not None:
            metrics["check_auroc_base"] = self.base_check_auroc
        self.carry = r
        return metrics

    def flops(self, cfg: ModelConfig) -> int:
        """One recomputation: a forward pass over the pool and the check split."""
        return sum(flops.forward_flops(cfg, *parallel.global_shape(b)) for b in (*self.pool, *self.check))


def train_teacher(cfg: RunConfig, model: Transformer, workdir: str | Path, batch_at: Callable[[int], Batch],
                  pool: Sequence[Batch], check: Sequence[Batch] = (),
                  base_check_auroc: float | None = None) -> Trained:
    """Trains the Ref-Teacher from `model` (the base); returns the teacher, its final R_l and the FLOPs of its
    steps and R_l recomputations.

    check: labelled prompt batches never trained on (the pool's check split); at each recomputation of R_l their
    mean cosines and AUROC are logged (check_*), beside base_check_auroc (the base model's, check_auroc_base).
    """
    layer = refusal.feature_layer(cfg.refusal.layer, model.cfg.num_layers)
    steps = cfg.teacher.steps
    tx = make_optimizer(cfg.optim, max(steps // cfg.optim.grad_accum, 1))
    place = _Placement(cfg, model, tx, batch_at(0))
    loss_fn = TeacherLoss(layer=layer, lam=cfg.refusal.lam, kind=cfg.refusal.kind, block=cfg.model.loss_block)
    step = make_step(tx, loss_fn, state_sharding=place.state_sharding,
                     arg_shardings=(None,) + (place.batch_sharding,) * (2 if cfg.refusal.reg_pool else 1),
                     activation_sharding=place.activation_sharding)
    features = make_feature_fn(layer)
    zero = jax.device_put(jnp.zeros((model.cfg.hidden_size,), jnp.float32), parallel.replicated(place.mesh))
    refresh = RefusalRefresh(features, pool, check, cfg.refusal.update_every, zero, base_check_auroc)

    def batches_at(i):  # the alignment batch, and the pool batch of the regulariser (refusal.reg_pool)
        return (batch_at(i), local_rows(pool[i % len(pool)])) if cfg.refusal.reg_pool else (batch_at(i),)

    def step_fn(state, i):
        return step(state, refresh.carry, *map(place.batch, batches_at(i)))

    place.check_memory(step, place.state, refresh.carry, *map(place.batch, batches_at(0)), what="teacher step")
    state = loop.run("teacher", workdir, _loop_config(cfg, steps), place.state, step_fn, hooks=[refresh],
                     meta={"seed": cfg.seed, "layer": layer}, run_config=cfg.to_dict())
    # The feature the filter uses is the final teacher's own: the hook's last call, after the last step.
    r = refresh.carry if steps > 0 else compute_refusal_feature(features, FrozenModel.of(model), pool)
    cost = steps_flops(loss_fn, model, batches_at, steps) + refresh.calls(steps) * refresh.flops(model.cfg)
    return Trained(state.model(), cost, np.asarray(r))


def train_student(cfg: RunConfig, model: Transformer, teacher: Transformer | None, workdir: str | Path,
                  user_at: Callable[[int], Batch], align_at: Callable[[int], Batch], *, steps: int,
                  beta: float, alpha: float = 0.0, data_id: str = "") -> Trained:
    """Finetunes the student from `model` (the base) for `steps` step calls on kept user data, plus
    beta x KL(teacher || student) on alignment data (distill.temperature) and alpha x the CE of the alignment
    responses (joint SFT on both datasets). teacher None (beta = 0): plain finetuning, the no-defence baseline.
    data_id names the user data; a checkpoint of other data is not resumed (an error says so)."""
    if teacher is None and beta != 0:
        raise ConfigError("distill.beta must be 0 when finetuning without a teacher")
    tx = make_optimizer(cfg.optim, max(steps // cfg.optim.grad_accum, 1))
    place = _Placement(cfg, model, tx, user_at(0))
    frozen_teacher = place.frozen(teacher)
    teacher_sharding = None if teacher is None else parallel.frozen_model_sharding(frozen_teacher, place.mesh,
                                                                                   units=place.units)
    loss_fn = StudentLoss(beta=beta, temperature=cfg.distill.temperature, alpha=alpha, block=cfg.model.loss_block,
                          kl_positions=cfg.distill.positions)
    step = make_step(tx, loss_fn, state_sharding=place.state_sharding,
                     arg_shardings=(teacher_sharding, place.batch_sharding, place.batch_sharding),
                     activation_sharding=place.activation_sharding)

    def batches_at(i):
        return user_at(i), align_at(i)

    def step_fn(state, i):
        return step(state, frozen_teacher, *map(place.batch, batches_at(i)))

    place.check_memory(step, place.state, frozen_teacher, *map(place.batch, batches_at(0)), what="student step")
    state = loop.run("student", workdir, _loop_config(cfg, steps), place.state, step_fn,
                     meta={"seed": cfg.seed, "user_data": data_id}, run_config=cfg.to_dict())
    return Trained(state.model(), steps_flops(loss_fn, model, batches_at, steps))


def train_alignment_defence(cfg: RunConfig, model: Transformer, workdir: str | Path, update,
                            align_at: Callable[[int], Batch], harmful_at: Callable[[int], Batch] | None = None, *,
                            steps: int) -> Trained:
    """An alignment-stage defence (defences.Vaccine / Booster / RepNoise) trained from `model` for `steps` step
    calls on alignment batches, and harmful-answer batches where the defence takes them."""
    tx = make_optimizer(cfg.optim, max(steps // cfg.optim.grad_accum, 1))
    place = _Placement(cfg, model, tx, align_at(0))
    sources = [align_at] + ([harmful_at] if harmful_at is not None else [])
    step = make_step(tx, update, state_sharding=place.state_sharding,
                     arg_shardings=(place.batch_sharding,) * len(sources),
                     activation_sharding=place.activation_sharding)

    def batches_at(i):
        return tuple(at(i) for at in sources)

    def step_fn(state, i):
        return step(state, *map(place.batch, batches_at(i)))

    place.check_memory(step, place.state, *map(place.batch, batches_at(0)), what="alignment step")
    name = type(update).__name__.lower()
    state = loop.run(name, workdir, _loop_config(cfg, steps), place.state, step_fn,
                     meta={"seed": cfg.seed, "defence": name}, run_config=cfg.to_dict())
    return Trained(state.model(), steps_flops(update, model, batches_at, steps))


class LisaAnchor(loop.Hook):
    """Lisa's anchor: the weights at the last switch between alignment and user steps (at first, the starting
    weights), copied so that the donated state does not take them along; checkpointed as the hook's carry."""

    def __init__(self, params, lisa: Lisa):
        self.lisa = lisa
        self.carry = jax.tree.map(jnp.copy, params)

    def __call__(self, state, step: int) -> dict[str, float]:
        if 0 < step and self.lisa.aligning(step) != self.lisa.aligning(step - 1):
            self.carry = jax.tree.map(jnp.copy, state.params)
        return {}


def check_lisa_budget(cfg: RunConfig, steps: int | None = None) -> None:
    """Lisa's first cycle must leave some of the `steps` (default student.steps) to the user data."""
    steps, align_steps = steps or cfg.student.steps, cfg.defences.lisa.align_steps
    if steps <= align_steps:
        raise ConfigError(f"defences.lisa.align_steps: {align_steps} alignment steps leave none of the {steps} "
                          "student steps to the user data; lower it (or raise student.steps)")


def train_lisa(cfg: RunConfig, model: Transformer, workdir: str | Path, user_at: Callable[[int], Batch],
               align_at: Callable[[int], Batch], *, steps: int, data_id: str = "") -> Trained:
    """Lisa's finetuning from `model` (the safety-aligned one): `steps` step calls, each cycle
    defences.lisa.align_steps on alignment batches then user_steps on user batches, with the proximal term
    toward the weights at the last switch (defences.Lisa)."""
    c = cfg.defences.lisa
    check_lisa_budget(cfg, steps)
    tx = make_optimizer(cfg.optim, max(steps // cfg.optim.grad_accum, 1))
    place = _Placement(cfg, model, tx, user_at(0))
    lisa = Lisa(rho=c.rho, prox_from=int(c.prox_warmup * steps), align_steps=c.align_steps,
                user_steps=c.user_steps, block=cfg.model.loss_block)
    step = make_step(tx, lisa, state_sharding=place.state_sharding,
                     arg_shardings=(getattr(place.state_sharding, "params", None), place.batch_sharding),
                     activation_sharding=place.activation_sharding)
    anchor = LisaAnchor(place.state.params, lisa)

    def batches_at(i):  # the user batch of an alignment step is skipped, as the authors' trainer discards it
        return (align_at(i) if lisa.aligning(i) else user_at(i),)

    def step_fn(state, i):
        return step(state, anchor.carry, *map(place.batch, batches_at(i)))

    place.check_memory(step, place.state, anchor.carry, place.batch(user_at(0)), what="Lisa step")
    state = loop.run("lisa", workdir, _loop_config(cfg, steps), place.state, step_fn, hooks=[anchor],
                     meta={"seed": cfg.seed, "user_data": data_id}, run_config=cfg.to_dict())
    return Trained(state.model(), steps_flops(lisa, model, batches_at, steps))
