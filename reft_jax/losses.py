"""Losses of the teacher and the student (DESIGN.md section 1), as pure functions.

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

import jax
import jax.numpy as jnp

from reft_jax.refusal import cosine_scores

Array = jax.Array


def _f32(x: Array) -> Array:
    """Upcasts to at least float32 (bf16 -> f32; f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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
    logits = _f32(logits)
    # Every position, the last one with weight 0, instead of logits[:, :-1]: slicing would copy [B, T, V].
    targets = _next_tokens(jnp.clip(jnp.asarray(input_ids), 0, logits.shape[-1] - 1))
    # log p(target) = logit(target) - logsumexp; the target logit is picked by a fused compare-and-sum, whose
    # gradient is a select (a gather's would be a scatter). Clipping keeps -100 / pad ids harmless.
    hit = jnp.arange(logits.shape[-1]) == targets[..., None]
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    return weighted_mean(nll, _all_positions(next_token_weights(loss_mask, example_weight)))


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
    s = _f32(student_logits) / temperature
    t = _f32(jax.lax.stop_gradient(teacher_logits)) / temperature
    # KL = sum_v p_t (t - s) - lse(t) + lse(s), since sum_v p_t = 1: no [B, T, V] log-probabilities are kept.
    lse_t = jax.nn.logsumexp(t, axis=-1, keepdims=True)
    p_t = jnp.exp(t - lse_t)
    # Where p_t == 0 the term is 0 by definition; `where` avoids 0 * (-inf) = NaN.
    cross = jnp.sum(jnp.where(p_t > 0, p_t * (t - s), 0.0), axis=-1)
    kl = cross - lse_t[..., 0] + jax.nn.logsumexp(s, axis=-1)
    loss, num_tokens = weighted_mean(kl, _all_positions(next_token_weights(loss_mask, example_weight)))
    return loss * temperature**2, num_tokens
