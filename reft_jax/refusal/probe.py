"""The learned filter (filter.scorer = "probe"), host side: a regularised logistic regression over the features at
the filter's layers, fitted with scikit-learn and kept as the linear function the device scores with
(`feature.probe_scores`).

Its input is each layer's hidden state unit-normalised (as the cosine reads it), the layers side by side,
standardised; the scaler is folded into the weights, so the probe is score(x) = sum_l w_l . f_l(x) / |f_l(x)| + b.
Its inverse regularisation C is the value of `GRID` whose probe ranks a held-out split best (AUROC).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from reft_jax.refusal.feature import probe_scores, unit_rows
from reft_jax.refusal.metrics import auroc

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # C, strongest regularisation first: a tie keeps the more regularised probe
MAX_ITER = 1000  # lbfgs iterations: a few hundred rows in thousands of dimensions can need more than the default 100


@dataclasses.dataclass(frozen=True)
class Probe:
    """A fitted probe: score(x) = sum_l w[l] . f_l(x) / |f_l(x)| + b."""

    w: np.ndarray  # [len(layers), D] float32
    b: float
    C: float  # the inverse regularisation it was fitted with

    @property
    def params(self) -> tuple:
        """The arguments after the features of `probe_scores` and of readout.make_score_fn(layers, "probe")'s pass."""
        return np.asarray(self.w, np.float32), np.float32(self.b)

    def scores(self, hidden) -> np.ndarray:
        """hidden [len(layers), N, D] -> [N] float32."""
        return np.asarray(probe_scores(hidden, *self.params), np.float32)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to another name
            np.savez(f, w=self.params[0], b=self.b, C=self.C)

    @classmethod
    def load(cls, path: str | Path) -> Probe:
        with np.load(path) as f:
            return cls(f["w"], float(f["b"]), float(f["C"]))


def fit_probe(hidden, harmful, held=None, held_harmful=None, grid=GRID) -> Probe:
    """The probe fitted on hidden [K, N, D] (the features at K layers) with labels harmful [N] (1 = harmful), its C
    the value of `grid` whose probe ranks the held-out split (held [K, M, D], held_harmful [M]) best by AUROC, the
    first of equals; without a held-out split, C = 1 (scikit-learn's default)."""
    x, y = _design(hidden), np.asarray(harmful) == 1
    if held is None:
        return _fit(x, y, 1.0, len(hidden))
    held_y = np.asarray(held_harmful) == 1
    probes = [_fit(x, y, C, len(hidden)) for C in grid]
    aurocs = [auroc(p.scores(held), held_y) for p in probes]
    return probes[int(np.argmax(aurocs))]


def _design(hidden) -> np.ndarray:
    """[K, N, D] features -> [N, K * D] float64: each layer's row unit-normalised, the layers side by side."""
    units = np.asarray(unit_rows(hidden), np.float64)
    return units.transpose(1, 0, 2).reshape(units.shape[1], -1)


def _fit(x: np.ndarray, y: np.ndarray, C: float, num_layers: int) -> Probe:
    # Imported here: only a teacher stage that fits a probe pays for scikit-learn's import.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=C, max_iter=MAX_ITER).fit(scaler.transform(x), y)
    # decision = coef . (x - mean) / scale + intercept: the scaler folded into the weights and the offset.
    w = model.coef_[0] / scaler.scale_
    return Probe(w.reshape(num_layers, -1).astype(np.float32), float(model.intercept_[0] - w @ scaler.mean_), float(C))
