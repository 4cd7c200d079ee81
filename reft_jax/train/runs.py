"""Training runs: one `train` for the teacher, the student, the safety alignment, the alignment-stage defences and
Lisa, each described by a `Spec`.

A spec says what differs between runs: what a step optimises (a loss or a defence's update, an objective of
`steps.py`), the step's arguments after the state (first what the run holds, `Held`: R_l, the frozen teacher or
Lisa's anchor; then its batches, each a pure function of the step index, so that resuming is exact), how many
step calls, the run's name and the facts a resumed run must agree with. `train` does the rest the same way for
every run: the optimizer, the placement on the mesh, the jitted step (`steps.make_step`), the memory check, the
loop of `loop.py` (checkpoints, logs, hooks) and the FLOPs of its steps and hooks. The builders below (`teacher`,
`student`, `safety_alignment`, `alignment_defence`, `lisa`) make each run's spec from the config.

The teacher's R_l is recomputed by the current teacher over a fixed prompt pool every `refusal.update_every`
steps, the first time from the base model, and is checkpointed with the state (the carry of a hook the step
holds). With `refusal.reg_pool` the regulariser also covers one pool batch per step (pool[step % len(pool)]); each
recomputation logs the pool's (and the check split's) mean cosines and AUROC in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax import refusal
from reft_jax.config.schema import RunConfig
from reft_jax.data import Batch, process_slice
from reft_jax.errors import ConfigError
from reft_jax.models import ModelConfig, Transformer, flops
from reft_jax.refusal.readout import make_feature_fn
from reft_jax.runtime import parallel
from reft_jax.runtime.state import FrozenModel
from reft_jax.train import loop, steps
from reft_jax.train.defences import Lisa
from reft_jax.train.optim import make_optimizer
from reft_jax.train.steps import SFTLoss, StudentLoss, TeacherLoss


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a training run gives: the trained model, the model FLOPs of all its step calls (resumed ones
    included) counted by the step itself (its objective's `flops`) and of its hooks' calls, and the teacher's
    final R_l."""

    model: Transformer
    flops: int
    r: np.ndarray | None = None


class Placement:
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


class Held:
    """A step argument before the batches, the same at every step unless a hook of the run changes it:
    `place(placement)` puts it on the run's mesh before the first step and returns its sharding (None:
    replicated); `value` is what the step gets."""

    value: Any = None

    def place(self, placement: Placement) -> Any:
        raise NotImplementedError


class Frozen(Held):
    """A model every step runs forward only (the student's teacher), placed once; None: no model."""

    def __init__(self, model: Transformer | None):
        self.model = model

    def place(self, placement: Placement) -> Any:
        self.value = placement.frozen(self.model)
        if self.value is None:
            return None
        return parallel.frozen_model_sharding(self.value, placement.mesh, units=placement.units)


class CarriedHook(loop.Hook, Held):
    """A hook of the loop whose carry is a held argument of the step (R_l, Lisa's anchor)."""

    @property
    def value(self) -> Any:
        return self.carry


@dataclasses.dataclass(frozen=True)
class Spec:
    """One training run, as `train` takes it (see the module's docstring)."""

    name: str  # the run's name: its progress bar, messages, W&B run and memory check
    objective: steps.Objective  # what a step optimises; it also counts a step's FLOPs
    batches: tuple[Callable[[int], Batch], ...]  # the step's batches: batch(step), after the held arguments
    steps: int  # step calls
    held: tuple[Held, ...] = ()  # the step's arguments before its batches; those that are hooks run in the loop
    meta: dict = dataclasses.field(default_factory=dict)  # what a resumed run must agree with, besides the seed


def train(cfg: RunConfig, model: Transformer, workdir: str | Path, spec: Spec) -> Trained:
    """Trains `model` as `spec` says, from the latest checkpoint in workdir/checkpoints (or from the start), with
    metrics in workdir/metrics.jsonl; returns the trained model and the FLOPs of its steps and hooks."""
    tx = make_optimizer(cfg.optim, max(spec.steps // cfg.optim.grad_accum, 1))
    place = Placement(cfg, model, tx, spec.batches[0](0))
    held_shardings = tuple(held.place(place) for held in spec.held)
    step = steps.make_step(tx, spec.objective, state_sharding=place.state_sharding,
                           arg_shardings=held_shardings + (place.batch_sharding,) * len(spec.batches),
                           activation_sharding=place.activation_sharding)

    def batches_at(i):
        return tuple(batch(i) for batch in spec.batches)

    def args_at(i):
        return (*(held.value for held in spec.held), *map(place.batch, batches_at(i)))

    place.check_memory(step, place.state, *args_at(0), what=f"{spec.name} step")
    hooks = [held for held in spec.held if isinstance(held, loop.Hook)]
    state = loop.run(spec.name, workdir, loop.LoopConfig(spec.steps, cfg.checkpoint, cfg.logging), place.state,
                     lambda state, i: step(state, *args_at(i)), hooks=hooks, meta={"seed": cfg.seed, **spec.meta},
                     run_config=cfg.to_dict())
    cost = sum(spec.objective.flops(model.cfg, model.opts.lora, *map(parallel.global_shape, batches_at(i)))
               for i in range(spec.steps))
    return Trained(state.model(), cost + sum(hook.calls(spec.steps) * hook.flops(model.cfg) for hook in hooks))


# ------------------------------------------------------------------------------------------------ the teacher

def local_rows(batch: Batch) -> Batch:
    """This process's rows of a batch every process holds whole (the refusal pool's), for a step whose batches
    are assembled from every process's rows (a multi-process run: each adds its own)."""
    rows = process_slice(len(batch["input_ids"]), jax.process_index(), jax.process_count())
    return {k: v[rows] for k, v in batch.items()}


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


class RefusalRefresh(CarriedHook):
    """The teacher's every-N hook: R_l recomputed by the current teacher over the fixed pool (its carry, which
    the step holds; zeros before the first recomputation), with the pool's and the check split's separation, the
    base model's check AUROC beside it, and how far R_l turned since the last recomputation as metrics."""

    def __init__(self, features_fn, pool: Sequence[Batch], check: Sequence[Batch], every: int, size: int,
                 base_check_auroc: float | None = None):
        self.features_fn, self.pool, self.check, self.every, self.size = features_fn, pool, check, every, size
        self.base_check_auroc = base_check_auroc

    def place(self, placement: Placement) -> None:
        self.carry = jax.device_put(jnp.zeros((self.size,), jnp.float32), parallel.replicated(placement.mesh))
        return None

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


def teacher(cfg: RunConfig, model_cfg: ModelConfig, align_at: Callable[[int], Batch], pool: Sequence[Batch],
            check: Sequence[Batch] = (), base_check_auroc: float | None = None) -> Spec:
    """The Ref-Teacher's run (teacher.steps): L_teacher on alignment batches (and pool batches with
    refusal.reg_pool), R_l recomputed over the pool's batches as it trains.

    check: labelled prompt batches never trained on (the pool's check split); at each recomputation of R_l their
    mean cosines and AUROC are logged (check_*), beside base_check_auroc (the base model's, check_auroc_base).
    """
    loss = TeacherLoss.of(cfg, model_cfg.num_layers)
    refresh = RefusalRefresh(make_feature_fn(loss.layer), pool, check, cfg.refusal.update_every, model_cfg.hidden_size,
                             base_check_auroc)
    # the alignment batch, and the pool batch of the regulariser (refusal.reg_pool)
    batches = (align_at, lambda i: local_rows(pool[i % len(pool)])) if cfg.refusal.reg_pool else (align_at,)
    return Spec("teacher", loss, batches, cfg.teacher.steps, held=(refresh,), meta={"layer": loss.layer})


def train_teacher(cfg: RunConfig, model: Transformer, workdir: str | Path, align_at: Callable[[int], Batch],
                  pool: Sequence[Batch], check: Sequence[Batch] = (),
                  base_check_auroc: float | None = None) -> Trained:
    """Trains the Ref-Teacher from `model` (the base) as `teacher` says; returns the teacher, the FLOPs of its
    steps and R_l recomputations, and its final R_l."""
    spec = teacher(cfg, model.cfg, align_at, pool, check, base_check_auroc)
    trained = train(cfg, model, workdir, spec)
    # The feature the filter uses is the final teacher's own: the hook's last call, after the last step.
    refresh, = spec.held
    r = refresh.carry if spec.steps > 0 else compute_refusal_feature(refresh.features_fn, FrozenModel.of(model), pool)
    return dataclasses.replace(trained, r=np.asarray(r))


# -------------------------------------------------------------------------------- finetuning and alignment

def student(cfg: RunConfig, teacher_model: Transformer | None, user_at: Callable[[int], Batch],
            align_at: Callable[[int], Batch] | None, *, steps: int, beta: float, alpha: float = 0.0,
            data_id: str = "", name: str = "student") -> Spec:
    """The student's run from the base model: `steps` step calls on kept user data, plus beta x KL(teacher ||
    student) on alignment data (distill.temperature) and alpha x the CE of the alignment responses (joint SFT on
    both datasets). teacher_model None (beta = 0): plain finetuning (the user batches alone), the no-defence
    baseline (align_at unused). data_id names the user data; a checkpoint of other data is not resumed (an error
    says so); name: the run's (its progress bar), the method's."""
    if teacher_model is None and beta != 0:
        raise ConfigError("distill.beta must be 0 when finetuning without a teacher")
    meta = {"user_data": data_id}
    if beta == 0 and alpha == 0:
        return Spec(name, SFTLoss(block=cfg.model.loss_block), (user_at,), steps, meta=meta)
    return Spec(name, StudentLoss.of(cfg, beta, alpha), (user_at, align_at), steps,
                held=(Frozen(teacher_model),), meta=meta)


def safety_alignment(cfg: RunConfig, align_at: Callable[[int], Batch], *, steps: int) -> Spec:
    """sa_ft's first stage: `steps` step calls of SFT on the alignment data (the CE of its responses)."""
    return Spec("safety_alignment", SFTLoss(block=cfg.model.loss_block), (align_at,), steps)


def alignment_defence(update, align_at: Callable[[int], Batch], harmful_at: Callable[[int], Batch] | None = None,
                      *, steps: int) -> Spec:
    """An alignment-stage defence's run (defences.Vaccine / Booster / RepNoise): `steps` step calls on alignment
    batches, and harmful-answer batches where the defence takes them."""
    name = type(update).__name__.lower()
    batches = (align_at,) if harmful_at is None else (align_at, harmful_at)
    return Spec(name, update, batches, steps, meta={"defence": name})


class LisaAnchor(CarriedHook):
    """Lisa's anchor: the weights at the last switch between alignment and user steps (at first, the starting
    weights), copied so that the donated state does not take them along; checkpointed as the hook's carry."""

    def __init__(self, lisa: Lisa):
        self.lisa = lisa

    def place(self, placement: Placement) -> Any:
        self.carry = jax.tree.map(jnp.copy, placement.state.params)
        return placement.state_sharding.params

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


def lisa(cfg: RunConfig, user_at: Callable[[int], Batch], align_at: Callable[[int], Batch], *, steps: int,
         data_id: str = "") -> Spec:
    """Lisa's finetuning (from the safety-aligned model): `steps` step calls, each cycle defences.lisa.align_steps
    on alignment batches then user_steps on user batches, with the proximal term toward the weights at the last
    switch (defences.Lisa)."""
    c = cfg.defences.lisa
    check_lisa_budget(cfg, steps)
    update = Lisa(rho=c.rho, prox_from=int(c.prox_warmup * steps), align_steps=c.align_steps,
                  user_steps=c.user_steps, block=cfg.model.loss_block)

    def batch_at(i):  # the user batch of an alignment step is skipped, as the authors' trainer discards it
        return align_at(i) if update.aligning(i) else user_at(i)

    return Spec("lisa", update, (batch_at,), steps, held=(LisaAnchor(update),), meta={"user_data": data_id})
