"""The SAFT filter against a NumPy reference, on synthetic features with a planted harmful direction."""

import numpy as np
import pytest

from reft_jax.errors import ConfigError
from reft_jax.refusal import saft
from reft_jax.refusal.metrics import auroc


def planted(n=400, d=32, p=0.1, shift=6.0, seed=0):
    """Isotropic features; a share p of harmful samples is shifted along one unit direction u (the same u
    for every seed: a validation pool and the user data share it)."""
    u = np.random.default_rng(123).standard_normal(d)
    u /= np.linalg.norm(u)
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < p).astype(np.int32)
    x = rng.standard_normal((n, d)) + shift * labels[:, None] * u
    return x.astype(np.float32), labels, u


def numpy_scores(user, x, k, weighted):
    """Reference: centre on the user mean, top-k right singular vectors, (weighted) projection norm."""
    mean = user.mean(0)
    _, s, vt = np.linalg.svd(user.astype(np.float64) - mean, full_matrices=False)
    w = s[:k] / s[0] if weighted else np.ones(k)
    return np.linalg.norm(((x - mean) @ vt[:k].T) * w, axis=1)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_scores_match_numpy(k, weighted):
    user, _, _ = planted()
    val, _, _ = planted(n=60, seed=1)
    subspace = saft.fit_subspace(user, k)
    np.testing.assert_allclose(saft.scores(val, subspace, weighted), numpy_scores(user, val, k, weighted),
                               rtol=1e-4, atol=1e-4)


def test_the_planted_direction_is_found():
    user, labels, u = planted()
    subspace = saft.fit_subspace(user, 1)
    assert abs(float(np.asarray(subspace.directions)[0] @ u)) > 0.95
    assert auroc(saft.scores(user, subspace), labels) > 0.97


def test_selection_picks_the_informative_layer_and_the_sign(tmp_path):
    user, user_labels, u = planted()
    val, val_labels, _ = planted(n=80, p=0.5, seed=2)
    rng = np.random.default_rng(3)
    noise_user, noise_val = rng.standard_normal(user.shape), rng.standard_normal(val.shape)  # a layer with nothing
    features_user = np.stack([noise_user, user]).astype(np.float32)
    features_val = np.stack([noise_val, val]).astype(np.float32)
    choice = saft.select(features_user, features_val, val_labels, layers=(3, 7), ks=(1, 2, 4), weighted=True)
    assert choice.layer == 7 and choice.sign == 1.0 and choice.val_auroc > 0.95

    result, _, scorer = saft.flag_user_data(features_user, np.arange(len(user)), user_labels, features_val, val_labels,
                                        (3, 7), ks=(1, 2, 4), weighted=True, percentile=85.0)
    assert result.layers == (7,) and result.flagged.mean() == pytest.approx(0.15, abs=0.01)
    report = result.report()
    assert report["recall"] > 0.95 and report["auroc"] > 0.97  # 10% harmful inside the flagged top 15%

    # The fitted scorer, saved and loaded, flags new prompts as it flagged the user data (over-refusal scoring).
    scorer.save(tmp_path / "saft.npz")
    loaded = saft.Scorer.load(tmp_path / "saft.npz")
    assert loaded.layer == 7 and loaded.tau == scorer.tau == result.tau
    np.testing.assert_array_equal(loaded.scores(features_user[1]) > loaded.tau, result.flagged)


def test_small_projections_are_flagged_when_benign_data_spreads_along_the_top_direction():
    """Benign samples split along a task direction v (two classes at +-3 v), harmful ones sit near the mean:
    the top direction is v and harmful samples have the SMALL projections, so the selection flips the sign."""
    rng = np.random.default_rng(0)

    def mixture(n, p):
        harmful = (rng.random(n) < p).astype(np.int32)
        side = np.where(rng.random(n) < 0.5, 3.0, -3.0) * (1 - harmful)
        v = np.eye(16)[0]
        return (0.3 * rng.standard_normal((n, 16)) + side[:, None] * v).astype(np.float32), harmful

    user, user_labels = mixture(300, 0.1)
    val, val_labels = mixture(80, 0.5)
    choice = saft.select(user[None], val[None], val_labels, layers=(1,), ks=(1,), weighted=False)
    assert choice.sign == -1.0 and choice.val_auroc > 0.95
    result, _, _ = saft.flag_user_data(user[None], np.arange(300), user_labels, val[None], val_labels, (1,), ks=(1,),
                                   weighted=False, percentile=85.0)
    assert result.report()["recall"] > 0.9


def test_bad_settings():
    user, labels, _ = planted(n=20, d=4)
    with pytest.raises(ConfigError, match="saft.ks"):
        saft.fit_subspace(user, 5)
    with pytest.raises(ConfigError, match="saft.percentile"):
        saft.flag_user_data(user[None], np.arange(20), labels, user[None], labels, (1,), ks=(1,), weighted=False,
                        percentile=100.0)
