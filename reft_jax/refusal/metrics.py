"""The filter's classification metrics, host side (NumPy): the threshold tau (`calibrate_threshold`,
`cap_false_positives`), AUROC (`auroc`, `auroc_by_style`), precision / recall (`binary_metrics`), the two
together (`filter_metrics`) and what a threshold does by prompt style (`operating_point`). Positive class =
harmful; a prompt is flagged when `score > tau` (strictly).
"""

from __future__ import annotations

import numpy as np

from reft_jax.errors import DataError


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
    of one style: a handful of the other is too few to rank against). A style of harmless rows only (the refusal
    pool's lookalikes: safe prompts that look harmful) has its harmless rows ranked against every harmful row.

    Args:
        scores: [N] float scores (higher = more harmful).
        labels: [N] bool/0-1, True = harmful.
        styles: [N] str, e.g. "instruction" / "question" / "lookalike" (reft_jax.data.STYLES).

    Returns:
        {style: {"auroc", "num_harmful", "num_harmless", "against"}} for every style with harmful rows, "against"
        being "same style" or "all harmless", and, when there are harmful rows, every style of harmless rows only,
        "against" being "all harmful".
    """
    s = _scores(scores)
    y = _labels(labels, n=s.shape[0])
    styles = np.asarray(styles)
    out = {}
    for style in sorted(set(styles.tolist())):
        same = styles == style
        if (same & y).any():
            own = (same & ~y).sum() >= min_harmless
            harmful, harmless = same & y, same & ~y if own else ~y
            against = "same style" if own else "all harmless"
        elif y.any():  # harmless rows only (the lookalikes): how they rank below the harmful rows
            harmful, harmless, against = y, same & ~y, "all harmful"
        else:
            continue
        rows = harmful | harmless
        out[style] = {"auroc": auroc(s[rows], y[rows]), "num_harmful": int(harmful.sum()),
                      "num_harmless": int(harmless.sum()), "against": against}
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


def operating_point(flagged, labels, styles) -> dict:
    """What a filter does at its threshold, overall and by prompt style (a lookalike style its own): the recall of
    the harmful rows, the share of the harmless rows flagged (`flagged_harmless_share`, the false-positive rate) and
    the precision of `binary_metrics`, each None where it is undefined (no harmful row, no harmless row, nothing
    flagged), with the counts.

    Args:
        flagged: [N] bool/0-1, True = flagged (score > tau). labels: [N] bool/0-1, True = harmful.
        styles: [N] str (reft_jax.data.STYLES).

    Returns:
        {"recall", "flagged_harmless_share", "precision", "num_harmful", "num_harmless", "num_flagged",
         "by_style": {style: the same without by_style}}.
    """
    f = _labels(flagged, name="flagged")
    y = _labels(labels, n=f.shape[0])
    styles = np.asarray(styles)

    def point(rows: np.ndarray) -> dict:
        m = binary_metrics(f[rows], y[rows])
        # Each ratio's denominator: None, not binary_metrics' 0.0, where it is 0 (a lookalike style has no recall).
        over = {"recall": m["num_harmful"], "flagged_harmless_share": m["num_harmless"], "precision": m["num_flagged"]}
        return {**{k: m[k] if n else None for k, n in over.items()},
                **{k: m[k] for k in ("num_harmful", "num_harmless", "num_flagged")}}

    return {**point(np.ones(f.shape[0], bool)),
            "by_style": {style: point(styles == style) for style in sorted(set(styles.tolist()))}}


def filter_metrics(flagged, harmful, scores=None) -> dict:
    """Precision, recall, F1 (positive class = harmful), AUROC of the scores (None without scores or
    without both classes), the share of harmless examples flagged, and the confusion counts."""
    metrics = binary_metrics(flagged, harmful)
    metrics["auroc"] = None if scores is None else auroc(scores, harmful)
    return metrics
