"""Pure train steps of the teacher and the student: their losses, and the jitted, donated update.

The state they update (reft_jax.runtime.state.TrainState) is a pure function of arrays that `jax.jit` compiles once.
Each loss also counts its step's model FLOPs (`flops`, from the (rows, tokens) shapes of the batches the step
takes): the stages' cost.json and the benchmark's MFU ask it, so a change to a step changes its cost with it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from reft_jax import refusal
from reft_jax.data import Batch
from reft_jax.models import LoraConfig, ModelConfig, Transformer, flops
from reft_jax.models.activations import sharded_activations
from reft_jax.runtime.state import FrozenModel, TrainState
from reft_jax.train import losses

Shape = tuple[int, int]  # (rows, tokens) of a batch, every process's rows counted


@dataclasses.dataclass(frozen=True)
class TeacherLoss:
    """L_teacher = CE(alignment responses) + lam * L_reg(features at `layer`, R_l).

    With a `pool` batch (prompts of the refusal pool R_l is computed over), L_reg is the mean over the rows of
    both batches (why: `refusal.reg_pool` in reft_jax.config.schema)."""

    layer: int
    lam: float = 1.0
    kind: str = "squared"
    block: int = 0  # > 0: the CE is blockwise over this many positions (model.loss_block)

    def __call__(self, model: Transformer, batch: Batch, r: jax.Array, pool: Batch | None = None):
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


def _cos_means(cos, batch):
    """Mean cosine to R_l of the harmful and the harmless prompts of a batch (training diagnostics)."""
    w = batch["example_weight"].astype(jnp.float32)
    harmful = w * (batch["harmful"] == 1)
    harmless = w * (batch["harmful"] == 0)
    return dict(cos_harmful=losses.weighted_mean(cos, harmful)[0], cos_harmless=losses.weighted_mean(cos, harmless)[0])


@dataclasses.dataclass(frozen=True)
class StudentLoss:
    """L_student = CE(kept user data) + beta * T^2 * KL(teacher^T || student^T) on alignment responses
    [+ alpha * CE(alignment responses): the joint-SFT baselines, no teacher]."""

    beta: float = 1.0
    temperature: float = 1.0
    alpha: float = 0.0
    block: int = 0  # > 0: CE and KL are blockwise over this many positions (model.loss_block)
    kl_positions: str = "response"  # distill.positions: "all" also matches the teacher on the prompts' tokens

    def __call__(self, model: Transformer, teacher: Transformer | None, user: Batch, align: Batch):
        out = forward(model, user, self.block)
        ce, tokens = response_ce(model, out, user, self.block)
        loss, metrics = ce, dict(ce=ce, tokens=tokens)
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


def apply_gradients(state: TrainState, tx: optax.GradientTransformation, grads, loss, metrics):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_step(step, in_shardings, out_shardings, activation_sharding=None):
    """jax.jit with the state (argument 0) donated; explicit shardings only when any is given (a None inside
    them means replicated for an input and XLA's choice for an output, as in jax.jit). activation_sharding
    (parallel.activation_sharding): the model's activations are constrained to it while the step is traced."""
    if activation_sharding is not None:
        plain = step

        def step(*args):
            with sharded_activations(activation_sharding):
                return plain(*args)

    if all(s is None for s in in_shardings):
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, in_shardings=in_shardings, out_shardings=out_shardings)


def make_teacher_step(tx: optax.GradientTransformation, loss_fn: TeacherLoss, *, state_sharding=None,
                      batch_sharding=None, activation_sharding=None, with_pool: bool = False):
    """step(state, batch, r) -> (state, metrics), or step(state, batch, r, pool) with `with_pool` (a batch of
    refusal-pool prompts that L_reg covers too, see TeacherLoss); jitted once per batch shape, the state donated.

    state_sharding / batch_sharding (from reft_jax.runtime.parallel): explicit in/out shardings on a mesh (the pool batch
    is placed like the batch); r and the metrics are replicated. Without them jax.jit places everything itself.
    activation_sharding (parallel.activation_sharding): constraints on the model's activations on that mesh.
    """

    def step(state: TrainState, batch: Batch, r: jax.Array, pool: Batch | None = None):
        def loss(params):
            return loss_fn(nnx.merge(state.graphdef, params, state.frozen), batch, r, pool)

        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        return apply_gradients(state, tx, grads, value, metrics)

    in_shardings = (state_sharding, batch_sharding, None) + ((batch_sharding,) if with_pool else ())
    return jit_step(step, in_shardings, (state_sharding, None), activation_sharding)


def make_student_step(tx: optax.GradientTransformation, loss_fn: StudentLoss, *, state_sharding=None,
                      batch_sharding=None, teacher_sharding=None, activation_sharding=None):
    """step(state, teacher, user_batch, align_batch) -> (state, metrics); the teacher is read, not donated.

    state_sharding / batch_sharding (both batches) / teacher_sharding / activation_sharding: placement on a
    mesh, as in make_teacher_step.
    """

    def step(state: TrainState, teacher: FrozenModel | None, user: Batch, align: Batch):
        teacher_model = teacher.model() if teacher is not None else None  # None: no distillation (beta = 0)

        def loss(params):
            return loss_fn(nnx.merge(state.graphdef, params, state.frozen), teacher_model, user, align)

        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        return apply_gradients(state, tx, grads, value, metrics)

    return jit_step(step, (state_sharding, teacher_sharding, batch_sharding, batch_sharding),
                     (state_sharding, None), activation_sharding)
