"""Losses of the teacher and the student, as pure functions.

Token convention, shared by `cross_entropy` and `distillation_kl` through `next_token_weights`:
`loss_mask[b, t] = 1` when TOKEN t of row b is a response token. Logits at position t predict
token t + 1, so the losses use `logits[:, :-1]`, targets `input_ids[:, 1:]` and per-position weights
`loss_mask[:, 1:] * example_weight[:, None]`. The last position never contributes.

Token losses are averaged with those weights (a token-weighted mean). A batch whose weights are all
zero (everything masked or filtered out) gives loss 0 and gradient 0, never NaN.

All softmax / log-softmax / KL / cosine arithmetic runs in at least float32, whatever the logits
dtype (bf16 included); float64 inputs stay float64 (for gradient checks).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from reft_jax.refusal.feature import cosine_scores
from reft_jax.runtime.numerics import at_least_f32 as _f32

Array = jax.Array


def next_token_weights(loss_mask: Array, example_weight: Array | None = None) -> Array:
    """Weights of the predictions `logits[:, :-1]`: [B, T] token mask -> [B, T - 1] float32.

    Position t is weighted by loss_mask[:, t + 1] (is its target a response token?) times the
    weight of the target's example (0 drops it, e.g. a filtered or padding example).

    Args:
        loss_mask: [B, T], 1 where the token is a response token.
        example_weight: optional [B] per row, or [B, T] per token (aligned with loss_mask, e.g. from
            `segment_token_weights` for packed rows).
    """
    mask = jnp.asarray(loss_mask)
    w = mask[:, 1:].astype(jnp.float32)
    if example_weight is not None:
        ew = jnp.asarray(example_weight).astype(jnp.float32)
        if ew.shape not in (mask.shape[:1], mask.shape):
            # e.g. packed per-segment weights [B, S]: map them with `segment_token_weights` first.
            raise ValueError(f"example_weight shape {ew.shape} is neither [B] nor [B, T] = {mask.shape}")
        w = w * (ew[:, None] if ew.ndim == 1 else ew[:, 1:])
    return w


def segment_token_weights(segment_weight: Array, segment_ids: Array) -> Array:
    """Per-token weights of packed rows: [B, S] per-segment weights, [B, T] ids -> [B, T].

    segment_ids are 1, 2, ... per example and 0 on padding (weight 0 there).
    """
    segment_ids = jnp.asarray(segment_ids)
    idx = jnp.clip(segment_ids - 1, 0, segment_weight.shape[1] - 1)
    w = jnp.take_along_axis(jnp.asarray(segment_weight).astype(jnp.float32), idx, axis=1)
    return jnp.where(segment_ids > 0, w, 0.0)


def _next_tokens(input_ids: Array) -> Array:
    """[B, T] -> the token each position predicts, [B, T]; the last position gets a placeholder 0."""
    return jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1).astype(jnp.int32)


def _all_positions(weights: Array) -> Array:
    """[B, T - 1] prediction weights -> [B, T], the last position (which predicts nothing) weighted 0."""
    return jnp.pad(weights, ((0, 0), (0, 1)))


def weighted_mean(values: Array, weights: Array) -> tuple[Array, Array]:
    """(sum(w * v) / sum(w), sum(w)); the mean is 0 when sum(w) == 0.

    Values where w == 0 are zeroed by `where`, not multiplied, so an inf/NaN there cannot leak
    into the mean (0 * inf = NaN).
    """
    weights = weights.astype(values.dtype)
    total = jnp.sum(weights)
    num = jnp.sum(jnp.where(weights != 0, weights * values, 0.0))
    return num / jnp.where(total > 0, total, 1.0), total


def cross_entropy(
    logits: Array,
    input_ids: Array,
    loss_mask: Array,
    example_weight: Array | None = None,
) -> tuple[Array, Array]:
    """Response-only next-token cross-entropy.

    Args:
        logits: [B, T, V], any float dtype.
        input_ids: [B, T] int. Ids at positions that carry no weight may be anything (e.g. -100 or
            pad): targets are clipped into [0, V - 1] first.
        loss_mask: [B, T], 1 where the token is a response token.
        example_weight: optional [B] row weights or [B, T] token weights (see `next_token_weights`).

    Returns:
        (loss, num_tokens): the token-weighted mean negative log-likelihood and the sum of the
        token weights (the number of counted tokens for 0/1 weights), both float32 scalars.
        `loss * num_tokens` summed over micro-batches and divided by their total num_tokens gives
        the mean over the union.
    """
    targets = _next_tokens(jnp.asarray(input_ids))
    return weighted_mean(token_nll(logits, targets), _all_positions(next_token_weights(loss_mask, example_weight)))


def token_nll(logits: Array, targets: Array) -> Array:
    """-log softmax(logits)[target] per position: [..., V], [...] int -> [...] float32 (at least).

    The target logit is picked by a fused compare-and-sum, whose gradient is a select (a gather's would be a
    scatter). Targets are clipped into [0, V - 1], so -100 / pad ids at unweighted positions are harmless."""
    logits = _f32(logits)
    targets = jnp.clip(targets, 0, logits.shape[-1] - 1)
    hit = jnp.arange(logits.shape[-1]) == targets[..., None]
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)


def token_kl(student_logits: Array, teacher_logits: Array, temperature: float = 1.0) -> Array:
    """KL(softmax(t / T) || softmax(s / T)) per position: [..., V] twice -> [...] float32 (at least); no T^2.

    KL = sum_v p_t (t - s) - lse(t) + lse(s), since sum_v p_t = 1: no [..., V] log-probabilities are kept. The
    teacher is a constant (stop_gradient)."""
    s = _f32(student_logits) / temperature
    t = _f32(jax.lax.stop_gradient(teacher_logits)) / temperature
    lse_t = jax.nn.logsumexp(t, axis=-1, keepdims=True)
    p_t = jnp.exp(t - lse_t)
    # Where p_t == 0 the term is 0 by definition; `where` avoids 0 * (-inf) = NaN.
    cross = jnp.sum(jnp.where(p_t > 0, p_t * (t - s), 0.0), axis=-1)
    return cross - lse_t[..., 0] + jax.nn.logsumexp(s, axis=-1)


def refusal_regularizer(
    features: Array,
    r: Array,
    is_harmful: Array,
    weight: Array | None = None,
    kind: str = "squared",
    eps: float = 1e-6,
) -> Array:
    """Pulls cos(f_l(x), R_l) to +1 for harmful prompts and to -1 for harmless ones.

    squared: mean_i (cos_i - y_i)^2 (the paper's L_reg); linear: mean_i (1 - y_i cos_i).
    Both are 0 exactly at the targets. R_l is a fixed target (`stop_gradient`): the gradient flows
    into the features only.

    Args:
        features: [B, D] features at the last prompt token (or [B, S, D] per packed segment; any
            leading dims), any float dtype.
        r: [D] refusal feature.
        is_harmful: [B] (the leading dims of features) bool/int: 1 harmful (y = +1), 0 harmless
            (y = -1); other values (the batches' -1 for unknown / padding) get weight 0.
        weight: optional, shaped like is_harmful: row weights, 0 = padding row.
        kind: "squared" or "linear".
        eps: cosine norm regulariser (see `refusal.cosine_scores`).

    Returns:
        scalar float32, the weighted mean over rows (0 when all weights are 0).
    """
    cos = cosine_scores(features, jax.lax.stop_gradient(r), eps)
    label = jnp.asarray(is_harmful)
    y = jnp.where(label == 1, 1.0, -1.0).astype(cos.dtype)
    if kind == "squared":
        per_row = jnp.square(cos - y)
    elif kind == "linear":
        per_row = 1.0 - y * cos
    else:
        raise ValueError(f"refusal regularizer kind must be 'squared' or 'linear', got {kind!r}")
    w = jnp.ones_like(cos) if weight is None else jnp.asarray(weight).astype(cos.dtype)
    w = jnp.where((label == 0) | (label == 1), w, 0.0)
    return weighted_mean(per_row, w)[0]


def distillation_kl(
    student_logits: Array,
    teacher_logits: Array,
    loss_mask: Array,
    temperature: float = 1.0,
    example_weight: Array | None = None,
) -> tuple[Array, Array]:
    """T^2 * KL(p_teacher^T || p_student^T) on the response tokens, teacher frozen.

    p^T = softmax(logits / T). Same positions and weights as `cross_entropy` (predictions
    `logits[:, :-1]` whose target is a response token). The T^2 factor keeps gradient magnitudes
    comparable across temperatures (Hinton et al.).

    Args:
        student_logits, teacher_logits: [B, T, V], any float dtype (may differ).
        loss_mask: [B, T], 1 where the token is a response token.
        temperature: T > 0, a Python float.
        example_weight: optional [B] row weights or [B, T] token weights (see `next_token_weights`).

    Returns:
        (loss, num_tokens) as in `cross_entropy`.
    """
    kl = token_kl(student_logits, teacher_logits, temperature)
    loss, num_tokens = weighted_mean(kl, _all_positions(next_token_weights(loss_mask, example_weight)))
    return loss * temperature**2, num_tokens


# Blockwise vocabulary losses. At 4 x 2048 tokens and a 128k vocabulary one float32 [B, T, V] logits array is
# 4.2 GB, and the student step would hold three (user, alignment, teacher) plus their gradients. These take the
# final hidden states [B, T, D] instead and project them to the vocabulary `block` positions at a time inside a
# rematerialised scan: the forward keeps one block's logits, the backward recomputes them block by block (one
# more unembedding matmul per token, the price of the memory).

def blockwise_token_mean(per_token: Callable[..., Array], inputs: Sequence[Array], weights: Array,
                         block: int) -> tuple[Array, Array]:
    """weighted_mean(per_token(*inputs), weights), evaluated `block` sequence positions at a time.

    per_token maps blocks [B, c, ...] of each input to values [B, c]; weights [B, T]. The batch axis stays whole
    (so its sharding is kept) and T is padded to a multiple of `block` with weight 0 (a block longer than T is
    one block of T)."""
    b, t = weights.shape
    block = min(block, t)
    n = -(-t // block)

    def blocks(x):  # [B, T, ...] -> [n, B, block, ...]
        x = jnp.pad(x, [(0, 0), (0, n * block - t)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(b, n, block, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def body(total, xs):
        *block_inputs, w = xs
        values = per_token(*block_inputs)
        return total + jnp.sum(jnp.where(w != 0, w * values, 0.0)), None

    inputs = tuple(map(blocks, inputs))
    dtype = jax.eval_shape(per_token, *[x[0] for x in inputs]).dtype  # float32, or float64 for gradient checks
    weights = weights.astype(dtype)
    num, _ = jax.lax.scan(body, jnp.zeros((), dtype), (*inputs, blocks(weights)))
    total = jnp.sum(weights)
    return num / jnp.where(total > 0, total, 1.0), total


def blockwise_cross_entropy(hidden: Array, unembed: Callable[[Array], Array], input_ids: Array, loss_mask: Array,
                            example_weight: Array | None = None, *, block: int) -> tuple[Array, Array]:
    """`cross_entropy(unembed(hidden), ...)` without the [B, T, V] logits: hidden [B, T, D] final hidden states,
    unembed [.., D] -> [.., V] (the model's `unembed`)."""
    weights = _all_positions(next_token_weights(loss_mask, example_weight))
    return blockwise_token_mean(lambda h, y: token_nll(unembed(h), y), (hidden, _next_tokens(jnp.asarray(input_ids))),
                                weights, block)


def blockwise_distillation_kl(student_hidden: Array, student_unembed: Callable[[Array], Array], teacher_hidden: Array,
                              teacher_unembed: Callable[[Array], Array], loss_mask: Array, temperature: float = 1.0,
                              example_weight: Array | None = None, *, block: int) -> tuple[Array, Array]:
    """`distillation_kl` of the two models' logits without either's [B, T, V] array: each block of positions
    is projected through both unembeddings; the teacher's side is a constant."""
    weights = _all_positions(next_token_weights(loss_mask, example_weight))
    teacher_hidden = jax.lax.stop_gradient(teacher_hidden)

    def per_token(hs, ht):
        return token_kl(student_unembed(hs), teacher_unembed(ht), temperature)

    loss, num_tokens = blockwise_token_mean(per_token, (student_hidden, teacher_hidden), weights, block)
    return loss * temperature**2, num_tokens


MMD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def mmd_rbf(x: Array, y: Array, scales: Sequence[float] = MMD_SCALES) -> Array:
    """Squared maximum mean discrepancy between samples x [N, F] and y [M, F], float32 (at least).

    The kernel is a sum of Gaussians exp(-||a - b||^2 / (s * base)) over `scales`, base being the mean squared
    distance between distinct samples of x and y pooled (held constant: no gradient flows through the bandwidth).
    The biased estimator, diagonals included: mean K(x, x) + mean K(y, y) - 2 mean K(x, y) (RepNoise's MMD)."""
    z = jnp.concatenate([_f32(x), _f32(y)])
    sq = jnp.sum(z * z, axis=-1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    n = z.shape[0]
    base = jax.lax.stop_gradient(jnp.maximum(jnp.sum(d2) / (n * n - n), 1e-12))  # > 0: identical samples
    k = sum(jnp.exp(-d2 / (s * base)) for s in scales)
    nx = x.shape[0]
    return jnp.mean(k[:nx, :nx]) + jnp.mean(k[nx:, nx:]) - 2.0 * jnp.mean(k[:nx, nx:])
