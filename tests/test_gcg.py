"""The GCG attack's core (reft_jax.evaluation.gcg) on a tiny transformers Llama (float32): the one-hot token
gradient and the cached candidate losses against PyTorch, GCG's candidate sampling, and a short attack that
lowers the target loss."""

import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import VOCAB, make_hf_model
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from reft_jax.errors import ConfigError
from reft_jax.evaluation import gcg
from reft_jax.models import from_pretrained
from reft_jax.runtime.state import FrozenModel

SUFFIX = np.array([5, 17, 42, 8, 30], np.int32)
CANDIDATES = 16  # every test evaluates this many candidates, and one layout shape: one compilation for all


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level BPE tokenizer with two merges (" !" and "ab"), a non-ASCII and a non-printable token,
    an added special token that is none of the named ones, and fewer tokens (76) than the model's vocabulary."""
    chars = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + " !,.?:") + ["é", "\n"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *chars, " !", "ab"])}
    bpe = Tokenizer(models.BPE(vocab, [(" ", "!"), ("a", "b")]))
    bpe.decoder = decoders.Fuse()
    bpe.add_special_tokens(["<sep>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the PyTorch Llama, the same weights as a FrozenModel, the tokenizer). Weights drawn wide (std 0.5) so
    that the suffix moves the target loss a lot; two layers to compile fast."""
    folder = tmp_path_factory.mktemp("llama")
    torch_model = make_hf_model("llama", folder, initializer_range=0.5, num_hidden_layers=2)
    return torch_model, FrozenModel.of(from_pretrained(folder)), tiny_tokenizer()


def layout() -> gcg.Layout:
    """4 tokens before the suffix left-padded to 6, 2 after it, 3 target tokens right-padded to 5."""
    prompt = gcg.PromptIds(before=[1, 11, 23, 9], after=[60, 61], target=[33, 44, 55])
    return gcg.Layout.of(prompt, before_length=6, target_length=5)


def full_sequence(lay: gcg.Layout, suffix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, positions) of [before | suffix | after | target without its last token]."""
    ids = np.concatenate([lay.before, suffix, lay.after, lay.target[:-1]])
    mask = np.concatenate([lay.before_mask, np.ones(len(ids) - len(lay.before), np.int32)])
    positions = np.maximum(np.cumsum(mask) - 1, 0)
    return ids, mask, positions


def torch_target_ce(logits, lay: gcg.Layout):
    """The weighted mean CE of the last T positions' logits [..., T, V] against the target."""
    t = len(lay.target)
    last = logits[..., -t:, :]
    target = torch.tensor(np.asarray(lay.target)).long().expand(last.shape[:-1])
    nll = torch.nn.functional.cross_entropy(last.reshape(-1, last.shape[-1]), target.reshape(-1),
                                            reduction="none").reshape(last.shape[:-1])
    w = torch.tensor(np.asarray(lay.target_weight), dtype=logits.dtype)
    return (nll * w).sum(-1) / w.sum()


def torch_one_hot_loss(model, lay, one_hot: torch.Tensor):
    """The target CE with the suffix as one_hot @ embedding table, on the unpadded sequence (our side pads)."""
    ids, mask, _ = full_sequence(lay, np.zeros(one_hot.shape[0], np.int64))
    real = torch.tensor(ids[mask == 1]).long()
    n = int(np.sum(lay.before_mask))  # real tokens before the suffix
    table = model.model.embed_tokens.weight
    embeds = torch.cat([table[real[:n]], one_hot @ table, table[real[n + one_hot.shape[0]:]]])
    return torch_target_ce(model(inputs_embeds=embeds[None]).logits[0], lay)


def test_inputs_embeds_match_transformers_with_gemmas_scale(tmp_path):
    """The model's inputs_embeds path on Gemma: rows of the table go in, and get the sqrt(D) scale that looked-up
    ones get (transformers 5 scales in its embedding module, so it is given the module's scaled output)."""
    torch_model = make_hf_model("gemma", tmp_path, num_hidden_layers=1)
    model = from_pretrained(tmp_path)
    ids = np.random.default_rng(0).integers(1, VOCAB, (2, 7))
    with torch.no_grad():
        ref = torch_model(inputs_embeds=torch_model.get_input_embeddings()(torch.tensor(ids))).logits.numpy()
    ours = model(None, inputs_embeds=jnp.take(model.embed_tokens[...], ids, axis=0)).logits
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(model(jnp.asarray(ids)).logits), atol=1e-6)


def test_token_gradients_match_pytorch_and_finite_differences(tiny):
    torch_model, frozen, _ = tiny
    lay = layout()
    loss, grad = gcg.token_gradients(frozen, lay, jnp.asarray(SUFFIX))
    assert grad.shape == (len(SUFFIX), VOCAB) and grad.dtype == jnp.float32

    one_hot = torch.nn.functional.one_hot(torch.tensor(SUFFIX).long(), VOCAB).float().requires_grad_()
    ref_loss = torch_one_hot_loss(torch_model, lay, one_hot)
    (ref_grad,) = torch.autograd.grad(ref_loss, one_hot)
    assert float(loss) == pytest.approx(ref_loss.item(), rel=1e-5)
    # float32 through the model in both frameworks: elements near 0.1 differ by up to ~1.5e-5 (transformers 5.24)
    np.testing.assert_allclose(np.asarray(grad), ref_grad.numpy(), rtol=1e-5, atol=5e-5)

    # A central difference of our own loss along a random direction in one-hot space: float32 rounding rules out
    # small steps and the loss is strongly curved there, so the fourth-order stencil.
    direction = np.random.default_rng(0).normal(size=grad.shape).astype(np.float32)
    direction /= np.linalg.norm(direction)
    base, h = jax.nn.one_hot(SUFFIX, VOCAB), 1e-2

    def f(step):
        return float(gcg.one_hot_loss(frozen, lay, base + step * h * direction))

    diff = (8 * (f(1) - f(-1)) - (f(2) - f(-2))) / (12 * h)
    assert diff == pytest.approx(float(jnp.sum(grad * direction)), rel=2e-3)


def test_candidate_losses_match_pytorch_and_the_plain_forward(tiny):
    torch_model, frozen, _ = tiny
    lay = layout()
    candidates = np.random.default_rng(0).integers(0, VOCAB, (CANDIDATES, len(SUFFIX))).astype(np.int32)
    candidates[0] = SUFFIX
    losses, exact = gcg.candidate_losses(frozen, lay, jnp.asarray(candidates))
    plain, plain_exact = gcg.sequence_losses(frozen, lay, jnp.asarray(candidates))
    assert losses.shape == (CANDIDATES,) and losses.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(losses), np.asarray(plain), rtol=1e-5)
    np.testing.assert_array_equal(exact, plain_exact)

    rows = [full_sequence(lay, c) for c in candidates]
    with torch.no_grad():
        logits = torch_model(input_ids=torch.tensor(np.stack([r[0] for r in rows])).long(),
                             attention_mask=torch.tensor(np.stack([r[1] for r in rows])).long(),
                             position_ids=torch.tensor(np.stack([r[2] for r in rows])).long()).logits
    np.testing.assert_allclose(np.asarray(losses), torch_target_ce(logits, lay).numpy(), rtol=1e-5)
    # The suffix's loss from the gradient call agrees with its candidate loss.
    loss, _ = gcg.token_gradients(frozen, lay, jnp.asarray(SUFFIX))
    assert float(loss) == pytest.approx(float(losses[0]), rel=1e-5)


@pytest.mark.parametrize("groups", [3])  # swap positions 0, 1-2, 3-4 of 5
def test_candidate_losses_sharing_the_suffix_prefix_match_the_plain_forward(tiny, groups):
    _, frozen, _ = tiny
    lay = layout()
    grad = jax.random.normal(jax.random.key(0), (len(SUFFIX), VOCAB))
    candidates = gcg.sample_candidates(jax.random.key(1), jnp.asarray(SUFFIX), grad, 16, CANDIDATES,
                                       jnp.ones(VOCAB, bool))
    losses, exact = gcg.candidate_losses(frozen, lay, candidates, jnp.asarray(SUFFIX), groups=groups)
    plain, plain_exact = gcg.sequence_losses(frozen, lay, candidates)
    np.testing.assert_allclose(np.asarray(losses), np.asarray(plain), rtol=1e-5)
    np.testing.assert_array_equal(exact, plain_exact)
    # A row that differs from the suffix before its swap position breaks the sharing: NaN, not a wrong loss.
    broken = np.asarray(candidates).copy()
    broken[-1, 0] = (broken[-1, 0] + 1) % VOCAB
    losses = gcg.candidate_losses(frozen, lay, jnp.asarray(broken), jnp.asarray(SUFFIX), groups=groups)[0]
    assert np.isnan(losses[-1]) and np.isfinite(losses[:-1]).all()


def test_exact_when_the_target_is_the_greedy_answer(tiny):
    torch_model, frozen, _ = tiny
    prompt_ids = np.concatenate([[1, 11, 23, 9], SUFFIX, [60, 61]])
    with torch.no_grad():
        answer = torch_model.generate(torch.tensor(prompt_ids)[None].long(), max_new_tokens=3, do_sample=False,
                                      pad_token_id=0)[0, len(prompt_ids):].tolist()
    greedy = gcg.Layout.of(gcg.PromptIds([1, 11, 23, 9], [60, 61], answer), before_length=6, target_length=5)
    other = gcg.Layout.of(gcg.PromptIds([1, 11, 23, 9], [60, 61], [(a + 1) % VOCAB for a in answer]), 6, 5)
    candidates = jnp.asarray(np.broadcast_to(SUFFIX, (CANDIDATES, len(SUFFIX))))
    assert bool(gcg.candidate_losses(frozen, greedy, candidates)[1][0])
    assert not bool(gcg.candidate_losses(frozen, other, candidates)[1][0])


def test_sample_candidates_swap_one_position_for_an_allowed_top_k_token():
    rng = np.random.default_rng(0)
    s, v, top_k, c = 5, VOCAB, 8, 12
    grad = rng.normal(size=(s, v)).astype(np.float32)
    allowed = rng.random(v) < 0.6
    cands = np.asarray(gcg.sample_candidates(jax.random.key(1), jnp.asarray(SUFFIX), jnp.asarray(grad), top_k, c,
                                             jnp.asarray(allowed)))
    assert cands.shape == (c, s)
    for i, row in enumerate(cands):
        changed = np.flatnonzero(row != SUFFIX)
        assert len(changed) <= 1
        pos = i * s // c  # positions spread evenly over the suffix
        assert np.array_equal(np.delete(row, pos), np.delete(SUFFIX, pos))
        top = [t for t in np.argsort(grad[pos], kind="stable") if allowed[t]][:top_k]  # most negative first
        assert row[pos] in top and allowed[row[pos]]
    assert len({tuple(r) for r in cands}) > c // 2  # the draws differ

    # Fewer allowed tokens than top_k: only those are drawn.
    few = np.zeros(v, bool)
    few[[3, 50, 70]] = True
    cands = np.asarray(gcg.sample_candidates(jax.random.key(2), jnp.asarray(SUFFIX), jnp.asarray(grad), top_k, c,
                                             jnp.asarray(few)))
    new = cands[cands != SUFFIX[None]]
    assert set(new.tolist()) <= {3, 50, 70}


def test_tokenizer_helpers():
    tok = tiny_tokenizer()
    allowed = gcg.allowed_tokens(tok, VOCAB)
    ids = tok.get_vocab()
    assert allowed.shape == (VOCAB,) and not allowed[len(tok):].any()
    assert not allowed[[ids["<pad>"], ids["<s>"], ids["</s>"], ids["<sep>"], ids["é"], ids["\n"]]].any()
    assert allowed[[ids["a"], ids[" "], ids[" !"], ids["ab"]]].all()

    prompt = gcg.split_prompt(tok, "User: write it{SLOT}. Bot:", "{SLOT}", "Sure")
    assert prompt.before == [ids["<s>"], *tok("User: write it", add_special_tokens=False)["input_ids"]]
    assert prompt.after == tok(". Bot:", add_special_tokens=False)["input_ids"]
    assert prompt.target == [ids[c] for c in "Sure"]
    with pytest.raises(ValueError, match="exactly once"):
        gcg.split_prompt(tok, "no slot", "{SLOT}", "Sure")

    # "a" then "b" decode to "ab", which encodes back as one token: not the suffix that was scored.
    suffixes = np.array([[ids[" !"], ids["a"], ids["x"]], [ids[" !"], ids["a"], ids["b"]]])
    assert gcg.retokenizes(tok, suffixes).tolist() == [True, False]
    assert gcg.initial_suffix(tok, gcg.GCGConfig(suffix_length=3)).tolist() == [ids[" !"]] * 3
    with pytest.raises(ConfigError, match="gcg.init_token"):
        gcg.initial_suffix(tok, gcg.GCGConfig(init_token="ab!"))


def test_run_gcg_lowers_the_target_loss(tiny):
    _, frozen, tok = tiny
    lay = layout()
    config = gcg.GCGConfig(steps=12, suffix_length=len(SUFFIX), top_k=16, candidates=CANDIDATES, early_stop=False,
                           prefix_groups=3)  # the shapes the tests above compiled
    result = gcg.run_gcg(frozen, lay, config, tokenizer=tok, allowed=gcg.allowed_tokens(tok, VOCAB),
                         progress=False)
    assert result.steps == len(result.losses) == len(result.step_losses) == 12 and not result.early_stopped
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:]))
    assert result.loss == result.losses[-1] < result.initial_loss - 1.0
    assert len(result.suffix) == len(SUFFIX) and result.suffix_text == tok.decode(result.suffix)
    assert gcg.retokenizes(tok, np.array([result.suffix]))[0]
    assert gcg.allowed_tokens(tok, VOCAB)[result.suffix].all()
    # The reported loss is the suffix's own.
    own = gcg.candidate_losses(frozen, lay, jnp.asarray([result.suffix] * CANDIDATES, jnp.int32))[0][0]
    assert float(own) == pytest.approx(result.loss, rel=1e-5)
    assert result.step_s > 0


def test_run_gcg_stops_once_greedy_decoding_gives_the_target(tiny):
    torch_model, frozen, tok = tiny
    config = gcg.GCGConfig(steps=5, suffix_length=len(SUFFIX), top_k=16, candidates=CANDIDATES, prefix_groups=3)
    prompt_ids = [1, 11, 23, 9, *gcg.initial_suffix(tok, config), 60, 61]
    with torch.no_grad():
        greedy = int(torch_model(torch.tensor([prompt_ids])).logits[0, -1].argmax())
    # The target is the greedy next token (padded to the tests' shapes): the best candidate keeps it.
    lay = gcg.Layout.of(gcg.PromptIds([1, 11, 23, 9], [60, 61], [greedy]), before_length=6, target_length=5)
    result = gcg.run_gcg(frozen, lay, config, tokenizer=tok, allowed=gcg.allowed_tokens(tok, VOCAB), progress=False)
    assert result.early_stopped and result.steps == 1


@pytest.mark.parametrize("field,value", [("steps", 0), ("suffix_length", -1), ("top_k", 0), ("candidates", 2.5),
                                         ("init_token", "")])
def test_bad_config_fields_raise(field, value):
    with pytest.raises(ConfigError, match=f"gcg.{field}"):
        gcg.GCGConfig(**{field: value})
