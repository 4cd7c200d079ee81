"""The core of a GCG attack (greedy coordinate gradient, Zou et al. 2023): an adversarial suffix that makes the
model start its answer with a target string ("Sure, here is ...").

One attack is laid out as token ids  [before | suffix | after | target]:  `before` is everything in front of the
suffix (BOS, the chat template's prefix, the request), `after` everything between the suffix and the answer (end
of the user turn, the assistant header), `target` the answer's prefix. The pieces are tokenized separately, as
GCG implementations do, so that the suffix's tokens are exactly the ones optimised.

Each step (`run_gcg`): the gradient of the target cross-entropy with respect to the one-hot suffix
(`token_gradients`), a batch of candidates that each swap one suffix token for one of the top-k tokens of minus
that gradient (`sample_candidates`), the exact loss of every candidate (`candidate_losses`), and a move to the
step's best candidate. Shapes are static (`before` left-padded, `target` right-padded to lengths the caller
picks), so the jitted calls compile once for all the prompts of a run.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from reft_jax.config.schema import GCGSection
from reft_jax.errors import ConfigError
from reft_jax.evaluation.generate import encode_prompts, left_padded_positions
from reft_jax.models.transformer import KVCache
from reft_jax.runtime.numerics import at_least_f32
from reft_jax.runtime.state import FrozenModel
from reft_jax.train.losses import token_nll


@dataclasses.dataclass(frozen=True)
class GCGConfig(GCGSection):
    """The attack's settings: eval.gcg's fields (reft_jax.config.schema.GCGSection; the optimisation reads steps,
    suffix_length, top_k, candidates and early_stop), and the algorithm's own below."""

    init_token: str = " !"  # the initial suffix is this (single) token repeated
    seed: int = 0
    # Candidates run in this many blocks, each from its first swapped position on (candidate_losses' `groups`):
    # fewer tokens per step (SmolLM2-135M on 2 CPU cores: 4 blocks took 30% off the candidate call, 10 and 20
    # no more), one more compiled forward per block.
    prefix_groups: int = 4

    def __post_init__(self):
        for name in ("steps", "suffix_length", "top_k", "candidates", "prefix_groups"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"gcg.{name}: {value!r} should be an integer of at least 1")
        if not isinstance(self.init_token, str) or not self.init_token:
            raise ConfigError(f"gcg.init_token: {self.init_token!r} should be a non-empty string")


# ---------------------------------------------------------------------------------------------------
# Layout of one attack.


@dataclasses.dataclass(frozen=True)
class PromptIds:
    """The token ids of one attack's fixed pieces, unpadded."""

    before: list[int]
    after: list[int]
    target: list[int]


@struct.dataclass
class Layout:
    """One attack's fixed pieces as padded arrays; their shapes are what the jitted calls compile for."""

    before: jax.Array  # int32 [P], left-padded
    before_mask: jax.Array  # int32 [P], 1 = real token
    after: jax.Array  # int32 [A]
    target: jax.Array  # int32 [T], right-padded
    target_weight: jax.Array  # float32 [T], 1 = a target token, 0 = padding

    @classmethod
    def of(cls, prompt: PromptIds, before_length: int | None = None, target_length: int | None = None,
           pad: int = 0) -> "Layout":
        """Pads `before` on the left to before_length and `target` on the right to target_length (default:
        their own lengths). Prompts padded to the same lengths (and with the same `after` length, which a
        chat template fixes) share one compilation."""
        p = len(prompt.before) if before_length is None else before_length
        t = len(prompt.target) if target_length is None else target_length
        if not prompt.before or not prompt.target:
            raise ValueError("an attack needs at least one token before the suffix and one target token")
        if len(prompt.before) > p or len(prompt.target) > t:
            raise ValueError(f"{len(prompt.before)} tokens before the suffix / {len(prompt.target)} target tokens "
                             f"do not fit the padded lengths {p} / {t}")
        before = np.full(p, pad, np.int32)
        before_mask = np.zeros(p, np.int32)
        before[p - len(prompt.before):] = prompt.before
        before_mask[p - len(prompt.before):] = 1
        target = np.full(t, pad, np.int32)
        weight = np.zeros(t, np.float32)
        target[:len(prompt.target)] = prompt.target
        weight[:len(prompt.target)] = 1.0
        return cls(jnp.asarray(before), jnp.asarray(before_mask), jnp.asarray(prompt.after, jnp.int32),
                   jnp.asarray(target), jnp.asarray(weight))


def split_prompt(tokenizer, templated_text: str, slot: str, target: str) -> PromptIds:
    """The ids of a templated prompt text cut at the placeholder `slot` (where the suffix's text goes) and of
    the target answer prefix. `before` is tokenized as generate.encode_prompts does (a BOS in front when the
    tokenizer has one); `after` and `target` without special tokens added (the template's own are kept).
    With suffix tokens that carry their leading space (" !"), put the slot right after the request."""
    if templated_text.count(slot) != 1:
        raise ValueError(f"the templated prompt should hold the slot {slot!r} exactly once")
    head, tail = templated_text.split(slot)
    before = encode_prompts(tokenizer, [head])[0]
    after, target_ids = tokenizer([tail, target], add_special_tokens=False, verbose=False)["input_ids"]
    return PromptIds(list(before), list(after), list(target_ids))


def allowed_tokens(tokenizer, vocab_size: int) -> np.ndarray:
    """bool [vocab_size]: the tokens a suffix may use: printable ASCII text, no special token (the named ones
    and added tokens marked special), no id beyond the tokenizer's (a model's vocabulary may be padded past it)."""
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    allowed = np.zeros(vocab_size, bool)
    allowed[:n] = [bool(s) and s.isascii() and s.isprintable() for s in texts]
    special = {*tokenizer.all_special_ids,
               *(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)}
    allowed[[i for i in special if i is not None and 0 <= i < vocab_size]] = False
    return allowed


# ---------------------------------------------------------------------------------------------------
# Device side: jitted pure functions.


def _target_loss(logits: jax.Array, layout: Layout) -> tuple[jax.Array, jax.Array]:
    """(mean target CE [...] float32, exact [...] bool: the argmax is the target at every target token) from
    the logits [..., T, V] of the positions that predict the target."""
    nll = token_nll(logits, layout.target)  # float32
    w = layout.target_weight
    loss = jnp.sum(nll * w, axis=-1) / jnp.sum(w)
    hit = jnp.argmax(logits, axis=-1) == layout.target
    return loss, jnp.all(hit | (w == 0), axis=-1)


def _tail(layout: Layout) -> jax.Array:
    """The tokens after the suffix: after + target without its last token [A + T - 1]. The last target token
    is never an input (nothing after it is predicted), so the last T positions are those that predict it."""
    return jnp.concatenate([layout.after, layout.target[:-1]])


def _rest(layout: Layout, suffixes: jax.Array) -> jax.Array:
    """The tokens after `before`: suffixes [C, S] and the tail, [C, S + A + T - 1]."""
    tail = _tail(layout)
    return jnp.concatenate([suffixes, jnp.broadcast_to(tail, (suffixes.shape[0], tail.shape[0]))], axis=1)


@jax.jit
def sequence_losses(frozen: FrozenModel, layout: Layout, suffixes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """candidate_losses the plain way: whole sequences, no cache, every position projected to the vocabulary.
    The reference the fast path is tested against. suffixes [C, S] -> (losses [C] float32, exact [C] bool)."""
    model = frozen.model()
    c, p = suffixes.shape[0], layout.before.shape[0]
    ids = jnp.concatenate([jnp.broadcast_to(layout.before, (c, p)), _rest(layout, suffixes)], axis=1)
    mask = jnp.concatenate([jnp.broadcast_to(layout.before_mask, (c, p)),
                            jnp.ones((c, ids.shape[1] - p), jnp.int32)], axis=1)
    logits = model(ids, mask, positions=left_padded_positions(mask)).logits
    return _target_loss(logits[:, -layout.target.shape[0]:], layout)


@jax.jit
def one_hot_loss(frozen: FrozenModel, layout: Layout, one_hot: jax.Array) -> jax.Array:
    """The mean target CE (float32 scalar) with the suffix given as a (relaxed) one-hot matrix [S, V]: its
    embeddings are one_hot @ embed_tokens, fed through the model's inputs_embeds."""
    model = frozen.model()
    table = at_least_f32(model.embed_tokens[...])
    embeds = jnp.concatenate([jnp.take(table, layout.before, axis=0), one_hot.astype(table.dtype) @ table,
                              jnp.take(table, _tail(layout), axis=0)])
    mask = jnp.concatenate([layout.before_mask, jnp.ones(embeds.shape[0] - layout.before.shape[0], jnp.int32)])
    out = model(None, mask[None], positions=left_padded_positions(mask)[None], inputs_embeds=embeds[None],
                logits=False, output_hidden_states=[-1])
    return _target_loss(model.unembed(out.hidden_states[-1][0, -layout.target.shape[0]:]), layout)[0]


@jax.jit
def token_gradients(frozen: FrozenModel, layout: Layout, suffix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean target CE at `suffix` [S], its gradient [S, V] float32 with respect to the one-hot suffix matrix).

    The gradient rates every token of the vocabulary at every suffix position at once: a linear estimate of
    what swapping it in would do to the loss."""
    vocab = frozen.model().cfg.vocab_size
    return jax.value_and_grad(one_hot_loss, argnums=2)(frozen, layout, jax.nn.one_hot(suffix, vocab,
                                                                                       dtype=jnp.float32))


def swap_positions(num_candidates: int, suffix_length: int) -> np.ndarray:
    """The suffix position GCG's candidate i swaps: floor(i * S / C), spread evenly and non-decreasing."""
    return np.arange(num_candidates) * suffix_length // num_candidates


@functools.partial(jax.jit, static_argnames=("groups",))
def candidate_losses(frozen: FrozenModel, layout: Layout, candidates: jax.Array, suffix: jax.Array | None = None,
                     groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """(target CE [C] float32, exact [C] bool) of every candidate suffix [C, S], in one call.

    The tokens every candidate shares run once (batch 1) into a KV cache that the C rows then read, and only
    the T positions that predict the target are projected to the vocabulary ([C, T, V] rather than [C, L, V]).
    Shared are `before`, and, given the current `suffix` and groups > 1, the suffix up to each candidate's swap
    position too: the rows must then be sample_candidates' (row i equals `suffix` before swap_positions(C, S)[i];
    a row that does not gets loss NaN). They run in `groups` blocks of consecutive swap positions, each block
    from its first swap position on: about S/2 (1 - 1/groups) fewer tokens per row, for one more compiled
    forward per block."""
    model = frozen.model()
    c, s = candidates.shape
    p, t = layout.before.shape[0], layout.target.shape[0]
    tail = _tail(layout)
    if suffix is None or groups == 1:
        shared, starts = layout.before, [0]
    else:
        shared = jnp.concatenate([layout.before, suffix])
        starts = sorted({g * s // groups for g in range(groups)})
    shared_mask = jnp.concatenate([layout.before_mask, jnp.ones(shared.shape[0] - p, jnp.int32)])[None]
    cache = KVCache.empty(model.cfg, 1, p + s + tail.shape[0], model.opts.dtype)
    cache = model(shared[None], shared_mask, positions=left_padded_positions(shared_mask), cache=cache,
                  logits=False).cache
    first = jnp.sum(layout.before_mask)  # the position of slot p (the suffix's first)
    # Block g: the rows whose swap position is at least starts[g] (and below the next start), run from there.
    bounds = [-(-a * c // s) for a in starts] + [c]
    losses, exact = [], []
    for a, lo, hi in zip(starts, bounds, bounds[1:]):
        if hi <= lo:
            continue
        rows = candidates[lo:hi]
        tokens = jnp.concatenate([rows[:, a:], jnp.broadcast_to(tail, (hi - lo, tail.shape[0]))], axis=1)
        n, r = tokens.shape
        # The block overwrites every slot from p + a on, so the shared cache is read as if filled up to there.
        block_cache = KVCache(*(jnp.broadcast_to(x, (x.shape[0], n, *x.shape[2:])) for x in (cache.k, cache.v)),
                              jnp.broadcast_to(cache.mask, (n, cache.mask.shape[1])), jnp.asarray(p + a, jnp.int32))
        positions = jnp.broadcast_to(first + a + jnp.arange(r, dtype=jnp.int32), (n, r))
        out = model(tokens, jnp.ones((n, r), jnp.int32), positions=positions, cache=block_cache, logits=False,
                    output_hidden_states=[-1])
        loss, hit = _target_loss(model.unembed(out.hidden_states[-1][:, -t:]), layout)
        if a:
            loss = jnp.where(jnp.all(rows[:, :a] == suffix[:a], axis=1), loss, jnp.nan)
        losses.append(loss)
        exact.append(hit)
    return jnp.concatenate(losses), jnp.concatenate(exact)


@functools.partial(jax.jit, static_argnames=("top_k", "num_candidates"))
def sample_candidates(key: jax.Array, suffix: jax.Array, grad: jax.Array, top_k: int, num_candidates: int,
                      allowed: jax.Array) -> jax.Array:
    """GCG's candidates [C, S]: candidate i swaps position floor(i * S / C) (positions spread evenly over the
    suffix) for a token drawn uniformly from the top_k allowed tokens of -grad there. top_k <= V."""
    s = suffix.shape[0]
    scores = jnp.where(allowed, -grad, -jnp.inf)
    top = jax.lax.top_k(scores, top_k)[1]  # [S, k]
    # Fewer than top_k allowed tokens: draw only among the allowed ones (the rest of the top is -inf).
    k = jnp.minimum(top_k, jnp.sum(allowed))
    choice = jax.random.randint(key, (num_candidates,), 0, k)
    where = jnp.asarray(swap_positions(num_candidates, s))
    rows = jnp.arange(num_candidates)
    return jnp.broadcast_to(suffix, (num_candidates, s)).at[rows, where].set(top[where, choice])


# ---------------------------------------------------------------------------------------------------
# Host side: the retokenization check and the loop.


def retokenizes(tokenizer, suffixes: np.ndarray) -> np.ndarray:
    """bool [C]: the suffix's decoded text encodes back to the same ids (else the attack's text would not be
    the suffix that was scored)."""
    rows = [list(map(int, s)) for s in suffixes]
    texts = tokenizer.batch_decode(rows, clean_up_tokenization_spaces=False)
    again = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return np.array([list(a) == r for a, r in zip(again, rows)])


def initial_suffix(tokenizer, config: GCGConfig) -> np.ndarray:
    ids = tokenizer(config.init_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"gcg.init_token: {config.init_token!r} is {len(ids)} tokens, not one")
    return np.full(config.suffix_length, ids[0], np.int32)


@dataclasses.dataclass
class GCGResult:
    suffix: list[int]  # the best suffix found
    suffix_text: str
    loss: float  # its target CE
    initial_loss: float  # the target CE of the initial suffix
    losses: list[float]  # the best-so-far loss after each step
    step_losses: list[float]  # the loss of the candidate moved to at each step
    steps: int
    early_stopped: bool
    step_s: float  # median seconds per step after the first (the first compiles)
    grad_s: float  # median seconds of the gradient call, after the first step
    candidates_s: float  # median seconds of sampling, the candidate call and the retokenization check, ditto


def run_gcg(frozen: FrozenModel, layout: Layout, config: GCGConfig, *, tokenizer, allowed: np.ndarray,
            key: jax.Array | None = None, progress: bool = True) -> GCGResult:
    """Optimises a suffix for one attack. Each step moves to the step's lowest-loss candidate (as the original
    GCG does, even when it is worse than the best so far); the best suffix seen is what is returned. Candidates
    that fail the retokenization check get loss +inf (the batch keeps its static size)."""
    key = jax.random.key(config.seed) if key is None else key
    vocab = frozen.model().cfg.vocab_size
    allowed = np.asarray(allowed, bool)
    if allowed.shape != (vocab,) or not allowed.any():
        raise ValueError(f"allowed should be a bool [{vocab}] mask with at least one allowed token")
    top_k = min(config.top_k, vocab)
    allowed_device = jnp.asarray(allowed)
    suffix = jnp.asarray(initial_suffix(tokenizer, config))
    best, best_loss, initial_loss = np.asarray(suffix), np.inf, np.nan
    losses, step_losses, times, grad_times, cand_times = [], [], [], [], []
    early_stopped = False
    bar = tqdm(range(config.steps), desc="GCG", disable=None if progress else True, leave=False)
    for step in bar:
        start = time.perf_counter()
        loss, grad = token_gradients(frozen, layout, suffix)
        loss = float(loss)  # waits for the call: the two calls are timed apart
        grad_times.append(time.perf_counter() - start)
        if step == 0:
            best_loss = initial_loss = loss
        cand_start = time.perf_counter()
        candidates = sample_candidates(jax.random.fold_in(key, step), suffix, grad, top_k, config.candidates,
                                       allowed_device)
        cand_losses, exact = candidate_losses(frozen, layout, candidates, suffix, groups=config.prefix_groups)
        candidates = np.asarray(candidates)
        valid = retokenizes(tokenizer, candidates)  # on the host while the device evaluates
        cand_losses = np.where(valid, np.nan_to_num(np.asarray(cand_losses), nan=np.inf), np.inf)
        exact = np.asarray(exact)
        cand_times.append(time.perf_counter() - cand_start)
        i = int(np.argmin(cand_losses))
        step_losses.append(float(cand_losses[i]))
        if np.isfinite(cand_losses[i]):  # else every candidate failed the check: stay where we are
            suffix = jnp.asarray(candidates[i])
            if cand_losses[i] < best_loss:
                best, best_loss = candidates[i], float(cand_losses[i])
        losses.append(float(best_loss))
        times.append(time.perf_counter() - start)
        bar.set_postfix(loss=f"{best_loss:.3f}")
        if config.early_stop and np.isfinite(cand_losses[i]) and exact[i]:
            early_stopped = True
            break
    bar.close()
    after_first = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # noqa: E731
    return GCGResult(suffix=[int(t) for t in best], suffix_text=tokenizer.decode(list(map(int, best))),
                     loss=float(best_loss), initial_loss=float(initial_loss), losses=losses, step_losses=step_losses,
                     steps=len(losses), early_stopped=early_stopped, step_s=after_first(times),
                     grad_s=after_first(grad_times), candidates_s=after_first(cand_times))


def padded_length(lengths: Sequence[int], multiple: int = 8) -> int:
    """The longest of `lengths` rounded up to a multiple: a padded length for Layout.of shared by prompts."""
    return -(-max(lengths) // multiple) * multiple
