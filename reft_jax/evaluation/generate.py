"""Batched generation with a KV cache under jit, for the teacher, the student or a judge model.

Prompts are sorted by length, left-padded to a bucket length (powers of two by default) and cut into
batches of a fixed size, so that the jitted generation compiles once per bucket. One jitted call runs the
prefill over the whole prompt and then a `lax.while_loop` that decodes one token per step, greedy or
sampled (temperature, top-p), until every row has emitted an EOS token or max_new_tokens are out.
After its EOS a row emits only the pad id.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from reft_jax.errors import ConfigError
from reft_jax.models import Transformer
from reft_jax.models.transformer import KVCache
from reft_jax.runtime.state import FrozenModel, TrainState


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass (with temperature > 0)
    batch_size: int = 8
    buckets: tuple[int, ...] | None = None  # prompt lengths; None = powers of two, at least min_bucket
    min_bucket: int = 16
    eos_token_id: int | tuple[int, ...] | None = None  # None: the tokenizer's / model config's
    pad_token_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens: {self.max_new_tokens} should be at least 1")
        if self.temperature < 0:
            raise ConfigError(f"generation.temperature: {self.temperature} should be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"generation.top_p: {self.top_p} is not in (0, 1]")
        if self.batch_size < 1:
            raise ConfigError(f"generation.batch_size: {self.batch_size} should be at least 1")
        if self.buckets is not None:
            object.__setattr__(self, "buckets", tuple(sorted(int(b) for b in self.buckets)))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else tuple(int(e) for e in np.atleast_1d(eos))


def as_frozen(model: Transformer | FrozenModel | TrainState) -> FrozenModel:
    """The forward-only form of a model, a frozen teacher or a student's train state."""
    if isinstance(model, FrozenModel):
        return model
    if isinstance(model, TrainState):
        return FrozenModel.of_train_state(model)
    return FrozenModel.of(model)


# ---------------------------------------------------------------------------------------------------
# Device side: one jitted call per batch shape.


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Keeps the most likely tokens until their probability mass reaches top_p (always at least the top
    token; tokens tied with the last one kept stay too); the others get -inf. logits [..., V] float32."""
    probs = jax.nn.softmax(logits, axis=-1)
    desc = -jnp.sort(-probs, axis=-1)
    kept = (jnp.cumsum(desc, axis=-1) - desc) < top_p  # the mass before a token has not reached top_p
    cutoff = jnp.min(jnp.where(kept, desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= cutoff, logits, -jnp.inf)


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Next token ids [B] from last-position logits [B, V]: argmax when temperature == 0."""
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def left_padded_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions 0, 1, ... from each row's first real token (pads get 0; they are never attended to)."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("max_new_tokens", "temperature", "top_p", "eos", "pad"))
def generate_tokens(frozen: FrozenModel, input_ids: jax.Array, attention_mask: jax.Array, key: jax.Array, *,
                    max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, eos: tuple[int, ...] = (),
                    pad: int = 0) -> jax.Array:
    """Left-padded prompts [B, P] (every row with at least one real token) -> new tokens [B, max_new_tokens]:
    the pad id after a row's EOS (the EOS itself is kept) and in the steps skipped once every row is done."""
    model = frozen.model()
    b, p = input_ids.shape
    positions = left_padded_positions(attention_mask)
    cache = KVCache.empty(model.cfg, b, p + max_new_tokens, model.opts.dtype)
    # The prompt's last position alone is projected to the vocabulary: [B, P, V] float32 logits would be 2.7 GB for
    # 20 prompts of 128 tokens over Gemma 3's 262,144 tokens.
    out = model(input_ids, attention_mask, positions=positions, cache=cache, logits=False, output_hidden_states=[-1])
    last_logits = model.unembed(out.hidden_states[-1][:, -1:])[:, -1]
    eos_ids = jnp.asarray(eos, jnp.int32)

    def cond(state):
        i, _, _, _, _, done = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, tokens, cache, logits, pos, done = state
        token = sample_token(logits, jax.random.fold_in(key, i), temperature, top_p)
        token = jnp.where(done, pad, token)
        tokens = tokens.at[:, i].set(token)
        done = done | jnp.isin(token, eos_ids)
        # One forward more than needed on the last step; it keeps the loop body uniform.
        step = model(token[:, None], jnp.ones((b, 1), jnp.int32), positions=pos[:, None], cache=cache)
        return i + 1, tokens, step.cache, step.logits[:, -1], pos + 1, done

    state = (jnp.zeros((), jnp.int32), jnp.full((b, max_new_tokens), pad, jnp.int32), out.cache,
             last_logits, positions[:, -1] + 1, jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, state)[1]


# ---------------------------------------------------------------------------------------------------
# Host side: buckets, batches, results in prompt order.


def bucket_length(n: int, config: GenerationConfig) -> int:
    """The padded prompt length for a prompt of n tokens."""
    if config.buckets is None:
        return max(config.min_bucket, 1 << max(n - 1, 0).bit_length())
    for b in config.buckets:
        if n <= b:
            return b
    raise ValueError(f"a prompt of {n} tokens does not fit the largest generation bucket {config.buckets[-1]}")


def _plan(lengths: Sequence[int], config: GenerationConfig) -> list[tuple[list[int], int]]:
    """Batches (prompt indices, bucket length): shortest prompts first, never mixing buckets."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    by_bucket: dict[int, list[int]] = {}
    for i in order:
        by_bucket.setdefault(bucket_length(lengths[i], config), []).append(i)
    return [(rows[k:k + config.batch_size], length) for length, rows in by_bucket.items()
            for k in range(0, len(rows), config.batch_size)]


def _left_pad(prompts: Sequence[Sequence[int]], length: int, batch_size: int, pad: int):
    """[batch_size, length] ids and mask; missing rows repeat the first prompt (their output is dropped)."""
    rows = [*prompts, *[prompts[0]] * (batch_size - len(prompts))]
    ids = np.full((batch_size, length), pad, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for r, prompt in enumerate(rows):
        ids[r, length - len(prompt):] = prompt
        mask[r, length - len(prompt):] = 1
    return ids, mask


def _until_eos(tokens: np.ndarray, eos: tuple[int, ...]) -> list[int]:
    hits = np.flatnonzero(np.isin(tokens, eos)) if eos else []
    return tokens[:hits[0]].tolist() if len(hits) else tokens.tolist()


def generate(model: Transformer | FrozenModel | TrainState, prompts: Sequence[Sequence[int]],
             config: GenerationConfig, *, key: jax.Array | None = None, desc: str = "generating",
             progress: bool = True) -> list[list[int]]:
    """New token ids for every prompt (token-id lists), in prompt order, up to (without) the first EOS.

    key: PRNG key for sampling (default key 0); batch k samples with fold_in(key, k), so the same
    prompts, config and key give the same tokens. progress: a bar (on a terminal) of the prompts answered, with the
    answers' tokens per second and the time left."""
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
    frozen = as_frozen(model)
    key = jax.random.key(0) if key is None else key
    settings = dict(max_new_tokens=config.max_new_tokens, temperature=float(config.temperature),
                    top_p=float(config.top_p), eos=config.eos_ids, pad=int(config.pad_token_id))
    results: list[list[int]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=None if progress else True, leave=False)
    new_tokens = 0
    with bar:
        for k, (rows, length) in enumerate(_plan([len(p) for p in prompts], config)):
            ids, mask = _left_pad([prompts[i] for i in rows], length, config.batch_size, config.pad_token_id)
            tokens = np.asarray(generate_tokens(frozen, ids, mask, jax.random.fold_in(key, k), **settings))
            for r, i in enumerate(rows):
                results[i] = _until_eos(tokens[r], config.eos_ids)
                new_tokens += len(results[i])
            if not bar.disable:
                bar.set_postfix_str(f"{new_tokens / max(bar.format_dict['elapsed'], 1e-9):.0f} tok/s", refresh=False)
                bar.update(len(rows))
    return results


# ---------------------------------------------------------------------------------------------------
# Text in, text out.


def encode_prompts(tokenizer, texts: Sequence[str], *, add_bos: bool | None = None) -> list[list[int]]:
    """Token ids of templated prompt texts, as the data pipeline tokenizes prompts: no special tokens
    except a BOS in front when the tokenizer has one (unless the text already starts with it)."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    bos = None if add_bos is False else tokenizer.bos_token_id
    return [[bos, *p] if bos is not None and not (p and p[0] == bos) else list(p) for p in ids]


def with_tokenizer_ids(config: GenerationConfig, tokenizer, model=None) -> GenerationConfig:
    """Fills EOS (the tokenizer's plus the model config's, when the config names none) and the pad id."""
    updates = {}
    if config.eos_token_id is None:
        eos = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
        cfg_eos = getattr(getattr(model, "cfg", None), "eos_token_id", None)
        eos |= set() if cfg_eos is None else {int(e) for e in np.atleast_1d(cfg_eos)}
        updates["eos_token_id"] = tuple(sorted(eos)) or None
    if tokenizer.pad_token_id is not None:
        updates["pad_token_id"] = tokenizer.pad_token_id
    return dataclasses.replace(config, **updates)


def decode(tokenizer, tokens: Sequence[Sequence[int]]) -> list[str]:
    return tokenizer.batch_decode([list(t) for t in tokens], skip_special_tokens=True)


def generate_text(model: Transformer | FrozenModel | TrainState, tokenizer, prompts: Sequence[str],
                  config: GenerationConfig, *, key: jax.Array | None = None, desc: str = "generating",
                  progress: bool = True) -> list[str]:
    """Generated answers (decoded, special tokens dropped) to templated prompt texts."""
    inner = model if isinstance(model, Transformer) else as_frozen(model).model()
    config = with_tokenizer_ids(config, tokenizer, inner)
    return decode(tokenizer, generate(model, encode_prompts(tokenizer, prompts), config, key=key, desc=desc,
                                      progress=progress))
