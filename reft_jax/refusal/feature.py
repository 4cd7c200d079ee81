"""Refusal feature, refusal scores, threshold calibration and filter metrics.

Device side (jittable, float32 inside whatever the input dtype):
    `refusal_feature`     R_l = mean f_l(harmful) - mean f_l(harmless)
    `gather_last_prompt`  f_l at the last prompt token of each row
    `cosine_scores`       s(x) = cos(f_l(x), R_l)
    `layer_directions`    R_l at each of several layers
    `mean_cosine_scores`  the filter's score: cos(f_l(x), R_l) averaged over its layers

Host side (NumPy): `check_refusal_classes`, `calibrate_threshold`, `cap_false_positives`, `auroc`,
`auroc_by_style`,
`binary_metrics`.

Which hidden states the feature is read at (`feature_layer` for the regulariser, `filter_layers` for the
filter) and the jitted passes that read features and scores from a model (`make_feature_fn`, `make_score_fn`)
are here too.

A prompt is flagged as harmful when `score > tau` (strictly), everywhere in the project.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax.data import Batch
from reft_jax.errors import ConfigError, DataError
from reft_jax.runtime.numerics import at_least_f32 as _f32
from reft_jax.runtime.state import FrozenModel

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


# ---------------------------------------------------------------------------------------------
# Host side.


def _labels(labels, n: int | None = None, name: str = "labels") -> np.ndarray:
    """1-D bool array from bool/0-1 int labels."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{name} must be bool or 0/1, got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries, expected {n}")
    return y


def _scores(scores) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    return s


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


def calibrate_threshold(scores, labels, target_recall: float) -> float:
    """Largest tau such that recall of `score > tau` on the harmful rows is >= target_recall.

    Rule: let k be the smallest count with k / n_harmful >= target_recall and s_k the k-th largest
    harmful score. `score > tau` flags at least k harmful rows iff tau < s_k, so the answer is the
    largest number below s_k representable in the scores' dtype, `nextafter(s_k, -inf)`: every harmful
    row tied with s_k is flagged, and any larger tau (in that dtype) misses the target. With float32
    scores tau is a float32 value (returned as an exact Python float), so `score > tau` gives the
    same flags in float32 or float64. Harmless rows do not move tau; they only matter for precision.

    Args:
        scores: [N] float scores (higher = more harmful), no NaN.
        labels: [N] bool/0-1, True = harmful.
        target_recall: in (0, 1].

    Raises:
        ValueError: target out of range, bad shapes or NaN scores.
        DataError: no harmful rows to calibrate on.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    s = _scores(scores)
    y = _labels(labels, n=s.shape[0])
    pos = np.sort(s[y])[::-1]
    n = pos.shape[0]
    if n == 0:
        raise DataError("threshold calibration: the labelled pool has no harmful examples")
    counts = np.arange(1, n + 1)
    # Same arithmetic as the recall of `binary_metrics` (tp / n_harmful), so the check is consistent.
    k = int(counts[np.argmax(counts / n >= target_recall)])
    kth = pos[k - 1]
    return float(np.nextafter(kth, np.array(-np.inf, dtype=s.dtype)))


def cap_false_positives(tau: float, scores, labels, max_fpr: float) -> float:
    """tau raised, if needed, so that `score > tau` flags at most a share max_fpr of the harmless rows.

    The smallest such threshold is the k-th largest harmless score with k = floor(max_fpr * n_harmless) + 1
    (`score > tau` then flags at most k - 1 of them); tau is returned unchanged when it already meets the cap.

    Args:
        tau: a threshold, e.g. from `calibrate_threshold`.
        scores: [N] float scores, no NaN. labels: [N] bool/0-1, True = harmful.
        max_fpr: in [0, 1]; 1 = no cap.
    """
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in [0, 1], got {max_fpr}")
    s = _scores(scores)
    y = _labels(labels, n=s.shape[0])
    neg = np.sort(s[~y])[::-1]
    k = int(np.floor(max_fpr * neg.shape[0])) + 1
    if k > neg.shape[0]:
        return float(tau)
    return max(float(tau), float(neg[k - 1]))


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve, i.e. P(s_harmful > s_harmless) + 0.5 P(tie) (Mann-Whitney U).

    Ties get average ranks. Returns None when either class is empty (AUROC undefined; JSON null).
    """
    s = _scores(scores)
    y = _labels(labels, n=s.shape[0])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each tie group: (first + last) / 2 = last - (count - 1) / 2.
    group_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = group_rank[inverse.reshape(-1)]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auroc_by_style(scores, labels, styles, min_harmless: int = 10) -> dict[str, dict]:
    """The AUROC of each prompt style's harmful rows: against the harmless rows of the same style, or against every
    harmless row when that style has fewer than `min_harmless` of them (a task's harmless prompts are often all
    of one style: a handful of the other is too few to rank against).

    Args:
        scores: [N] float scores (higher = more harmful).
        labels: [N] bool/0-1, True = harmful.
        styles: [N] str, e.g. "instruction" / "question" (reft_jax.data.prompt_style).

    Returns:
        {style: {"auroc", "num_harmful", "num_harmless", "against"}} for every style with harmful rows, "against"
        being "same style" or "all harmless".
    """
    s = _scores(scores)
    y = _labels(labels, n=s.shape[0])
    styles = np.asarray(styles)
    out = {}
    for style in sorted(set(styles[y].tolist())):
        same = styles == style
        own = (same & ~y).sum() >= min_harmless
        against = same & ~y if own else ~y
        rows = (same & y) | against
        out[style] = {"auroc": auroc(s[rows], y[rows]), "num_harmful": int((same & y).sum()),
                      "num_harmless": int(against.sum()), "against": "same style" if own else "all harmless"}
    return out


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else 0.0


def binary_metrics(flagged, labels) -> dict:
    """Filter metrics, positive class = harmful.

    Every ratio with a zero denominator is 0.0 (sklearn's zero_division=0): precision when nothing is
    flagged, recall when there is no harmful row, f1 when precision + recall = 0,
    flagged_harmless_share when there is no harmless row, accuracy when there are no rows.

    Args:
        flagged: [N] bool/0-1, True = flagged as harmful.
        labels: [N] bool/0-1, True = harmful.

    Returns:
        dict of floats precision, recall, f1, accuracy, flagged_harmless_share (share of the harmless
        rows that were flagged, the false-positive rate) and ints num_examples, num_flagged,
        num_harmful, num_harmless, tp, fp, fn, tn.
    """
    f = _labels(flagged, name="flagged")
    y = _labels(labels, n=f.shape[0])
    tp, fp = int(np.sum(f & y)), int(np.sum(f & ~y))
    fn, tn = int(np.sum(~f & y)), int(np.sum(~f & ~y))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "accuracy": _ratio(tp + tn, f.shape[0]),
            "flagged_harmless_share": _ratio(fp, fp + tn),
            "num_examples": int(f.shape[0]),
            "num_flagged": tp + fp,
            "num_harmful": tp + fn,
            "num_harmless": fp + tn,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
    }


# ---------------------------------------------------------------------------------------------
# Reading the feature from a model.


def feature_layer(layer: int, num_layers: int) -> int:
    """The hidden_states index the refusal feature is read at: `layer` (refusal.layer in the config), where -1
    means the middle block, num_layers // 2."""
    return num_layers // 2 if layer < 0 else layer


def filter_layers(span, layer: int, num_layers: int) -> tuple[int, ...]:
    """The hidden_states indices the filter's score averages over (filter.layer_span): from the fraction
    span[0] of the depth to span[1], end excluded, rounded to layers, at least one layer and never the embeddings
    (index 0); an empty span: the regulariser's layer alone (`feature_layer`, the paper's single-layer filter)."""
    if not span:
        return (feature_layer(layer, num_layers),)
    lo, hi = (float(x) for x in span) if len(span) == 2 else (1.0, 0.0)
    if not 0 <= lo < hi <= 1:
        raise ConfigError(f"filter.layer_span: {tuple(span)} is not (start, end) with 0 <= start < end <= 1")
    first = max(1, int(lo * num_layers + 0.5))
    last = min(num_layers, max(first, int(hi * num_layers + 0.5) - 1))
    return tuple(range(first, last + 1))


def make_feature_fn(layer: int | tuple[int, ...]):
    """features(frozen_model, batch) -> [B, D] float32: hidden state `layer` at each last prompt token;
    for a tuple of layers, [len(layers), B, D] from one forward pass (only the blocks up to the deepest run)."""
    layers = (layer,) if isinstance(layer, int) else tuple(layer)

    @jax.jit
    def features(frozen: FrozenModel, batch: Batch) -> jax.Array:
        states = frozen.model().hidden_states_at(batch["input_ids"], batch["attention_mask"], layers)
        stacked = jnp.stack([gather_last_prompt(h, batch["prompt_end"]) for h in states]).astype(jnp.float32)
        return stacked[0] if isinstance(layer, int) else stacked

    return features


def make_score_fn(layers: tuple[int, ...]):
    """score(frozen_model, batch, r) -> [B] float32: the filter's score (`mean_cosine_scores`) of each row, with
    R [len(layers), D]; only the scores leave the device."""
    features = make_feature_fn(tuple(layers))

    @jax.jit
    def score(frozen: FrozenModel, batch: Batch, r: jax.Array) -> jax.Array:
        return mean_cosine_scores(features(frozen, batch), r)

    return score
