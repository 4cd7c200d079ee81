"""Tests of reft_jax.train.losses against independent NumPy references and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reft_jax.train import losses

B, T, V, D = 3, 7, 11, 16


def _batch(seed, dtype=np.float32):
    """Random logits, ids, a prompt-then-response loss mask and row weights (one row dropped)."""
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(3.0 * rng.normal(size=(B, T, V)), dtype)
    ids = rng.integers(0, V, size=(B, T))
    starts = rng.integers(1, T - 1, size=B)
    mask = (np.arange(T)[None] >= starts[:, None]).astype(np.float32)
    mask[0, -1] = 0.0  # a padded tail
    example_weight = np.array([1.0, 0.0, 0.5], np.float32)
    return logits, ids, mask, example_weight


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_cross_entropy(logits, ids, mask, example_weight):
    """Explicit loop over (row, position): position t predicts token t + 1."""
    logp = _np_log_softmax(np.asarray(jnp.asarray(logits, jnp.float32)))
    num = den = 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1] - 1):
            w = mask[b, t + 1] * example_weight[b]
            num += -w * logp[b, t, ids[b, t + 1]]
            den += w
    return (num / den if den > 0 else 0.0), den


def _np_kl(student, teacher, mask, temperature, example_weight):
    ls = _np_log_softmax(np.asarray(jnp.asarray(student, jnp.float32), np.float64) / temperature)
    lt = _np_log_softmax(np.asarray(jnp.asarray(teacher, jnp.float32), np.float64) / temperature)
    num = den = 0.0
    for b in range(ls.shape[0]):
        for t in range(ls.shape[1] - 1):
            w = mask[b, t + 1] * example_weight[b]
            pt, support = np.exp(lt[b, t]), np.isfinite(lt[b, t])
            kl = np.sum(pt[support] * (lt[b, t, support] - ls[b, t, support]))
            num += w * kl
            den += w
    return temperature**2 * (num / den if den > 0 else 0.0), den


def _check_directional_derivatives(f, x, seed, n_dirs=3, h=1e-6, rtol=1e-6):
    """Compares jax.grad with central differences along random directions (float64)."""
    assert x.dtype == jnp.float64
    f = jax.jit(f)
    grad = jax.grad(f)(x)
    rng = np.random.default_rng(seed)
    for _ in range(n_dirs):
        v = jnp.asarray(rng.normal(size=x.shape))
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=rtol, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Shared token convention


def test_next_token_weights_convention():
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], np.float32)
    w = losses.next_token_weights(mask, np.array([1.0, 0.5]))
    np.testing.assert_array_equal(np.asarray(w), [[0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(np.asarray(losses.next_token_weights(mask)), mask[:, 1:])


def test_next_token_weights_per_token_example_weights():
    mask = np.array([[0, 1, 1, 0, 1, 1]], np.float32)
    token_w = np.array([[1, 2, 3, 4, 5, 6]], np.float32)  # the weight of each TOKEN's example
    w = losses.next_token_weights(mask, token_w)
    np.testing.assert_array_equal(np.asarray(w), [[2, 3, 0, 5, 6]])  # weight of the target token
    with pytest.raises(ValueError, match="example_weight shape"):
        losses.next_token_weights(mask, np.ones((1, 3)))  # per-segment [B, S] weights


def test_segment_token_weights():
    segment_weight = np.array([[1.0, 0.0, 0.5], [0.25, 0.0, 0.0]], np.float32)
    segment_ids = np.array([[1, 1, 2, 2, 3, 0], [1, 1, 1, 0, 0, 0]])
    got = losses.segment_token_weights(segment_weight, segment_ids)
    np.testing.assert_array_equal(np.asarray(got), [[1, 1, 0, 0, 0.5, 0], [0.25] * 3 + [0] * 3])


# ------------------------------------------------------------------------------------------------
# cross_entropy


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cross_entropy_matches_numpy(dtype):
    logits, ids, mask, ew = _batch(0, dtype)
    loss, n = jax.jit(losses.cross_entropy)(logits, ids, mask, ew)
    ref, ref_n = _np_cross_entropy(logits, ids, mask, ew)
    assert loss.dtype == jnp.float32 and n.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    np.testing.assert_allclose(float(n), ref_n, rtol=1e-6)
    # Without example weights every row counts.
    loss, n = losses.cross_entropy(logits, ids, mask)
    ref, ref_n = _np_cross_entropy(logits, ids, mask, np.ones(B))
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert float(n) == ref_n == mask[:, 1:].sum()


def test_cross_entropy_all_masked_is_zero_with_zero_grad():
    logits, ids, mask, _ = _batch(1)
    for m, w in ((np.zeros_like(mask), None), (mask, np.zeros(B, np.float32))):
        loss, n = losses.cross_entropy(logits, ids, m, w)
        grad = jax.grad(lambda x: losses.cross_entropy(x, ids, m, w)[0])(logits)
        assert float(loss) == 0.0 and float(n) == 0.0
        np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_cross_entropy_masked_positions_and_rows_get_zero_grad():
    logits, ids, mask, ew = _batch(2)
    grad = np.asarray(jax.grad(lambda x: losses.cross_entropy(x, ids, mask, ew)[0])(logits))
    counted = np.zeros((B, T), bool)
    counted[:, :-1] = (mask[:, 1:] * ew[:, None]) > 0
    assert np.all(grad[~counted] == 0.0)
    assert np.all(np.abs(grad[counted]).sum(-1) > 0)
    assert np.all(grad[1] == 0.0) and np.all(grad[:, -1] == 0.0)


def test_cross_entropy_ignores_ids_at_uncounted_positions():
    logits, ids, mask, ew = _batch(3)
    bad = ids.copy()
    weights = np.asarray(losses.next_token_weights(mask, ew))
    uncounted = np.concatenate([np.ones((B, 1), bool), weights == 0], axis=1)
    bad[uncounted] = np.where(np.arange(uncounted.sum()) % 2 == 0, -100, V + 5)
    loss = losses.cross_entropy(logits, ids, mask, ew)[0]
    loss_bad = losses.cross_entropy(logits, bad, mask, ew)[0]
    assert np.isfinite(float(loss_bad)) and float(loss_bad) == float(loss)
    grad = jax.grad(lambda x: losses.cross_entropy(x, ids, mask, ew)[0])(logits)
    grad_bad = jax.grad(lambda x: losses.cross_entropy(x, bad, mask, ew)[0])(logits)
    np.testing.assert_array_equal(np.asarray(grad_bad), np.asarray(grad))


def test_cross_entropy_packed_row_equals_separate_rows():
    """Packing two examples in one row changes nothing: the boundary prediction has mask 0."""
    rng = np.random.default_rng(5)
    la, lb = 5, 4  # lengths of the two examples (2 prompt + 3 response, 1 prompt + 3 response)
    logits = rng.normal(size=(1, la + lb + 2, V)).astype(np.float32)
    ids = rng.integers(0, V, size=(1, la + lb + 2))
    mask = np.array([[0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0]], np.float32)
    segment_ids = np.array([[1] * la + [2] * lb + [0, 0]])
    token_w = losses.segment_token_weights(np.array([[1.0, 0.5]], np.float32), segment_ids)
    packed, n = losses.cross_entropy(logits, ids, mask, token_w)

    sep_logits = np.zeros((2, la, V), np.float32)
    sep_logits[0], sep_logits[1, :lb] = logits[0, :la], logits[0, la:la + lb]
    sep_ids = np.zeros((2, la), np.int64)
    sep_ids[0], sep_ids[1, :lb] = ids[0, :la], ids[0, la:la + lb]
    sep_mask = np.zeros((2, la), np.float32)
    sep_mask[0], sep_mask[1, :lb] = mask[0, :la], mask[0, la:la + lb]
    separate, n_sep = losses.cross_entropy(sep_logits, sep_ids, sep_mask, np.array([1.0, 0.5]))
    np.testing.assert_allclose(float(packed), float(separate), rtol=1e-6)
    assert float(n) == float(n_sep) == 3 + 0.5 * 3


def test_cross_entropy_grad_matches_finite_differences(x64):
    logits, ids, mask, ew = _batch(4)
    logits = jnp.asarray(logits, jnp.float64)
    _check_directional_derivatives(lambda x: losses.cross_entropy(x, ids, mask, ew)[0], logits, 0)


# ------------------------------------------------------------------------------------------------
# distillation_kl


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("s_dtype,t_dtype", [(jnp.float32, jnp.float32),
                                             (jnp.bfloat16, jnp.bfloat16),
                                             (jnp.bfloat16, jnp.float32)])
def test_distillation_kl_matches_numpy(temperature, s_dtype, t_dtype):
    student, _, mask, ew = _batch(5, s_dtype)
    teacher = _batch(6, t_dtype)[0]
    loss, n = jax.jit(losses.distillation_kl, static_argnums=3)(student, teacher, mask,
                                                               temperature, ew)
    ref, ref_n = _np_kl(student, teacher, mask, temperature, ew)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert float(n) == pytest.approx(ref_n)


def test_distillation_kl_temperature_scaling():
    student, _, mask, ew = _batch(7)
    teacher = _batch(8)[0]
    for temp in (0.5, 3.0):
        scaled = losses.distillation_kl(student / temp, teacher / temp, mask, 1.0, ew)[0]
        loss = losses.distillation_kl(student, teacher, mask, temp, ew)[0]
        np.testing.assert_allclose(float(loss), temp**2 * float(scaled), rtol=1e-5)
    # A higher temperature flattens both distributions: T^2 KL changes with T.
    k1 = float(losses.distillation_kl(student, teacher, mask, 1.0, ew)[0])
    k4 = float(losses.distillation_kl(student, teacher, mask, 4.0, ew)[0])
    assert abs(k1 - k4) > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_kl_zero_with_zero_grad_when_student_is_teacher(temperature):
    logits, _, mask, ew = _batch(9)
    loss = losses.distillation_kl(logits, logits, mask, temperature, ew)[0]
    grad = jax.grad(lambda s: losses.distillation_kl(s, logits, mask, temperature, ew)[0])(logits)
    assert abs(float(loss)) < 1e-7
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-7)


def test_distillation_kl_is_nonnegative():
    rng = np.random.default_rng(10)
    mask = np.ones((B, T), np.float32)
    for seed in range(20):
        student = _batch(100 + seed)[0]
        # Far apart and nearly equal pairs.
        scale = 1e-3 if seed % 2 else 1.0
        teacher = student + scale * jnp.asarray(rng.normal(size=(B, T, V)), jnp.float32)
        loss = float(losses.distillation_kl(student, teacher, mask)[0])
        if scale == 1.0:
            assert loss > 1e-3
        else:  # tiny true KL: only float rounding may go below 0
            assert -1e-9 <= loss < 1e-5


def test_distillation_kl_gradients_flow_to_student_only():
    student, _, mask, ew = _batch(11)
    teacher = _batch(12)[0]
    g_s, g_t = jax.grad(lambda s, t: losses.distillation_kl(s, t, mask, 2.0, ew)[0],
                        argnums=(0, 1))(student, teacher)
    g_s = np.asarray(g_s)
    np.testing.assert_array_equal(np.asarray(g_t), 0.0)  # teacher under stop_gradient
    counted = np.zeros((B, T), bool)
    counted[:, :-1] = (mask[:, 1:] * ew[:, None]) > 0
    assert np.all(g_s[~counted] == 0.0)
    assert np.all(np.abs(g_s[counted]).sum(-1) > 0)


def test_distillation_kl_teacher_with_zero_probabilities():
    student, _, mask, ew = _batch(13)
    teacher = np.array(_batch(14)[0])
    teacher[..., :3] = -np.inf  # p_teacher = 0 on three tokens: those terms are 0, not NaN
    loss = losses.distillation_kl(student, teacher, mask, 1.0, ew)[0]
    grad = jax.grad(lambda s: losses.distillation_kl(s, teacher, mask, 1.0, ew)[0])(student)
    ref, _ = _np_kl(student, teacher, mask, 1.0, ew)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_distillation_kl_all_masked_is_zero_with_zero_grad():
    student, _, mask, _ = _batch(15)
    teacher = _batch(16)[0]
    zero = np.zeros_like(mask)
    loss, n = losses.distillation_kl(student, teacher, zero)
    grad = jax.grad(lambda s: losses.distillation_kl(s, teacher, zero)[0])(student)
    assert float(loss) == 0.0 and float(n) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_distillation_kl_grad_matches_finite_differences(x64, temperature):
    student, _, mask, ew = _batch(17)
    teacher = _batch(18)[0]
    student = jnp.asarray(student, jnp.float64)
    teacher = jnp.asarray(teacher, jnp.float64)
    _check_directional_derivatives(
        lambda s: losses.distillation_kl(s, teacher, mask, temperature, ew)[0], student, 1)


# ------------------------------------------------------------------------------------------------
# refusal_regularizer


def _np_regularizer(features, r, is_harmful, weight, kind):
    f = np.asarray(jnp.asarray(features, jnp.float32), np.float64)
    r = np.asarray(r, np.float64)
    cos = f @ r / (np.linalg.norm(f, axis=-1) * np.linalg.norm(r))
    y = np.where(is_harmful, 1.0, -1.0)
    per_row = (cos - y) ** 2 if kind == "squared" else 1.0 - y * cos
    return np.sum(weight * per_row) / np.sum(weight)


def _features(seed, n=6):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, D)).astype(np.float32) * 5.0
    r = rng.normal(size=D).astype(np.float32)
    is_harmful = np.arange(n) % 2 == 0
    weight = np.ones(n, np.float32)
    weight[-1] = 0.0  # a padding row
    weight[1] = 2.0
    return features, r, is_harmful, weight


@pytest.mark.parametrize("kind", ["squared", "linear"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_refusal_regularizer_matches_numpy(kind, dtype):
    features, r, is_harmful, weight = _features(20)
    features = jnp.asarray(features, dtype)
    loss = jax.jit(losses.refusal_regularizer, static_argnames="kind")(
        features, r, is_harmful, weight, kind=kind)
    assert loss.dtype == jnp.float32
    ref = _np_regularizer(features, r, is_harmful, weight, kind)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-7)
    # Without weights every row counts.
    loss = losses.refusal_regularizer(features, r, is_harmful.astype(np.int32), kind=kind)
    ref = _np_regularizer(features, r, is_harmful, np.ones(len(is_harmful)), kind)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["squared", "linear"])
def test_refusal_regularizer_is_zero_at_targets(kind):
    _, r, is_harmful, weight = _features(21)
    scale = np.linspace(0.5, 20.0, len(is_harmful))[:, None]
    at_target = np.where(is_harmful[:, None], 1.0, -1.0) * scale * r[None]
    def f(x):
        return losses.refusal_regularizer(x, r, is_harmful, weight, kind=kind)

    assert abs(float(f(at_target))) < 1e-6
    np.testing.assert_allclose(np.asarray(jax.grad(f)(at_target)), 0.0, atol=1e-6)
    # Anything off target costs more.
    rng = np.random.default_rng(0)
    for _ in range(5):
        moved = at_target + rng.normal(size=at_target.shape).astype(np.float32)
        assert float(f(moved)) > float(f(at_target)) + 1e-4


@pytest.mark.parametrize("kind", ["squared", "linear"])
def test_refusal_regularizer_stop_gradient_and_padding_rows(kind):
    features, r, is_harmful, weight = _features(22)
    g_f, g_r = jax.grad(
        lambda x, rr: losses.refusal_regularizer(x, rr, is_harmful, weight, kind=kind),
        argnums=(0, 1))(features, r)
    np.testing.assert_array_equal(np.asarray(g_r), 0.0)
    g_f = np.asarray(g_f)
    assert np.all(g_f[weight == 0] == 0.0)
    assert np.all(np.abs(g_f[weight > 0]).sum(-1) > 0)


def test_refusal_regularizer_unknown_labels_and_packed_segments():
    features, r, is_harmful, weight = _features(25, n=6)
    labels = is_harmful.astype(np.int32)
    labels[2] = -1  # unknown / empty slot: no weight even though weight[2] = 1
    def f(x):
        return losses.refusal_regularizer(x, r, labels, weight)

    keep = labels >= 0
    ref = _np_regularizer(features[keep], r, is_harmful[keep], weight[keep], "squared")
    np.testing.assert_allclose(float(f(features)), ref, rtol=1e-5)
    assert np.all(np.asarray(jax.grad(f)(features))[2] == 0.0)
    # [B, S, D] segments give the same as the flattened rows.
    packed = losses.refusal_regularizer(features.reshape(2, 3, D), r, labels.reshape(2, 3),
                                        weight.reshape(2, 3))
    np.testing.assert_allclose(float(packed), float(f(features)), rtol=1e-6)


def test_refusal_regularizer_all_padding_and_bad_kind():
    features, r, is_harmful, _ = _features(23)
    zero = np.zeros(len(is_harmful), np.float32)
    loss = losses.refusal_regularizer(features, r, is_harmful, zero)
    grad = jax.grad(lambda x: losses.refusal_regularizer(x, r, is_harmful, zero))(features)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    with pytest.raises(ValueError, match="kind"):
        losses.refusal_regularizer(features, r, is_harmful, kind="cubic")


@pytest.mark.parametrize("kind", ["squared", "linear"])
def test_refusal_regularizer_grad_matches_finite_differences(x64, kind):
    features, r, is_harmful, weight = _features(24)
    features = jnp.asarray(features, jnp.float64)
    r = jnp.asarray(r, jnp.float64)
    _check_directional_derivatives(
        lambda x: losses.refusal_regularizer(x, r, is_harmful, weight, kind=kind), features, 2)
