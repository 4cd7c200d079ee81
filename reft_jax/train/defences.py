"""The harmful-finetuning defences of the literature as pure updates: Vaccine, Booster, RepNoise and Lisa.

Each is an objective of reft_jax.train.steps (the teacher's and the student's protocol): a frozen dataclass whose
`grads(model_of, params, step, *args) -> (loss, metrics, grads)` computes one step's gradient (model_of(params) is
the model at those parameters; step is the state's step counter) and whose `flops(cfg, lora, *shapes)` counts one
call's model FLOPs from the (rows, tokens) shapes of its batches; `steps.make_step` makes the jitted, donated step.
Where a defence needs more than one gradient per step (Vaccine, Booster) it assembles them itself, as the authors'
code does; the algorithms follow the papers and their public code (the differences are said where they are).
Their settings have no defaults here: the config declares them (`defences.*`, `model.loss_block`), and
`stages.defence_alignment.DEFENCES` and `runs.lisa` build them from it.

    Vaccine  (Huang et al., 2024)  alignment; the gradient under the worst attention-output perturbation of norm rho
    Booster  (Huang et al., 2024)  alignment + lam (h(w) - h(w - alpha g_h / |g_h|)), h the harmful-answer loss
    RepNoise (Rosati et al., 2024) alignment CE - alpha log(1 + harmful CE) + beta MMD(harmful activations, noise)
    Lisa     (Huang et al., 2024)  finetuning alternating alignment and user steps, + rho/2 |w - w_switch|^2
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from reft_jax.data import Batch
from reft_jax.models import LoraConfig, ModelConfig, flops
from reft_jax.train import losses
from reft_jax.train.steps import SFTLoss, Shape, forward, response_ce

_EPS = 1e-7  # the authors' guard in the perturbation normalisations


def _sq_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class Vaccine:
    """Perturbation-aware alignment. The gradient g of the alignment CE with respect to every layer's attention
    output (the authors hook the attention modules) gives the perturbation eps = rho g / ||g||, ||g|| one norm
    over all layers; the step's gradient is that of the CE with eps added to those outputs (a constant: two
    forward/backward passes, the first one's weight gradients unused)."""

    rho: float  # defences.vaccine.rho
    block: int  # model.loss_block (0: the CE from whole logits)

    def perturbation(self, model_of, params, batch: Batch):
        """(eps [L, B, T, D] float32, the unperturbed CE)."""
        model = model_of(params)
        (b, t), cfg = batch["input_ids"].shape, model.cfg
        zeros = jnp.zeros((cfg.num_layers, b, t, cfg.hidden_size), model.opts.dtype)

        def ce(offsets):
            return response_ce(model, forward(model, batch, self.block, attention_offsets=offsets), batch,
                               self.block)[0]

        clean, g = jax.value_and_grad(ce)(zeros)
        g = g.astype(jnp.float32)
        return jax.lax.stop_gradient(self.rho * g / (jnp.sqrt(jnp.sum(g * g)) + _EPS)), clean

    def grads(self, model_of, params, step, align: Batch):
        del step
        eps, clean = self.perturbation(model_of, params, align)

        def perturbed_ce(params):
            model = model_of(params)
            return response_ce(model, forward(model, align, self.block, attention_offsets=eps), align, self.block)

        (ce, tokens), grads = jax.value_and_grad(perturbed_ce, has_aux=True)(params)
        return ce, dict(ce=ce, ce_clean=clean, tokens=tokens), grads


    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, align: Shape) -> int:
        """The pass that finds the perturbation (no weight gradients) and the perturbed train pass."""
        return flops.input_gradient_flops(cfg, *align, lora=lora) + flops.train_flops(cfg, *align, lora)


@dataclasses.dataclass(frozen=True)
class Booster:
    """Alignment CE f plus lam x (h(w) - h(w')), h the CE of harmful answers and w' = w - alpha g_h / ||g_h||
    one normalised harmful step away: the model is trained so that a harmful step lowers the harmful loss
    little. First order, as the authors': the gradient is g_f + lam (g_h(w) - g_h(w')), three forward/backward
    passes (h at w, h at w' on the same harmful batch, f)."""

    lam: float  # defences.booster.lam
    alpha: float  # defences.booster.alpha
    block: int  # model.loss_block (0: the CE from whole logits)

    def grads(self, model_of, params, step, align: Batch, harmful: Batch):
        del step
        grad = jax.value_and_grad(lambda p, batch: SFTLoss(self.block)(model_of(p), batch), has_aux=True)
        (h, _), g_h = grad(params, harmful)
        norm = jnp.sqrt(_sq_norm(g_h))
        scale = self.alpha / (norm + _EPS)
        stepped = jax.tree.map(lambda p, g: p - (scale * g).astype(p.dtype), params, g_h)
        (h_after, _), g_after = grad(stepped, harmful)
        (f, sft), g_f = grad(params, align)
        grads = jax.tree.map(lambda a, now, after: a + self.lam * (now - after), g_f, g_h, g_after)
        loss = f + self.lam * (h - h_after)
        metrics = dict(ce=f, harmful_ce=h, harmful_ce_after=h_after, harmful_grad_norm=norm, tokens=sft["tokens"])
        return loss, metrics, grads

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, align: Shape, harmful: Shape) -> int:
        """The harmful loss's train passes at w and at w', and the alignment's."""
        return flops.train_flops(cfg, *align, lora) + 2 * flops.train_flops(cfg, *harmful, lora)


@dataclasses.dataclass(frozen=True)
class RepNoise:
    """Representation noising: CE(alignment) - alpha log(1 + H) + beta MMD, on an alignment batch and a batch of
    harmful answers. H is the mean over the hidden states (embedding output and every block's output, each
    through the final norm and the unembedding) of the harmful answers' CE: gradient ascent at every depth.
    MMD is the mean over layers of mmd_rbf between each block's MLP output on the harmful answer tokens
    (one flat vector per example) and Gaussian noise masked alike, fresh noise every step (from `seed`).
    The authors pair each harmful answer with a refusal of the same prompt and mask where the two differ;
    here the two batches are drawn apart (as Booster's port of RepNoise does) and the mask is the harmful
    batch's answer tokens."""

    alpha: float  # defences.repnoise.alpha
    beta: float  # defences.repnoise.beta
    block: int  # model.loss_block (0: the CE from whole logits)
    seed: int  # the run's seed (the noise of step s is drawn from it and s)

    def noise(self, step, shape) -> jax.Array:
        """The step's Gaussian noise [L, B, T, D] (float32)."""
        return jax.random.normal(jax.random.fold_in(jax.random.key(self.seed), step), shape, jnp.float32)

    def loss(self, model, align: Batch, harmful: Batch, noise: jax.Array):
        ce, sft = SFTLoss(self.block)(model, align)
        out = model(harmful["input_ids"], harmful["attention_mask"], output_hidden_states=True, output_mlp=True,
                    logits=False)
        states = [model.norm(h) for h in out.hidden_states[:-1]] + [out.hidden_states[-1]]  # the last is normed
        args = (harmful["input_ids"], harmful["loss_mask"], harmful["example_weight"])
        if self.block:
            harmful_ce = [losses.blockwise_cross_entropy(h, model.unembed, *args, block=self.block)[0] for h in states]
        else:
            harmful_ce = [losses.cross_entropy(model.unembed(h), *args)[0] for h in states]
        ascent = jnp.mean(jnp.stack(harmful_ce))
        mask = (harmful["loss_mask"] * (harmful["example_weight"][:, None] > 0)).astype(jnp.float32)[..., None]
        b = mask.shape[0]
        mmd = jnp.mean(jnp.stack([losses.mmd_rbf((act.astype(jnp.float32) * mask).reshape(b, -1),
                                                 (n * mask).reshape(b, -1))
                                  for act, n in zip(out.mlp_outputs, noise)]))
        loss = ce - self.alpha * jnp.log1p(ascent) + self.beta * mmd
        return loss, dict(ce=ce, harmful_ce=ascent, mmd=mmd, tokens=sft["tokens"])

    def grads(self, model_of, params, step, align: Batch, harmful: Batch):
        model = model_of(params)
        (b, t), cfg = harmful["input_ids"].shape, model.cfg
        noise = self.noise(step, (cfg.num_layers, b, t, cfg.hidden_size))
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: self.loss(model_of(p), align, harmful, noise), has_aux=True)(params)
        return loss, metrics, grads

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, align: Shape, harmful: Shape) -> int:
        """Train passes on both batches, and the harmful batch's vocabulary projection at every depth."""
        return (flops.train_flops(cfg, *align, lora) + flops.train_flops(cfg, *harmful, lora)
                + flops.logit_lens_flops(cfg, *harmful, lora=lora))


@dataclasses.dataclass(frozen=True)
class Lisa:
    """Lazy safety alignment, one step: the CE of the step's batch plus rho/2 ||w - anchor||^2, anchor the weights at
    the last switch between alignment and user steps (as the authors' code does in both states); the proximal term
    is off before step `prox_from`. Each cycle is `align_steps` steps on alignment data, then `user_steps` on user
    data (`aligning`); a step's metrics say which it was (alignment_step)."""

    rho: float  # defences.lisa.rho
    prox_from: int  # the first step with the proximal term (defences.lisa.prox_warmup x the steps)
    align_steps: int  # defences.lisa.align_steps
    user_steps: int  # defences.lisa.user_steps
    block: int  # model.loss_block (0: the CE from whole logits)

    def aligning(self, step):
        """Whether step `step` (an int, or the traced step counter) is an alignment step."""
        return step % (self.align_steps + self.user_steps) < self.align_steps

    def grads(self, model_of, params, step, anchor, batch: Batch):
        def loss(params):
            ce, metrics = SFTLoss(self.block)(model_of(params), batch)
            prox = 0.5 * _sq_norm(jax.tree.map(lambda p, a: p - a, params, anchor))
            weight = jnp.where(step >= self.prox_from, self.rho, 0.0)
            return ce + weight * prox, dict(metrics, proximal=prox)

        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, dict(metrics, alignment_step=jnp.asarray(self.aligning(step), jnp.float32)), grads

    def flops(self, cfg: ModelConfig, lora: LoraConfig | None, batch: Shape) -> int:
        """A train pass on the step's batch (the proximal term is elementwise)."""
        return flops.train_flops(cfg, *batch, lora)
