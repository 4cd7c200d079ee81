"""The SAFT filter (Safety-Aware Fine-Tuning, arXiv 2410.10014), as we read it.

Its method section was not available to us; this is our reading of its description, not a port of its code:
  1. take the last-prompt-token hidden states of the user prompts at a layer of the model being finetuned,
     and centre them (subtract their mean);
  2. take the top-k right singular vectors of that matrix (the directions the user data varies along most:
     a harmful minority shifted along one direction puts that direction near the top);
  3. score each sample by the magnitude of its projection on them, optionally weighting each direction by its
     singular value relative to the first;
  4. pick the layer, k and the sign of the score (whether large or small projections are harmful) by AUROC on
     a small labelled validation pool, projected on the same subspace;
  5. flag the samples whose score is above a percentile of the user data's scores.
The result is a FilterResult, the same as the Ref-Teacher filter's, and flagged samples are removed before
batching in the same way: the two filters are interchangeable.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax import refusal
from reft_jax.errors import ConfigError
from reft_jax.refusal.scoring import FilterResult


@dataclasses.dataclass(frozen=True)
class Subspace:
    mean: jax.Array  # [D] mean of the user features
    directions: jax.Array  # [K, D] top right singular vectors of the centred features, largest first
    singular_values: jax.Array  # [K]


@jax.jit
def _svd(features):
    x = jnp.asarray(features, jnp.float32)
    mean = x.mean(axis=0)
    _, s, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    return mean, s, vt


def fit_subspace(features, k: int) -> Subspace:
    """The top-k right singular vectors of the centred features [N, D]."""
    if not 1 <= k <= min(features.shape):
        raise ConfigError(f"saft.ks: k = {k} must be between 1 and min(N, D) = {min(features.shape)}")
    mean, s, vt = _svd(features)
    return Subspace(mean, vt[:k], s[:k])


@jax.jit
def _scores(features, mean, directions, singular_values, weighted):
    proj = (jnp.asarray(features, jnp.float32) - mean) @ directions.T  # [N, K]
    weights = jnp.where(weighted, singular_values / jnp.maximum(singular_values[0], 1e-12), 1.0)
    return jnp.linalg.norm(proj * weights, axis=-1)


def scores(features, subspace: Subspace, weighted: bool = False) -> np.ndarray:
    """|| w * V_k (x - mean) || per sample, w_j = s_j / s_1 when weighted, else 1: [N] float32."""
    return np.asarray(_scores(features, subspace.mean, subspace.directions, subspace.singular_values,
                              jnp.asarray(weighted)))


@dataclasses.dataclass(frozen=True)
class Selection:
    layer: int  # hidden_states index
    k: int
    sign: float  # +1: large projections are harmful; -1: small ones
    val_auroc: float


def select(user: np.ndarray, val: np.ndarray, val_labels: np.ndarray, layers: Sequence[int], ks: Sequence[int],
           weighted: bool) -> Selection:
    """The (layer, k, sign) whose validation AUROC is highest. user [L, N, D], val [L, M, D] per layer."""
    labels = np.asarray(val_labels)
    refusal.check_refusal_classes(labels, what="SAFT validation pool")
    best = None
    for i, layer in enumerate(layers):
        for k in ks:
            subspace = fit_subspace(user[i], int(k))
            val_scores = scores(val[i], subspace, weighted)
            for sign in (1.0, -1.0):
                auroc = refusal.auroc(sign * val_scores, labels)
                if best is None or auroc > best.val_auroc:
                    best = Selection(int(layer), int(k), sign, float(auroc))
    return best


@dataclasses.dataclass(frozen=True)
class Scorer:
    """The fitted filter: flags a prompt whose layer-`layer` feature scores above tau, as the user data was."""

    subspace: Subspace
    sign: float
    tau: float
    layer: int
    weighted: bool

    def scores(self, features) -> np.ndarray:
        return self.sign * scores(features, self.subspace, self.weighted)

    def save(self, path) -> None:
        np.savez(path, mean=self.subspace.mean, directions=self.subspace.directions,
                 singular_values=self.subspace.singular_values, sign=self.sign, tau=self.tau, layer=self.layer,
                 weighted=self.weighted)

    @classmethod
    def load(cls, path) -> Scorer:
        z = np.load(path)
        subspace = Subspace(jnp.asarray(z["mean"]), jnp.asarray(z["directions"]), jnp.asarray(z["singular_values"]))
        return cls(subspace, float(z["sign"]), float(z["tau"]), int(z["layer"]), bool(z["weighted"]))


def flag_user_data(user: np.ndarray, user_index: np.ndarray, user_labels: np.ndarray, val: np.ndarray,
               val_labels: np.ndarray, layers: Sequence[int], *, ks: Sequence[int], weighted: bool,
               percentile: float) -> tuple[FilterResult, Selection, Scorer]:
    """Selects on the validation pool, scores the user data, flags what is above the percentile threshold."""
    if not 0 < percentile < 100:
        raise ConfigError(f"saft.percentile: {percentile} is not in (0, 100)")
    choice = select(user, val, val_labels, layers, ks, weighted)
    i = list(layers).index(choice.layer)
    subspace = fit_subspace(user[i], choice.k)
    s = choice.sign * scores(user[i], subspace, weighted)
    tau = float(np.percentile(s, percentile))
    result = FilterResult(index=np.asarray(user_index), score=s.astype(np.float32), label=np.asarray(user_labels),
                          tau=tau, layers=(choice.layer,))
    return result, choice, Scorer(subspace, choice.sign, tau, choice.layer, weighted)
