"""Confidence intervals of the report's rates (harmful score, finetune accuracy, over-refusal): a rate over n prompts
moves by 1 / n per prompt, so each comes with the range its true value likely lies in. Wilson's score interval keeps
inside [0, 1] and is not empty at 0 or n successes, where the normal approximation fails."""

from __future__ import annotations

import math
from statistics import NormalDist

CONFIDENCE = 0.95


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """The Wilson score interval [lo, hi] of a proportion k / n (None without trials): the p whose normal test
    |k - n p| <= z sqrt(n p (1 - p)) does not reject, z the normal quantile of (1 + confidence) / 2."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"{k} successes out of {n} trials")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def rate(name: str, k: int, n: int) -> dict:
    """`{name: k / n, name_ci: its interval}`, the report's form of a rate (None for both without trials)."""
    return {name: k / n if n else None, f"{name}_ci": wilson(k, n)}
