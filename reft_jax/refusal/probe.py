"""The learned filters, host side: a regularised logistic regression over the features at the filter's layers, fitted
with scikit-learn and kept as the linear function the device scores with (`feature.probe_scores`): the probe
(filter.scorer = "probe") scores prompts itself; the lookalike veto ("veto") is such a probe fitted to tell harmful
requests from safe lookalikes, which lowers the cosine of the prompts it takes for lookalikes (`feature.veto_scores`).

Its input is each layer's hidden state unit-normalised (as the cosine reads it), the layers side by side,
standardised; the scaler is folded into the weights, so the probe is score(x) = sum_l w_l . f_l(x) / |f_l(x)| + b.
Its inverse regularisation C is the value of `GRID` whose probe ranks a held-out split best (AUROC).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from reft_jax.refusal.feature import probe_scores, unit_rows, veto_scores
from reft_jax.refusal.metrics import auroc, calibrate_threshold

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # C, strongest regularisation first: a tie keeps the more regularised probe
MAX_ITER = 10_000  # lbfgs iterations: a few hundred rows in thousands of dimensions can need more than the default 100
# lbfgs's stopping tolerance. At scikit-learn's 1e-4 the veto's probe on SmolLM2 (2,025 rows of 10,368 features)
# stopped far from its optimum: refitted on its features changed by one part in a million (what reading them in
# other batches does), its weights moved by up to 9 % of the largest, at 1e-6 by 0.25 % (355 iterations, not 128).
TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Probe:
    """A fitted probe: score(x) = sum_l w[l] . f_l(x) / |f_l(x)| + b."""

    w: np.ndarray  # [len(layers), D] float32
    b: float
    C: float  # the inverse regularisation it was fitted with

    kind = "probe"  # its name in feature.SCORERS

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


@dataclasses.dataclass(frozen=True)
class Veto:
    """The cosine with a lookalike veto: R [len(layers), D], a probe whose threshold is folded into its offset
    (it vetoes where it scores <= 0) and the cosine's tau (the vetoed prompts score just below it)."""

    r: np.ndarray
    probe: Probe
    tau: float

    kind = "veto"

    @property
    def params(self) -> tuple:
        """The arguments after the features of `veto_scores`."""
        return (np.asarray(self.r, np.float32), *self.probe.params, np.float32(self.tau))

    def scores(self, hidden) -> np.ndarray:
        return np.asarray(veto_scores(hidden, *self.params), np.float32)


def fit_veto(hidden, harmful, held, held_harmful, recall: float, grid=GRID) -> tuple[Probe, dict]:
    """The veto's probe: fitted on hidden [K, N, D] to tell harmful requests (harmful = 1) from safe lookalikes, its C
    chosen on the held-out calibration set (held, held_harmful) by AUROC, and its threshold set there for `recall`
    of the harmful requests (folded into the offset: the probe vetoes where it scores <= 0). Returns it and what
    was chosen (C, the threshold, the calibration AUROC, the share of the calibration's lookalikes it vetoes)."""
    probe = fit_probe(hidden, harmful, held, held_harmful, grid)
    held_scores, held_y = probe.scores(held), np.asarray(held_harmful) == 1
    folded, threshold = fold_threshold(probe, held_scores, calibrate_threshold(held_scores, held_y, recall))
    info = {"C": probe.C, "threshold": threshold, "calibration_auroc": auroc(held_scores, held_y),
            "calibration_lookalikes_vetoed": float(np.mean(held_scores[~held_y] <= threshold)),
            "calibration_harmful_vetoed": float(np.mean(held_scores[held_y] <= threshold))}
    return folded, info


def fold_threshold(probe: Probe, held_scores: np.ndarray, tau: float, at: float = 0.5) -> tuple[Probe, float]:
    """The probe with a threshold folded into its offset (it flags where it scores > 0), the same held-out rows above
    it as above tau; and that threshold. tau (from calibrate_threshold) sits one float below the last score it must
    pass, and folded in, rounding could drop that row: the threshold is put `at` that share of the way down to the
    next score below (the veto's halfway; 1 below the last score when none is below)."""
    passing, below = held_scores[held_scores > tau], held_scores[held_scores <= tau]
    if not passing.size:
        threshold = float(tau)
    else:
        gap = passing.min() - below.max() if below.size else 1.0 / at
        threshold = float(passing.min() - at * gap)
    return Probe(probe.w, probe.b - threshold, probe.C), threshold


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
    model = LogisticRegression(C=C, max_iter=MAX_ITER, tol=TOL).fit(scaler.transform(x), y)
    # decision = coef . (x - mean) / scale + intercept: the scaler folded into the weights and the offset.
    w = model.coef_[0] / scaler.scale_
    return Probe(w.reshape(num_layers, -1).astype(np.float32), float(model.intercept_[0] - w @ scaler.mean_), float(C))
