"""Blockwise vocabulary losses (model.loss_block) against the plain ones that hold the whole [B, T, V] logits.

Oracle: the same train-step losses and gradients to 1e-5 in float32, on a tiny model of every family (tied
embeddings and Gemma 2's soft-capped logits included), under full finetuning and LoRA, with blocks that do
not divide the sequence (the padding path), padded rows and filtered examples.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import FAMILIES, hf_config
from train_fixtures import student_loss, teacher_loss

from reft_jax.models import LoraConfig, RuntimeOptions, Transformer
from reft_jax.models.config import from_hf_dict
from reft_jax.runtime.state import trainable_filter
from reft_jax.train import losses

B, T, PROMPT = 3, 12, 4
TOL = 1e-5


def model_of(family: str, seed: int, lora: bool = False, **overrides) -> Transformer:
    cfg = from_hf_dict(hf_config(family, num_hidden_layers=2, **overrides).to_dict())
    opts = RuntimeOptions(lora=LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "down_proj")) if lora else None)
    model = Transformer(cfg, opts, rngs=nnx.Rngs(seed))
    # Random offsets on every parameter (norm scales and zero-initialised LoRA B included), so no gradient is 0.
    state = nnx.state(model)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                                for x, k in zip(leaves, keys)]))
    return model


def batch(seed: int, vocab: int) -> dict:
    """Right-padded rows of different lengths; the last row is a filtered example (weight 0)."""
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), np.int32)
    mask[1, T - 3:] = 0
    loss_mask = np.zeros((B, T), np.float32)
    loss_mask[:, PROMPT:] = mask[:, PROMPT:]
    return dict(input_ids=jnp.asarray(rng.integers(1, vocab, (B, T)) * mask, jnp.int32),
                attention_mask=jnp.asarray(mask), loss_mask=jnp.asarray(loss_mask),
                prompt_end=jnp.full((B,), PROMPT - 1, jnp.int32), example_weight=jnp.asarray([1.0, 0.5, 0.0]),
                harmful=jnp.asarray([1, 0, 1], jnp.int32))


def loss_and_grads(loss_fn, model: Transformer, *args):
    graphdef, params, frozen = nnx.split(model, trainable_filter(model), ...)

    def value(p):
        return loss_fn(nnx.merge(graphdef, p, frozen), *args)

    (loss, metrics), grads = jax.jit(jax.value_and_grad(value, has_aux=True))(params)
    return loss, metrics, grads


def both_losses_and_grads(plain_fn, blockwise_fn, model: Transformer, *args):
    """loss_and_grads of both losses, compiled as one program (one compilation per test case)."""
    graphdef, params, frozen = nnx.split(model, trainable_filter(model), ...)

    def both(p):
        def value(fn):
            return jax.value_and_grad(lambda q: fn(nnx.merge(graphdef, q, frozen), *args), has_aux=True)(p)

        return value(plain_fn), value(blockwise_fn)

    ((la, ma), ga), ((lb, mb), gb) = jax.jit(both)(params)
    return (la, ma, ga), (lb, mb, gb)


def assert_same(plain, blockwise):
    (loss_a, metrics_a, grads_a), (loss_b, metrics_b, grads_b) = plain, blockwise
    np.testing.assert_allclose(loss_b, loss_a, rtol=TOL, atol=TOL)
    for key in metrics_a:
        np.testing.assert_allclose(metrics_b[key], metrics_a[key], rtol=TOL, atol=TOL, err_msg=key)
    flat_a, flat_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(flat_a) == len(flat_b) > 0
    scale = max(float(jnp.abs(g).max()) for g in flat_a)
    assert scale > 0
    for a, b in zip(flat_a, flat_b):
        np.testing.assert_allclose(b, a, rtol=TOL, atol=TOL * scale)


@pytest.mark.parametrize("family,lora", [(f, False) for f in sorted(FAMILIES)] + [("llama_tied", False),
                                                                                 ("llama", True), ("gemma2", True),
                                                                                 ("gemma3", True)])
def test_student_step_losses_and_gradients_equal_the_plain_ones(family, lora):
    overrides = dict(tie_word_embeddings=True) if family == "llama_tied" else {}
    family = "llama" if family == "llama_tied" else family
    student, teacher = model_of(family, 0, lora, **overrides), model_of(family, 1, **overrides)
    if family in ("gemma2", "gemma3"):
        assert student.cfg.final_softcap, "the soft-capped logits path must be exercised"
    vocab = student.cfg.vocab_size
    user, align = batch(0, vocab), batch(1, vocab)
    # User CE, alignment CE (the joint baselines' alpha) and the KL at a temperature, in one loss; the block of
    # 5 positions does not divide the 12.
    kwargs = dict(beta=0.5, alpha=1.0, temperature=2.0)
    assert_same(*both_losses_and_grads(student_loss(**kwargs), student_loss(block=5, **kwargs), student, teacher,
                                       user, align))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3"])
def test_teacher_step_losses_and_gradients_equal_the_plain_ones(family):
    model = model_of(family, 2)
    align = batch(2, model.cfg.vocab_size)
    r = jax.random.normal(jax.random.key(3), (model.cfg.hidden_size,))
    for block in (4, 64):  # blocks dividing the sequence, and one block longer than the sequence
        assert_same(*both_losses_and_grads(teacher_loss(), teacher_loss(block=block), model, r, align))


def test_blockwise_token_mean_matches_numpy_and_keeps_float64(x64):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, 7))
    weights = rng.random((2, 7)) * (rng.random((2, 7)) > 0.3)
    mean, total = losses.blockwise_token_mean(lambda v: v[..., 0], (jnp.asarray(values)[..., None],),
                                              jnp.asarray(weights), block=3)
    assert mean.dtype == jnp.float64
    np.testing.assert_allclose(mean, (values * weights).sum() / weights.sum(), rtol=1e-12)
    np.testing.assert_allclose(total, weights.sum(), rtol=1e-12)


def test_all_masked_gives_zero_loss_and_zero_gradient():
    model = model_of("llama", 0)
    align = dict(batch(0, model.cfg.vocab_size), loss_mask=jnp.zeros((B, T)))
    loss, metrics, grads = loss_and_grads(student_loss(block=5), model, model, align, align)
    assert float(loss) == 0.0 and float(metrics["tokens"]) == 0.0
    assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads))


def test_the_kl_on_every_token_covers_the_prompts_too():
    """distill.positions = "all": the KL is the weighted mean over every prediction whose target is a real token,
    prompt or response (NumPy from both models' logits), plain and blockwise alike; "response" only its part."""
    student, teacher = model_of("llama", 0), model_of("llama", 1)
    user, align = batch(0, student.cfg.vocab_size), batch(1, student.cfg.vocab_size)
    s = np.asarray(student(align["input_ids"], align["attention_mask"]).logits, np.float64)[:, :-1]
    t = np.asarray(teacher(align["input_ids"], align["attention_mask"]).logits, np.float64)[:, :-1]
    p_t = np.exp(t - t.max(-1, keepdims=True))
    p_t /= p_t.sum(-1, keepdims=True)
    log_p_s = s - s.max(-1, keepdims=True) - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True))
    kl = (p_t * (np.log(p_t) - log_p_s)).sum(-1)  # [B, T - 1]
    row = np.asarray(align["example_weight"])[:, None]
    for positions, targets in (("all", align["attention_mask"]), ("response", align["loss_mask"])):
        w = np.asarray(targets, np.float64)[:, 1:] * row
        expected = (kl * w).sum() / w.sum()
        plain, blockwise = both_losses_and_grads(student_loss(kl_positions=positions),
                                                 student_loss(kl_positions=positions, block=5),
                                                 student, teacher, user, align)
        assert_same(plain, blockwise)
        np.testing.assert_allclose(plain[1]["kl"], expected, rtol=1e-4)
        np.testing.assert_allclose(plain[1]["tokens"] - float(np.asarray(user["loss_mask"])[:, 1:].sum(-1)
                                                              @ np.asarray(user["example_weight"])), w.sum())
    assert (np.asarray(align["attention_mask"]) > np.asarray(align["loss_mask"])).any()  # the prompts differ
