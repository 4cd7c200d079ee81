"""Tests of reft_jax.refusal's feature, metrics and readout against independent NumPy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reft_jax import refusal
from reft_jax.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------
# refusal_feature


def _np_refusal_feature(hidden, harmful, weight):
    """Reference with boolean indexing: drop padding rows, then the plain difference in means."""
    keep = weight > 0
    h, y = hidden[keep].astype(np.float64), harmful[keep].astype(bool)
    return h[y].mean(0) - h[~y].mean(0)


def test_refusal_feature_matches_numpy_with_padding_rows():
    rng = np.random.default_rng(0)
    n, d = 37, 16
    hidden = rng.normal(size=(n, d)).astype(np.float32) + 3.0
    harmful = rng.integers(0, 2, size=n).astype(bool)
    weight = (rng.random(n) > 0.3).astype(np.float32)
    # Padding rows hold garbage that must not leak into either mean.
    hidden[weight == 0] = 1e6

    got = jax.jit(refusal.refusal_feature)(hidden, harmful, weight)
    assert got.dtype == jnp.float32 and got.shape == (d,)
    np.testing.assert_allclose(np.asarray(got), _np_refusal_feature(hidden, harmful, weight),
                               rtol=1e-5, atol=1e-5)

    # Without weights every row counts; int labels behave as bool ones.
    got = refusal.refusal_feature(hidden, harmful.astype(np.int32))
    np.testing.assert_allclose(np.asarray(got),
                               _np_refusal_feature(hidden, harmful, np.ones(n)), rtol=1e-5)


def test_refusal_feature_unknown_labels_and_packed_segments():
    rng = np.random.default_rng(9)
    b, s, d = 4, 3, 8
    hidden = rng.normal(size=(b, s, d)).astype(np.float32)
    harmful = rng.integers(-1, 2, size=(b, s))  # -1: unknown label or empty slot
    harmful[0, :2] = [0, 1]
    weight = (rng.random((b, s)) > 0.2).astype(np.float32)
    weight[0, :2] = 1.0
    hidden[harmful == -1] = 1e6  # must not leak even with weight 1
    got = refusal.refusal_feature(hidden, harmful, weight)
    flat_w = np.where(harmful.reshape(-1) >= 0, weight.reshape(-1), 0.0)
    ref = _np_refusal_feature(hidden.reshape(-1, d), harmful.reshape(-1) == 1, flat_w)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    n_pos = int(np.sum((harmful == 1) & (weight > 0)))
    n_neg = int(np.sum((harmful == 0) & (weight > 0)))
    assert refusal.check_refusal_classes(harmful, weight) == (n_pos, n_neg)


def test_refusal_feature_bf16_input_gives_float32():
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(64, 8)), jnp.bfloat16)
    harmful = np.arange(64) % 2 == 0
    got = refusal.refusal_feature(hidden, harmful)
    assert got.dtype == jnp.float32
    ref = _np_refusal_feature(np.asarray(hidden.astype(jnp.float32)), harmful, np.ones(64))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("missing", ["harmful", "harmless"])
def test_refusal_feature_empty_class_is_zero_and_check_raises(missing):
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(6, 4)).astype(np.float32)
    # The only rows of the missing class are padding rows, so the class is empty.
    harmful = np.array([1, 1, 1, 0, 0, 0], bool)
    weight = np.array([0, 0, 0, 1, 1, 1] if missing == "harmful" else [1, 1, 1, 0, 0, 0],
                      np.float32)

    got = jax.jit(refusal.refusal_feature)(hidden, harmful, weight)
    np.testing.assert_array_equal(np.asarray(got), np.zeros(4, np.float32))
    with pytest.raises(DataError, match=f"no {missing} prompts") as info:
        refusal.check_refusal_classes(harmful, weight, what="teacher pool")
    assert "\n" not in str(info.value) and "teacher pool" in str(info.value)


def test_check_refusal_classes_counts_rows_with_weight():
    harmful = np.array([1, 0, 1, 0, 1])
    assert refusal.check_refusal_classes(harmful) == (3, 2)
    assert refusal.check_refusal_classes(harmful, np.array([1, 1, 0, 1, 0])) == (1, 2)


# ------------------------------------------------------------------------------------------------
# gather_last_prompt and cosine_scores


def test_gather_last_prompt_matches_loop_and_clips():
    rng = np.random.default_rng(3)
    b, t, d = 5, 7, 3
    hs = rng.normal(size=(b, t, d)).astype(np.float32)
    prompt_end = np.array([0, 6, 3, 9, -1])  # the last two are out of range (padding rows)
    got = np.asarray(jax.jit(refusal.gather_last_prompt)(hs, prompt_end))
    ref = np.stack([hs[i, min(max(p, 0), t - 1)] for i, p in enumerate(prompt_end)])
    np.testing.assert_array_equal(got, ref)
    assert got.shape == (b, d)


def test_gather_last_prompt_packed_segments():
    rng = np.random.default_rng(6)
    hs = rng.normal(size=(2, 9, 4)).astype(np.float32)
    prompt_end = np.array([[2, 6, 0], [4, 8, 0]])  # [B, S]; 0 for an empty slot
    got = np.asarray(refusal.gather_last_prompt(hs, prompt_end))
    assert got.shape == (2, 3, 4)
    for i, j in np.ndindex(2, 3):
        np.testing.assert_array_equal(got[i, j], hs[i, prompt_end[i, j]])


def _np_cosine(h, r):
    h, r = h.astype(np.float64), r.astype(np.float64)
    return h @ r / (np.linalg.norm(h, axis=-1) * np.linalg.norm(r))


def test_cosine_scores_matches_numpy():
    rng = np.random.default_rng(4)
    h = rng.normal(size=(20, 32)).astype(np.float32)
    r = rng.normal(size=32).astype(np.float32)
    got = jax.jit(refusal.cosine_scores)(h, r)
    assert got.dtype == jnp.float32 and got.shape == (20,)
    np.testing.assert_allclose(np.asarray(got), _np_cosine(h, r), rtol=1e-5, atol=1e-6)
    # Aligned / anti-aligned rows score +-1 whatever their scale.
    got = refusal.cosine_scores(np.stack([3.0 * r, -0.5 * r]), r)
    np.testing.assert_allclose(np.asarray(got), [1.0, -1.0], atol=1e-6)


def test_the_filter_score_is_the_mean_over_layers_of_each_layers_own_direction():
    rng = np.random.default_rng(6)
    h = rng.normal(size=(3, 20, 16)).astype(np.float32)  # [layers, rows, D]
    harmful = np.array([1, 0] * 10)
    h[:, harmful == 1] += rng.normal(size=(3, 1, 16)).astype(np.float32)  # a different direction per layer
    r = np.asarray(jax.jit(refusal.layer_directions)(h, harmful))
    assert r.shape == (3, 16)
    for k in range(3):  # each layer's difference in means, as refusal_feature computes it alone
        np.testing.assert_allclose(r[k], h[k, harmful == 1].mean(0) - h[k, harmful == 0].mean(0), rtol=1e-5,
                                   atol=1e-6)
    got = jax.jit(refusal.mean_cosine_scores)(h, r)
    assert got.dtype == jnp.float32 and got.shape == (20,)
    np.testing.assert_allclose(np.asarray(got), np.mean([_np_cosine(h[k], r[k]) for k in range(3)], axis=0),
                               rtol=1e-5, atol=1e-6)


def design(h):
    """The probe's design matrix, in NumPy: [K, N, D] features -> [N, K * D], each layer's rows unit-normalised."""
    units = h / np.linalg.norm(h.astype(np.float64), axis=-1, keepdims=True)
    return units.transpose(1, 0, 2).reshape(h.shape[1], -1)


def test_the_probe_scores_what_scikit_learns_pipeline_decides(tmp_path):
    """The probe (its scaler folded into its weights), scored by the jitted probe_scores, against the decision function
    of the same pipeline fitted by scikit-learn: each layer's rows unit-normalised, the layers side by side,
    StandardScaler, LogisticRegression with the C of the grid whose pipeline ranks the held-out rows best."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from reft_jax.refusal import probe

    rng = np.random.default_rng(1)
    shift = rng.normal(size=(3, 1, 16))  # a harmful direction per layer
    loud = shift + rng.normal(size=(3, 1, 16))  # and a loud one along it: neither the least nor the most C is best

    def features(n):
        harmful = rng.permutation(np.arange(n) % 2)
        h = rng.normal(size=(3, n, 16)) + 0.5 * shift * harmful[:, None] + 3 * rng.normal(size=(1, n, 1)) * loud
        return (h * rng.uniform(0.5, 20.0, size=(1, n, 1))).astype(np.float32), harmful  # rows of any scale

    (train, y), (held, held_y), (test, _) = features(60), features(40), features(25)

    pipelines = [make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=probe.MAX_ITER, tol=probe.TOL))
                 .fit(design(train), y) for C in probe.GRID]
    aurocs = [roc_auc_score(held_y, p.decision_function(design(held))) for p in pipelines]
    fitted = probe.fit_probe(train, y, held, held_y)
    assert fitted.C == probe.GRID[int(np.argmax(aurocs))] == 0.1
    assert fitted.w.shape == (3, 16) and fitted.w.dtype == np.float32
    got = jax.jit(refusal.probe_scores)(test, *fitted.params)
    assert got.dtype == jnp.float32 and got.shape == (25,)
    want = pipelines[probe.GRID.index(fitted.C)].decision_function(design(test))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    fitted.save(tmp_path / "probe.npz")
    loaded = probe.Probe.load(tmp_path / "probe.npz")
    np.testing.assert_array_equal(loaded.w, fitted.w)
    assert (loaded.b, loaded.C) == (fitted.b, fitted.C)


def test_the_probe_is_its_objectives_optimum_not_where_a_loose_stopping_rule_left_it():
    """On features like a model's (low rank, in more dimensions than rows, nearly separable) scikit-learn's default
    stopping rule leaves the fit about 1 % of the scores' range from the optimum (so that a refit on the same prompts
    read in other batches lands elsewhere); the probe's scores equal those of the same pipeline solved to 1e-10."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from reft_jax.refusal import probe

    rng = np.random.default_rng(0)
    y = np.arange(300) % 2
    z = rng.normal(size=(300, 40)) + 0.5 * y[:, None] * rng.normal(size=(1, 40))
    h = (z @ rng.normal(size=(40, 3 * 500)) / np.sqrt(40) + 0.1 * rng.normal(size=(300, 3 * 500)))
    h = h.reshape(300, 3, 500).transpose(1, 0, 2).astype(np.float32)  # [layers, rows, D]
    scaler = StandardScaler().fit(design(h))
    solved = LogisticRegression(C=1.0, max_iter=100_000, tol=1e-10).fit(scaler.transform(design(h)), y)
    want = solved.decision_function(scaler.transform(design(h)))
    got = probe.fit_probe(h, y).scores(h)  # no held-out split: C = 1
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_the_veto_lowers_the_cosine_of_what_its_probe_takes_for_a_lookalike():
    """veto_scores against NumPy: the mean of the layers' cosines with R, moved to tau - 0.01 (1 - cosine) where it
    is > tau and the probe's score (its threshold folded into b by fit_veto) is <= 0; fit_veto's threshold passes
    the asked share of the calibration's harmful rows, and its probe is fit_probe's with the threshold taken off its
    offset."""
    from reft_jax.refusal import probe

    rng = np.random.default_rng(2)
    shift = rng.normal(size=(3, 1, 16))

    def features(n):
        harmful = rng.permutation(np.arange(n) % 2)
        return (rng.normal(size=(3, n, 16)) + 0.7 * shift * harmful[:, None]).astype(np.float32), harmful

    (fit, y), (held, held_y), (test, _) = features(60), features(40), features(25)
    vetoer, info = probe.fit_veto(fit, y, held, held_y, recall=0.9)
    plain = probe.fit_probe(fit, y, held, held_y)
    assert vetoer.C == plain.C == info["C"]
    np.testing.assert_array_equal(vetoer.w, plain.w)
    assert vetoer.b == pytest.approx(plain.b - info["threshold"])
    passed = vetoer.scores(held)[held_y == 1] > 0
    assert passed.mean() >= 0.9 and info["calibration_harmful_vetoed"] == pytest.approx(1 - passed.mean())
    r = rng.normal(size=(3, 16)).astype(np.float32)
    cosines = np.mean([_np_cosine(test[k], r[k]) for k in range(3)], axis=0)
    tau = float(np.sort(cosines)[11:13].mean())  # between two rows: no cosine sits on it
    veto = probe.Veto(r, vetoer, tau)
    got = jax.jit(refusal.veto_scores)(test, *veto.params)
    units = test / np.linalg.norm(test.astype(np.float64), axis=-1, keepdims=True)
    probe_scores = np.einsum("knd,kd->n", units, vetoer.w) + vetoer.b
    lifted = (probe_scores <= 0) & (cosines > tau)
    want = np.where(lifted, tau - 0.01 * (1 - cosines), cosines)
    assert got.dtype == jnp.float32 and 0 < lifted.sum() < ((probe_scores > 0) & (cosines > tau)).sum() + lifted.sum()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(veto.scores(test), want, rtol=1e-5, atol=1e-5)
    flagged = np.asarray(got) > tau  # a flag is "the cosine flags and the probe does not veto"
    np.testing.assert_array_equal(flagged, (cosines > tau) & (probe_scores > 0))
    assert np.all(np.asarray(got)[lifted] > cosines[cosines <= tau].min())  # lifted rows still rank above the lowest


@pytest.mark.parametrize("span, num_layers, layers", [
    ((0.2, 0.8), 30, tuple(range(6, 24))),  # SmolLM2: layers 6-23
    ((0.2, 0.8), 4, (1, 2)),  # the demo's model
    ((0.2, 0.8), 2, (1,)),  # never the embeddings (index 0), at least one layer
    ((0.0, 1.0), 4, (1, 2, 3)),  # the end excluded
    ((), 30, (15,)),  # no span: refusal.layer (-1: the middle) alone
])
def test_filter_layers(span, num_layers, layers):
    assert refusal.filter_layers(span, -1, num_layers) == layers


@pytest.mark.parametrize("span", [(0.8, 0.2), (0.2, 1.5), (0.5,), (-0.1, 0.5)])
def test_filter_layers_rejects_a_bad_span_naming_the_field(span):
    with pytest.raises(ConfigError, match="filter.layer_span"):
        refusal.filter_layers(span, -1, 30)


def test_cosine_scores_bf16_computed_in_float32():
    rng = np.random.default_rng(5)
    d = 512
    # Large, nearly parallel rows: summing their products in bf16 would lose several digits.
    r = rng.normal(size=d).astype(np.float32)
    h = jnp.asarray(40.0 * r + rng.normal(size=(8, d)), jnp.bfloat16)
    r16 = jnp.asarray(r, jnp.bfloat16)
    got = refusal.cosine_scores(h, r16)
    assert got.dtype == jnp.float32
    ref = _np_cosine(np.asarray(h.astype(jnp.float32)), np.asarray(r16.astype(jnp.float32)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=1e-6)
    # The same arithmetic done in bf16 is measurably worse, so the check above has teeth.
    bf16 = jnp.sum(h * r16, -1) / (jnp.linalg.norm(h, axis=-1) * jnp.linalg.norm(r16))
    assert np.max(np.abs(np.asarray(bf16.astype(jnp.float32)) - ref)) > 1e-4


def test_cosine_scores_zero_vectors_give_zero_not_nan():
    r = np.ones(4, np.float32)
    got = refusal.cosine_scores(np.zeros((2, 4), np.float32), r)
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0])
    got = refusal.cosine_scores(np.ones((2, 4), np.float32), np.zeros(4, np.float32))
    np.testing.assert_array_equal(np.asarray(got), [0.0, 0.0])
    grad = jax.grad(lambda h: refusal.cosine_scores(h, r).sum())(np.zeros((2, 4), np.float32))
    assert np.all(np.isfinite(np.asarray(grad)))


# ------------------------------------------------------------------------------------------------
# auroc


def _brute_force_auroc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]
    scores = rng.integers(0, 5, size=n).astype(np.float32)  # few values -> many ties
    assert refusal.auroc(scores, labels) == pytest.approx(_brute_force_auroc(scores, labels),
                                                          abs=1e-12)


def test_auroc_edge_cases():
    labels = np.array([1, 1, 0, 0])
    assert refusal.auroc([0.9, 0.8, 0.1, 0.2], labels) == 1.0
    assert refusal.auroc([0.1, 0.2, 0.9, 0.8], labels) == 0.0
    assert refusal.auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5
    assert refusal.auroc([0.1, 0.2], [1, 1]) is None
    assert refusal.auroc([0.1, 0.2], [0, 0]) is None
    with pytest.raises(ValueError, match="NaN"):
        refusal.auroc([np.nan, 0.2], [0, 1])


# ------------------------------------------------------------------------------------------------
# calibrate_threshold


def _recall(scores, labels, tau):
    return np.sum((scores > tau) & labels) / np.sum(labels)


@pytest.mark.parametrize("target", [0.01, 0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calibrate_threshold_is_largest_tau_meeting_target(target, dtype):
    rng = np.random.default_rng(7)
    n = 101
    labels = rng.random(n) < 0.5
    scores = rng.normal(size=n).astype(dtype)
    scores[labels] += 1.0
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    scores[pos[:6]] = scores[pos[6]]  # ties among harmful scores
    scores[neg[0]] = scores[pos[10]]  # a harmless row tied with a harmful one

    tau = refusal.calibrate_threshold(scores, labels, target)
    assert _recall(scores, labels, tau) >= target
    assert _recall(scores, labels, np.asarray(tau, dtype)) >= target  # exact in the scores' dtype
    # The next representable tau above misses the target: tau is the largest.
    bigger = np.nextafter(np.asarray(tau, dtype), np.asarray(np.inf, dtype))
    assert _recall(scores, labels, bigger) < target
    # Agrees with binary_metrics' notion of recall.
    assert refusal.binary_metrics(scores > tau, labels)["recall"] >= target


def test_calibrate_threshold_with_all_harmful_tied():
    scores = np.array([0.3, 0.3, 0.3, 0.9, -1.0])
    labels = np.array([1, 1, 1, 0, 0])
    tau = refusal.calibrate_threshold(scores, labels, 0.5)
    # Tied harmful scores move together: to reach 2/3 >= 0.5 all three are flagged.
    assert tau == np.nextafter(0.3, -np.inf)
    assert _recall(scores, labels.astype(bool), tau) == 1.0


def test_calibrate_threshold_bad_input():
    with pytest.raises(DataError, match="no harmful"):
        refusal.calibrate_threshold([0.1, 0.2], [0, 0], 0.9)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="target_recall"):
            refusal.calibrate_threshold([0.1, 0.2], [1, 0], bad)
    with pytest.raises(ValueError, match="labels"):
        refusal.calibrate_threshold([0.1, 0.2], [1, 0, 1], 0.5)


# ------------------------------------------------------------------------------------------------
# binary_metrics


def test_binary_metrics_matches_manual_counts():
    rng = np.random.default_rng(8)
    labels = rng.random(200) < 0.3
    flagged = np.where(rng.random(200) < 0.8, labels, ~labels)
    m = refusal.binary_metrics(flagged, labels.astype(np.int64))
    tp, fp = np.sum(flagged & labels), np.sum(flagged & ~labels)
    fn, tn = np.sum(~flagged & labels), np.sum(~flagged & ~labels)
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)
    assert m["precision"] == pytest.approx(p) and m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["accuracy"] == pytest.approx((tp + tn) / 200)
    assert m["flagged_harmless_share"] == pytest.approx(fp / (fp + tn))
    assert (m["num_examples"], m["num_flagged"]) == (200, tp + fp)
    assert (m["num_harmful"], m["num_harmless"]) == (tp + fn, fp + tn)
    assert all(isinstance(m[k], int) for k in ("tp", "fp", "fn", "tn", "num_flagged"))


def test_binary_metrics_zero_denominators_are_zero():
    # Nothing flagged: precision (0 / 0) is 0.0, recall 0, f1 0.
    m = refusal.binary_metrics([0, 0, 0], [1, 0, 0])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(2 / 3)
    # No harmful rows: recall 0.0; no harmless rows: flagged_harmless_share 0.0.
    m = refusal.binary_metrics([1, 0], [0, 0])
    assert (m["recall"], m["precision"], m["flagged_harmless_share"]) == (0.0, 0.0, 0.5)
    m = refusal.binary_metrics([1, 1], [1, 1])
    assert (m["precision"], m["recall"], m["f1"], m["flagged_harmless_share"]) == (1, 1, 1, 0.0)
    m = refusal.binary_metrics(np.zeros(0, bool), np.zeros(0, bool))
    assert m["accuracy"] == 0.0 and m["num_examples"] == 0


def test_auroc_by_style_against_the_same_style_or_every_harmless_row():
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.4, 0.95])
    labels = np.array([1, 1, 0, 0, 0, 1, 1], bool)
    styles = np.array(["question", "question", "question", "instruction", "instruction", "exclamation",
                       "instruction"])
    out = refusal.auroc_by_style(scores, labels, styles, min_harmless=1)
    # Questions: harmful 0.9, 0.2 against the one harmless question, 0.8.
    assert out["question"] == {"auroc": _brute_force_auroc(np.array([0.9, 0.2, 0.8]), np.array([1, 1, 0], bool)), "num_harmful": 2,
                               "num_harmless": 1, "against": "same style"}
    assert out["instruction"]["auroc"] == 1.0 and out["instruction"]["num_harmless"] == 2
    # No harmless row of that style: against every harmless row (0.8, 0.1, 0.3).
    assert out["exclamation"] == {"auroc": _brute_force_auroc(np.array([0.4, 0.8, 0.1, 0.3]), np.array([1, 0, 0, 0], bool)), "num_harmful": 1,
                                  "num_harmless": 3, "against": "all harmless"}
    assert set(out) == {"question", "instruction", "exclamation"}  # styles of harmful rows only
    # Fewer than min_harmless rows of its own style: against every harmless row.
    assert refusal.auroc_by_style(scores, labels, styles, min_harmless=2)["question"]["against"] == "all harmless"


def test_auroc_by_style_ranks_a_harmless_only_style_against_every_harmful_row():
    """The lookalikes (harmless rows of a style of their own) against all harmful rows; the other styles' entries are
    what they are without that rule."""
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.6, 0.95, 0.7, 0.05])
    labels = np.array([1, 1, 0, 0, 0, 0, 1, 0, 0], bool)
    styles = np.array(["question", "question", "question", "instruction", "instruction", "lookalike", "instruction",
                       "lookalike", "lookalike"])
    out = refusal.auroc_by_style(scores, labels, styles, min_harmless=1)
    harmful = scores[labels]  # 0.9, 0.2, 0.95 against the lookalikes 0.6, 0.7, 0.05
    lookalikes = scores[styles == "lookalike"]
    assert out["lookalike"] == {
        "auroc": _brute_force_auroc(np.concatenate([harmful, lookalikes]), np.array([1, 1, 1, 0, 0, 0], bool)),
        "num_harmful": 3, "num_harmless": 3, "against": "all harmful"}
    assert out["question"] == {"auroc": _brute_force_auroc(np.array([0.9, 0.2, 0.8]), np.array([1, 1, 0], bool)),
                               "num_harmful": 2, "num_harmless": 1, "against": "same style"}
    assert list(out) == ["instruction", "lookalike", "question"]
    # Fewer than min_harmless of their own: the phrasings rank against every harmless row, the lookalikes included.
    few = refusal.auroc_by_style(scores, labels, styles, min_harmless=2)
    assert few["question"]["against"] == "all harmless" and few["question"]["num_harmless"] == 6
    assert few["lookalike"] == out["lookalike"]
    assert refusal.auroc_by_style(scores, np.zeros(9, bool), styles) == {}  # no harmful row: nothing to rank


def test_operating_point_by_style_matches_numpy():
    rng = np.random.default_rng(0)
    styles = np.array(["instruction"] * 20 + ["question"] * 20 + ["lookalike"] * 12)
    labels = np.array(([True] * 10 + [False] * 10) * 2 + [False] * 12)
    scores = rng.normal(size=52) + labels
    tau = 0.3
    out = refusal.operating_point(scores > tau, labels, styles)

    def expected(rows):
        flagged, y = scores[rows] > tau, labels[rows]
        return {"recall": flagged[y].mean() if y.any() else None,
                "flagged_harmless_share": flagged[~y].mean() if (~y).any() else None,
                "precision": y[flagged].mean() if flagged.any() else None,
                "num_harmful": int(y.sum()), "num_harmless": int((~y).sum()), "num_flagged": int(flagged.sum())}

    assert {k: v for k, v in out.items() if k != "by_style"} == pytest.approx(expected(np.ones(52, bool)))
    assert set(out["by_style"]) == {"instruction", "question", "lookalike"}
    for style, figures in out["by_style"].items():
        assert figures == pytest.approx(expected(styles == style)), style
    lookalike = out["by_style"]["lookalike"]
    assert lookalike["recall"] is None and lookalike["num_harmful"] == 0
    assert lookalike["flagged_harmless_share"] == np.mean(scores[-12:] > tau)
    nothing = refusal.operating_point(np.zeros(52, bool), labels, styles)
    assert nothing["precision"] is None and nothing["recall"] == 0.0 and nothing["flagged_harmless_share"] == 0.0


def test_cap_false_positives_raises_tau_to_the_cap_only():
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.4, 0.3, 0.2, 0.0, -0.1, -0.2, -0.3, -0.4])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], bool)  # 9 harmless
    tau = refusal.calibrate_threshold(scores, labels, 1.0)  # below 0.1: flags 4 of 9 harmless
    for max_fpr in (0.0, 0.1, 0.2, 0.3, 0.5, 1.0):
        capped = refusal.cap_false_positives(tau, scores, labels, max_fpr)
        flagged = int(np.sum(scores[~labels] > capped))
        assert flagged <= max_fpr * 9, (max_fpr, capped)
        # The smallest such tau: any lower harmless score as the threshold would flag one more.
        assert capped == tau or int(np.sum(scores[~labels] >= capped)) > max_fpr * 9
    assert refusal.cap_false_positives(tau, scores, labels, 1.0) == tau
    assert refusal.cap_false_positives(tau, scores, labels, 0.0) == 0.5  # nothing harmless flagged
    assert refusal.cap_false_positives(0.7, scores, labels, 0.0) == 0.7  # already under the cap: unchanged
    with pytest.raises(ValueError, match="max_fpr"):
        refusal.cap_false_positives(tau, scores, labels, 1.5)
