"""The step protocol: what a train step optimises (an objective), and `make_step`, the one jitted, donated step
of every run (teacher, student, safety alignment, the defences).

An objective is a frozen dataclass with
- `grads(model_of, params, step, *args) -> (loss, metrics, grads)`: one step's gradient, model_of(params) the model
  at those parameters, `step` the state's step counter, `args` the step's arguments after the state (what the
  run holds, such as R_l or the frozen teacher, then the step's batches);
- `flops(cfg, lora, *shapes)`: one step's model FLOPs from the (rows, tokens) shapes of its batches (the stages'
  cost.json and the benchmark's MFU ask it, so a change to a step changes its cost with it).
A loss (`Loss`: the teacher's, the student's, SFT's) gets `grads` from its value; a defence whose gradient is not
one loss's (reft_jax.train.defences) writes its own. The state (reft_jax.runtime.state.TrainState) is a pure
function of arrays that `jax.jit` compiles once per batch shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from reft_jax import refusal
from reft_jax.config.schema import RunConfig
from reft_jax.data import Batch
from reft_jax.models import LoraConfig, ModelConfig, Transformer, flops
from reft_jax.models.activations import sharded_activations
from reft_jax.runtime.state import FrozenModel, TrainState
from reft_jax.train import losses

Shape = tuple[int, int]  # (rows, tokens) of a batch, every process's rows counted


class Objective(Protocol):
    """What a step optimises (see the module's docstring)."""

    def grads(self, model_of: Callable, params, step: jax.Array, *args) -> tuple[jax.Array, dict, Any]: ...

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, *shapes: Shape) -> int: ...


class Loss:
    """An objective whose gradient is its value's: a subclass defines `__call__(model, *args) -> (loss, metrics)`.
    A frozen model among the arguments (the student's teacher) reaches it as a model, built outside the
    differentiated function."""

    def grads(self, model_of: Callable, params, step: jax.Array, *args):
        del step
        args = tuple(a.model() if isinstance(a, FrozenModel) else a for a in args)
        (value, metrics), grads = jax.value_and_grad(lambda p: self(model_of(p), *args), has_aux=True)(params)
        return value, metrics, grads


@dataclasses.dataclass(frozen=True)
class TeacherLoss(Loss):
    """L_teacher = CE(alignment responses) + lam * L_reg(features at `layer`, R_l).

    With a `pool` batch (prompts of the refusal pool R_l is computed over), L_reg is the mean over the rows of
    both batches (why: `refusal.reg_pool` in reft_jax.config.schema). Its settings have no defaults here: the
    config declares them (`of`)."""

    layer: int  # the hidden state L_reg reads (refusal.layer, resolved against the depth)
    lam: float  # refusal.lam
    kind: str  # refusal.kind
    block: int  # model.loss_block; > 0: the CE is blockwise over this many positions, 0: from whole logits

    @classmethod
    def of(cls, cfg: RunConfig, num_layers: int) -> "TeacherLoss":
        """The teacher's loss as the run's config sets it, for a model of `num_layers` blocks."""
        return cls(layer=refusal.feature_layer(cfg.refusal.layer, num_layers), lam=cfg.refusal.lam,
                   kind=cfg.refusal.kind, block=cfg.model.loss_block)

    def __call__(self, model: Transformer, r: jax.Array, batch: Batch, pool: Batch | None = None):
        out = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=[self.layer, -1],
                    logits=not self.block)
        ce, tokens = response_ce(model, out, batch, self.block)
        features = refusal.gather_last_prompt(out.hidden_states[self.layer], batch["prompt_end"])
        cos = refusal.cosine_scores(features, r)
        metrics = _cos_means(cos, batch)
        labels, weights = batch["harmful"], batch["example_weight"]
        if pool is not None:
            # Prompts only, through the blocks up to `layer` (no vocabulary projection).
            hidden = model.hidden_states_at(pool["input_ids"], pool["attention_mask"], [self.layer])[0]
            pool_features = refusal.gather_last_prompt(hidden, pool["prompt_end"])
            features = jnp.concatenate([features, pool_features.astype(features.dtype)])
            labels = jnp.concatenate([labels, pool["harmful"].astype(labels.dtype)])
            weights = jnp.concatenate([weights, pool["example_weight"].astype(weights.dtype)])
        reg = losses.refusal_regularizer(features, r, labels, weights, self.kind)
        return ce + self.lam * reg, dict(ce=ce, reg=reg, tokens=tokens, **metrics)

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, batch: Shape, pool: Shape | None = None) -> int:
        """One step: the trained model on the batch (CE and L_reg share its forward) and, with a pool batch, its
        prompts through the blocks up to `layer`, that share of a train pass."""
        total = flops.train_flops(cfg, *batch, lora)
        return total + (self.layer * flops.train_flops(cfg, *pool, lora) // cfg.num_layers if pool else 0)


def response_ce(model: Transformer, out, batch: Batch, block: int):
    """Response CE of a forward pass: from its logits, or blockwise from its last hidden state (block > 0)."""
    args = (batch["input_ids"], batch["loss_mask"], batch["example_weight"])
    if block:
        return losses.blockwise_cross_entropy(out.hidden_states[-1], model.unembed, *args, block=block)
    return losses.cross_entropy(out.logits, *args)


@dataclasses.dataclass(frozen=True)
class SFTLoss(Loss):
    """Supervised finetuning: the CE of one batch's responses (the safety alignment; plain finetuning)."""

    block: int  # model.loss_block; > 0: the CE is blockwise over this many positions, 0: from whole logits

    def __call__(self, model: Transformer, batch: Batch):
        ce, tokens = response_ce(model, forward(model, batch, self.block), batch, self.block)
        return ce, dict(ce=ce, tokens=tokens)

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, batch: Shape) -> int:
        """A train pass on the batch."""
        return flops.train_flops(cfg, *batch, lora)


def _cos_means(cos, batch):
    """Mean cosine to R_l of the harmful and the harmless prompts of a batch (training diagnostics)."""
    w = batch["example_weight"].astype(jnp.float32)
    harmful = w * (batch["harmful"] == 1)
    harmless = w * (batch["harmful"] == 0)
    return dict(cos_harmful=losses.weighted_mean(cos, harmful)[0], cos_harmless=losses.weighted_mean(cos, harmless)[0])


@dataclasses.dataclass(frozen=True)
class StudentLoss(Loss):
    """L_student = CE(kept user data) + beta * T^2 * KL(teacher^T || student^T) on alignment responses
    [+ alpha * CE(alignment responses): the joint-SFT baselines, no teacher]. Its settings have no defaults here:
    the config declares them (`of`)."""

    beta: float  # distill.beta, or 0 (no distillation)
    temperature: float  # distill.temperature
    alpha: float  # baselines.joint_weight for the joint baselines, else 0
    block: int  # model.loss_block; > 0: CE and KL are blockwise over this many positions, 0: from whole logits
    kl_positions: str  # distill.positions: "all" also matches the teacher on the prompts' tokens

    @classmethod
    def of(cls, cfg: RunConfig, beta: float, alpha: float = 0.0) -> "StudentLoss":
        """The student's loss with these weights and the rest as the run's config sets it."""
        return cls(beta=beta, temperature=cfg.distill.temperature, alpha=alpha, block=cfg.model.loss_block,
                   kl_positions=cfg.distill.positions)

    def __call__(self, model: Transformer, teacher: Transformer | None, user: Batch, align: Batch):
        loss, metrics = SFTLoss(self.block)(model, user)
        if self.beta == 0 and self.alpha == 0:  # plain finetuning: skip the alignment forwards
            return loss, metrics
        student = forward(model, align, self.block)
        if self.alpha:
            align_ce, align_tokens = response_ce(model, student, align, self.block)
            loss = loss + self.alpha * align_ce
            metrics.update(align_ce=align_ce, tokens=metrics["tokens"] + align_tokens)
        if self.beta:
            kl, kl_tokens = self._distillation(model, student, teacher, align)
            loss = loss + self.beta * kl
            metrics.update(kl=kl, tokens=metrics["tokens"] + kl_tokens)
        return loss, metrics

    def _distillation(self, model, student, teacher, align):
        teacher_out = jax.lax.stop_gradient(forward(teacher, align, self.block))
        positions = align["loss_mask"] if self.kl_positions == "response" else align["attention_mask"]
        args = (positions, self.temperature, align["example_weight"])
        if self.block:
            return losses.blockwise_distillation_kl(student.hidden_states[-1], model.unembed,
                                                    teacher_out.hidden_states[-1], teacher.unembed, *args,
                                                    block=self.block)
        return losses.distillation_kl(student.logits, teacher_out.logits, *args)

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, user: Shape, align: Shape) -> int:
        """One step: the trained model on the user batch, on the alignment batch unless beta = alpha = 0, and the
        frozen teacher's forward on it when distilling (the teacher has no adapters: they are merged)."""
        total = flops.train_flops(cfg, *user, lora)
        if self.beta or self.alpha:
            total += flops.train_flops(cfg, *align, lora)
        return total + (flops.forward_flops(cfg, *align) if self.beta else 0)


def forward(model: Transformer, batch: Batch, block: int, **kw):
    """The logits, or with block > 0 only the last hidden state (the blockwise losses project it); `kw` go to
    the model (e.g. Vaccine's attention_offsets)."""
    if block:
        return model(batch["input_ids"], batch["attention_mask"], output_hidden_states=[-1], logits=False, **kw)
    return model(batch["input_ids"], batch["attention_mask"], **kw)


def make_step(tx: optax.GradientTransformation, objective: Objective, *, state_sharding=None, arg_shardings=(),
              activation_sharding=None):
    """step(state, *args) -> (state, metrics): one update of `objective` (its gradient through `tx`), jitted once per
    shape of the arguments, the state donated (the arguments are only read).

    state_sharding / arg_shardings (from reft_jax.runtime.parallel; one per argument, a None in them replicated):
    explicit in/out shardings on a mesh; the metrics are replicated. Without any jax.jit places everything itself.
    activation_sharding (parallel.activation_sharding): the model's activations are constrained to it while the
    step is traced.
    """

    def step(state: TrainState, *args):
        def model_of(params):
            return nnx.merge(state.graphdef, params, state.frozen)

        loss, metrics, grads = objective.grads(model_of, state.params, state.step, *args)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if activation_sharding is not None:
        plain = step

        def step(*args):
            with sharded_activations(activation_sharding):
                return plain(*args)

    in_shardings = (state_sharding, *arg_shardings)
    if all(s is None for s in in_shardings):
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, in_shardings=in_shardings, out_shardings=(state_sharding, None))
