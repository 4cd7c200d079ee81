"""The refusal feature and refusal scores, jittable (float32 inside whatever the input dtype):

    `refusal_feature`     R_l = mean f_l(harmful) - mean f_l(harmless)
    `gather_last_prompt`  f_l at the last prompt token of each row
    `cosine_scores`       s(x) = cos(f_l(x), R_l)
    `layer_directions`    R_l at each of several layers
    `mean_cosine_scores`  the filter's score (the paper's): cos(f_l(x), R_l) averaged over its layers
    `unit_rows`           f / |f|, each row of the features unit-normalised
    `probe_scores`        the learned filter's score: sum_l w_l . f_l(x) / |f_l(x)| + b (a linear probe)
    `veto_scores`         the cosine, lowered where a probe takes the prompt for a safe lookalike

(`SCORERS` names the filter's scores) and `check_refusal_classes`, the host-side check that both classes are
there. The threshold tau and the filter's metrics are in `reft_jax.refusal.metrics`; which layers the feature is read
at and the jitted passes that read it from a model in `reft_jax.refusal.readout`.

A prompt is flagged as harmful when `score > tau` (strictly), everywhere in the project.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax.errors import DataError
from reft_jax.runtime.numerics import at_least_f32 as _f32

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Device side.


def class_weights(harmful: Array, weight: Array | None = None) -> tuple[Array, Array]:
    """Per-row membership weights of the two classes.

    Args:
        harmful: [...] bool/int, 1 harmful, 0 harmless; any other value (the batches' -1 for an
            unknown label or a padding row) belongs to neither class.
        weight: optional [...], 0 for padding rows; None means all ones.

    Returns:
        (w_harmful, w_harmless), float32, shaped like `harmful`.
    """
    y = jnp.asarray(harmful)
    w = jnp.ones(y.shape, jnp.float32) if weight is None else jnp.asarray(weight).astype(jnp.float32)
    return jnp.where(y == 1, w, 0.0), jnp.where(y == 0, w, 0.0)


def refusal_feature(hidden: Array, harmful: Array, weight: Array | None = None) -> Array:
    """Difference-in-means refusal feature R = mean(harmful rows) - mean(harmless rows).

    Masked (weighted) means, so it jits with static shapes and padding rows (weight 0) are ignored.
    An empty class (total weight 0) makes R all zeros rather than NaN: a zero R gives cosine scores
    of exactly 0 (nothing flagged at tau >= 0) and a constant regularizer with zero gradient.
    Call `check_refusal_classes` on the host to turn that case into a clear error.

    Args:
        hidden: [N, D] features at the last prompt token (or [B, S, D] per packed segment; any
            leading dims), any float dtype.
        harmful: [N] (or the leading dims of hidden) bool/int: 1 harmful, 0 harmless, other
            values (-1) in neither class.
        weight: optional, shaped like harmful: row weights, 0 = padding row.

    Returns:
        [D] float32 (float64 under x64 with float64 input).
    """
    h = _f32(hidden)
    h = h.reshape(-1, h.shape[-1])
    w_pos, w_neg = (w.reshape(-1) for w in class_weights(harmful, weight))
    n_pos, n_neg = jnp.sum(w_pos), jnp.sum(w_neg)
    # Elementwise sums rather than `w @ h`: TPUs run f32 matmuls at reduced precision by default.
    mean_pos = jnp.sum(w_pos[:, None] * h, axis=0) / jnp.where(n_pos > 0, n_pos, 1.0)
    mean_neg = jnp.sum(w_neg[:, None] * h, axis=0) / jnp.where(n_neg > 0, n_neg, 1.0)
    both = (n_pos > 0) & (n_neg > 0)
    return jnp.where(both, mean_pos - mean_neg, jnp.zeros_like(mean_pos))


def gather_last_prompt(hidden_states_layer: Array, prompt_end: Array) -> Array:
    """Features at the last prompt token of each row.

    Args:
        hidden_states_layer: [B, T, D] hidden states of one layer.
        prompt_end: [B] int, the position of the LAST prompt token (inclusive; the response, if any,
            starts at prompt_end + 1), as in the data batches; or [B, S] for packed rows (one per
            segment). Clipped into [0, T - 1] so padding rows never index out of bounds.

    Returns:
        [B, D] (or [B, S, D]) in the input dtype.
    """
    h = jnp.asarray(hidden_states_layer)
    idx = jnp.clip(jnp.asarray(prompt_end).astype(jnp.int32), 0, h.shape[1] - 1)
    rows = jnp.arange(h.shape[0]).reshape((-1,) + (1,) * (idx.ndim - 1))
    return h[rows, idx]


def _norm(x: Array, eps: float) -> Array:
    # eps inside the sqrt: a zero vector gets norm eps and a finite (zero) gradient.
    return jnp.sqrt(jnp.sum(x * x, axis=-1) + eps * eps)


def cosine_scores(hidden: Array, r: Array, eps: float = 1e-6) -> Array:
    """Cosine similarity of each row with r, computed in (at least) float32.

    cos(x, r) = <x, r> / (|x|_eps |r|_eps) with |v|_eps = sqrt(|v|^2 + eps^2): a zero row or a zero
    r scores exactly 0, never NaN.

    Args:
        hidden: [N, D] (or [D]) any float dtype.
        r: [D].
        eps: norm regulariser, in units of the norm.

    Returns:
        [N] float32 (float64 under x64 with float64 inputs).
    """
    h, r = _f32(hidden), _f32(r)
    return jnp.sum(h * r, axis=-1) / (_norm(h, eps) * _norm(r, eps))


def layer_directions(hidden: Array, harmful: Array, weight: Array | None = None) -> Array:
    """`refusal_feature` at each of several layers: hidden [K, N, D] -> [K, D] float32."""
    return jax.vmap(lambda h: refusal_feature(h, harmful, weight))(hidden)


def mean_cosine_scores(hidden: Array, r: Array) -> Array:
    """The filter's score: hidden [K, N, D] and R [K, D] (one direction per layer) -> [N] float32, each row's
    cosine with its layer's direction, averaged over the K layers."""
    return jnp.mean(jax.vmap(cosine_scores)(hidden, r), axis=0)


def unit_rows(hidden: Array, eps: float = 1e-6) -> Array:
    """Each row (last axis) divided by its norm |v|_eps, in (at least) float32: a zero row stays zero."""
    h = _f32(hidden)
    return h / _norm(h, eps)[..., None]


def probe_scores(hidden: Array, w: Array, b: Array | float) -> Array:
    """A linear probe's score (reft_jax.refusal.probe fits it): hidden [K, N, D], w [K, D] (one weight vector per
    layer) and the offset b -> [N] float32, sum over the K layers of w_l . f_l / |f_l|_eps, plus b."""
    # Elementwise sums rather than a matmul, as in refusal_feature: TPUs run f32 matmuls at reduced precision.
    return jnp.sum(unit_rows(hidden) * _f32(w)[:, None, :], axis=(0, 2)) + _f32(b)


# The filter's scores by name (filter.scorer, filter.json's "scorer"): fn(features [K, N, D], *params) -> [N].
# Where a vetoed prompt the cosine flags scores: in [tau - VETO_BAND * (1 - tau), tau], by its cosine. Not flagged, it
# still ranks above the prompts the cosine leaves well below tau (a task's): a prompt the cosine takes for harmful is
# more suspect than one it does not, and the user data's AUROC counts the attack rows the veto lifts that way.
VETO_BAND = 0.01


def veto_scores(hidden: Array, r: Array, w: Array, b: Array | float, tau: Array | float) -> Array:
    """The cosine with a lookalike veto (filter.scorer = "veto"): `mean_cosine_scores(hidden, r)`, except where it
    is > tau and the probe (w, b; its threshold folded into b) scores <= 0, i.e. takes the prompt for a safe
    lookalike: there tau - VETO_BAND * (1 - cosine), <= tau. So `score > tau` is "the cosine flags and the probe
    does not veto", and the scores still rank by the cosine within each side of tau."""
    cosine, tau = mean_cosine_scores(hidden, r), _f32(tau)
    vetoed = (probe_scores(hidden, w, b) <= 0) & (cosine > tau)
    return jnp.where(vetoed, tau - VETO_BAND * (1.0 - cosine), cosine)


SCORERS = {"cosine": mean_cosine_scores, "probe": probe_scores, "veto": veto_scores}


# ---------------------------------------------------------------------------------------------
# Host side.


def check_refusal_classes(harmful, weight=None, what: str = "refusal pool") -> tuple[int, int]:
    """Raises DataError (one line) unless both classes have positive weight; returns the counts.

    The host-side companion of `refusal_feature` (same class rule: harmful == 1 / == 0, other values
    and weight-0 rows in neither class), which returns zeros for an empty class.

    Returns:
        (number of harmful rows, number of harmless rows) with weight > 0.
    """
    y = np.asarray(harmful)
    w = np.ones(y.shape, np.float64) if weight is None else np.asarray(weight, np.float64)
    n_pos, n_neg = int(np.sum((y == 1) & (w > 0))), int(np.sum((y == 0) & (w > 0)))
    if n_pos == 0 or n_neg == 0:
        missing = "harmful" if n_pos == 0 else "harmless"
        raise DataError(
                f"{what}: no {missing} prompts ({n_pos} harmful, {n_neg} harmless); the refusal feature "
                "needs both")
    return n_pos, n_neg
