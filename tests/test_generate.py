"""KV-cache generation against a step-by-step uncached reference and transformers' own `generate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_fixtures import VOCAB, make_hf_model

from reft_jax.evaluation.generate import (
    GenerationConfig,
    as_frozen,
    bucket_length,
    generate,
    generate_tokens,
    left_padded_positions,
    top_p_filter,
)
from reft_jax.models import from_pretrained

PROMPT_LENGTHS = (3, 9, 6)  # left padding of different widths
P, N = 9, 8  # prompt bucket and new tokens: P + N passes every sliding window of the fixtures (4 and 5)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (folder, transformers model); built once for the module."""
    out = {}
    for family in ("llama", "qwen2", "gemma2", "gemma3"):
        folder = tmp_path_factory.mktemp(family)
        out[family] = folder, make_hf_model(family, folder)
    return out


def left_padded(lengths=PROMPT_LENGTHS, length=P, seed=1):
    rng = np.random.default_rng(seed)
    ids, mask = np.zeros((len(lengths), length), np.int32), np.zeros((len(lengths), length), np.int32)
    for r, n in enumerate(lengths):
        ids[r, length - n:] = rng.integers(1, VOCAB, n)
        mask[r, length - n:] = 1
    return ids, mask


class Uncached:
    """The reference decoder: the full forward over the whole sequence so far, every step, no cache.

    The sequence lives in a fixed [B, P + N] buffer whose unused tail is masked; under the causal mask
    the tail cannot change the logits at the last real token, and the one shape compiles once."""

    def __init__(self, model, ids, mask, n):
        self.frozen = as_frozen(model)
        b, p = ids.shape
        self.ids = np.concatenate([ids, np.zeros((b, n), np.int32)], axis=1)
        self.mask = np.concatenate([mask, np.zeros((b, n), np.int32)], axis=1)
        self.last = p - 1

    def logits(self) -> np.ndarray:
        return np.asarray(_last_logits(self.frozen, self.ids, self.mask, self.last))

    def append(self, tokens):
        self.last += 1
        self.ids[:, self.last], self.mask[:, self.last] = tokens, 1


@jax.jit
def _last_logits(frozen, ids, mask, last):
    out = frozen.model()(ids, mask, positions=left_padded_positions(mask))
    return out.logits[:, last].astype(jnp.float32)


def greedy_reference(model, ids, mask, n, eos=(), pad=0):
    ref, done = Uncached(model, ids, mask, n), np.zeros(len(ids), bool)
    tokens = np.full((len(ids), n), pad, np.int32)
    for i in range(n):
        token = np.where(done, pad, ref.logits().argmax(-1))
        tokens[:, i] = token
        done |= np.isin(token, eos)
        ref.append(token)
    return tokens


@pytest.mark.parametrize("family,scan_layers", [("llama", False), ("qwen2", True), ("gemma2", False),
                                                ("gemma2", True), ("gemma3", False), ("gemma3", True)])
def test_greedy_cached_equals_uncached_and_transformers(checkpoints, family, scan_layers):
    folder, hf_model = checkpoints[family]
    model = from_pretrained(folder, scan_layers=scan_layers)
    ids, mask = left_padded()
    tokens = np.asarray(generate_tokens(as_frozen(model), ids, mask, jax.random.key(0), max_new_tokens=N))
    np.testing.assert_array_equal(tokens, greedy_reference(model, ids, mask, N))
    with torch.no_grad():
        hf = hf_model.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                               max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(tokens, hf[:, P:].numpy())
    assert len(set(tokens.ravel().tolist())) > 3  # not a degenerate repeat of one token


def test_eos_stops_each_row_and_pads_after(checkpoints):
    model = from_pretrained(checkpoints["llama"][0])
    ids, mask = left_padded()
    free = greedy_reference(model, ids, mask, N)
    eos = (int(free[0, 2]), int(free[1, 4]))  # two EOS ids that rows emit mid-way, at different steps
    tokens = np.asarray(generate_tokens(as_frozen(model), ids, mask, jax.random.key(0), max_new_tokens=N,
                                        eos=eos, pad=0))
    np.testing.assert_array_equal(tokens, greedy_reference(model, ids, mask, N, eos=eos))
    stops = []
    for row, ref in zip(tokens, free):
        hits = np.flatnonzero(np.isin(ref, eos))
        stop = hits[0] if len(hits) else N
        np.testing.assert_array_equal(row[:stop + 1], ref[:stop + 1])  # same tokens up to the EOS
        assert (row[stop + 1:] == 0).all()  # then padding
        stops.append(stop)
    assert len({s for s in stops if s < N - 1}) >= 2  # rows stop at different steps before the end

    # Host API: prompt order kept across buckets, tokens up to (without) the first EOS.
    prompts = [row[m == 1].tolist() for row, m in zip(ids, mask)]
    config = GenerationConfig(max_new_tokens=N, batch_size=2, eos_token_id=eos, min_bucket=4)
    out = generate(model, prompts, config)
    assert out == [row[:stop].tolist() for row, stop in zip(free, stops)]


def test_sampling_is_reproducible_and_stays_in_the_nucleus(checkpoints):
    model = from_pretrained(checkpoints["qwen2"][0])
    ids, mask = left_padded()
    temperature, top_p = 0.8, 0.5
    kw = dict(max_new_tokens=N, temperature=temperature, top_p=top_p)
    frozen = as_frozen(model)
    a = np.asarray(generate_tokens(frozen, ids, mask, jax.random.key(7), **kw))
    b = np.asarray(generate_tokens(frozen, ids, mask, jax.random.key(7), **kw))
    c = np.asarray(generate_tokens(frozen, ids, mask, jax.random.key(8), **kw))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    ref = Uncached(model, ids, mask, N)
    for i in range(N):
        probs = np.asarray(jax.nn.softmax(ref.logits() / temperature, axis=-1))
        chosen = probs[np.arange(len(ids)), a[:, i]]
        mass_before = np.where(probs > chosen[:, None], probs, 0.0).sum(-1)  # more likely tokens
        assert (mass_before < top_p + 1e-6).all(), f"step {i}: a token outside the top-p set"
        ref.append(a[:, i])


def test_top_p_filter_on_fixed_logits():
    probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]], np.float32)
    kept = np.isfinite(np.asarray(top_p_filter(jnp.log(probs), 0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False], [True, False, False, False]])
    kept = np.isfinite(np.asarray(top_p_filter(jnp.log(probs), 0.85)))
    np.testing.assert_array_equal(kept[0], [True, True, True, False])


def test_one_compilation_per_bucket(checkpoints):
    model = from_pretrained(checkpoints["llama"][0])
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, VOCAB, n).tolist() for n in (2, 3, 4, 5, 9, 12, 15, 16, 1)]
    config = GenerationConfig(max_new_tokens=3, batch_size=2, min_bucket=8)  # buckets 8 and 16
    assert sorted({bucket_length(len(p), config) for p in prompts}) == [8, 16]
    before = generate_tokens._cache_size()
    first = generate(model, prompts, config)
    assert generate_tokens._cache_size() - before == 2
    assert generate(model, prompts, config) == first  # same shapes: no new compilation
    assert generate_tokens._cache_size() - before == 2
    assert all(len(t) == 3 for t in first)


def test_buckets():
    config = GenerationConfig(min_bucket=16)
    assert [bucket_length(n, config) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    fixed = GenerationConfig(buckets=(64, 32))
    assert bucket_length(33, fixed) == 64
    with pytest.raises(ValueError, match="largest generation bucket 64"):
        bucket_length(65, fixed)


def test_prefill_projects_only_the_last_position_to_the_vocabulary():
    """Gemma 3's 262,144 tokens: 20 prompts of 128 tokens would hold 2.7 GB of float32 logits at once."""
    from flax import nnx

    from reft_jax.models import ModelConfig, Transformer

    cfg = ModelConfig("gemma3_text", 262144, 16, 32, 1, 2, 1, 8, tie_word_embeddings=True)
    ids = jnp.ones((20, 128), jnp.int32)
    compiled = generate_tokens.lower(as_frozen(Transformer(cfg, rngs=nnx.Rngs(0))), ids, ids, jax.random.key(0),
                                     max_new_tokens=2).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 20 * 128 * 262144 * 4 / 8
