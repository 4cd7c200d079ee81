"""One decoder-only transformer in Flax NNX for Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2 and Gemma 3.

Module and attribute names follow Hugging Face's (`embed_tokens`, `layers`, `self_attn.q_proj`, ...), so that
checkpoint conversion is a mechanical renaming. The decoder blocks are stored stacked, every parameter with a
leading layer axis, so that the same weights run either as a Python loop over layers or as one `lax.scan`
(which compiles a 32-layer model as fast as a 1-layer one).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from reft_jax.errors import ConfigError
from reft_jax.models.activations import constrain
from reft_jax.models.config import ModelConfig, rope_inv_freq
from reft_jax.models.layers import Linear, LoraConfig, RMSNorm, attention, rope

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
# Logical axes of the activations (see models/activations.py; reft_jax.runtime.parallel maps them to mesh axes).
RESIDUAL = ("batch", "length", "embed")
HEADS = ("batch", "length", "heads", "head_dim")
KV_HEADS = ("batch", "length", "kv_heads", "head_dim")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How the model runs, as opposed to what it computes (that is ModelConfig)."""

    dtype: jnp.dtype = jnp.float32  # compute dtype of activations and matmuls
    param_dtype: jnp.dtype = jnp.float32  # storage dtype of the weights
    attention: str = "xla"  # "xla" everywhere; "cudnn" for the fused GPU kernel (right padding only)
    remat: str = "none"  # one of REMAT_POLICIES: what each block keeps for the backward pass
    scan_layers: bool = False  # run the stacked blocks with lax.scan instead of a Python loop
    lora: LoraConfig | None = None

    def __post_init__(self):
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"model.attention: {self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat: {self.remat!r} is not one of {tuple(REMAT_POLICIES)}")


@struct.dataclass
class KVCache:
    """Keys and values of every layer for incremental decoding, filled left to right from slot 0.

    Rows are left-padded, so one write index serves the whole batch; `mask` marks the slots that hold a
    real token (pad slots are never attended to). Keys are stored after RoPE. The caller sizes the cache
    for prompt plus new tokens: XLA clamps a write past the end instead of failing.
    """

    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]
    mask: jax.Array  # bool [B, S]
    index: jax.Array  # int32 scalar: the next slot to write

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((), jnp.int32))


@struct.dataclass
class ModelOutput:
    logits: jax.Array  # [B, T, V] for a causal LM, [B, num_labels] for a classifier
    hidden_states: tuple[jax.Array | None, ...] | None = None  # embedding output, then one per layer
    cache: KVCache | None = None  # the updated cache, when the call was given one
    mlp_outputs: tuple[jax.Array, ...] | None = None  # each block's MLP output, when asked for (output_mlp)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, opts: RuntimeOptions, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        lin = dict(dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.q_proj = Linear(d, n * h, axes=("embed", "heads"), use_bias=cfg.qkv_bias, **lin)
        self.k_proj = Linear(d, k * h, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **lin)
        self.v_proj = Linear(d, k * h, axes=("embed", "kv_heads"), use_bias=cfg.qkv_bias, **lin)
        self.o_proj = Linear(n * h, d, axes=("heads", "embed"), use_bias=cfg.o_bias, **lin)
        if cfg.qk_norm:
            norm = dict(eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, axis_name="head_dim",
                        param_dtype=opts.param_dtype)
            self.q_norm, self.k_norm = RMSNorm(h, **norm), RMSNorm(h, **norm)
        else:
            self.q_norm = self.k_norm = None
        self.cfg, self.opts = cfg, opts

    def __call__(self, x, positions, mask, window, kv=None):
        """kv: None, or this layer's cache (k [B, S, K, H], v, write index); the new keys and values are
        written there and attended to with the rest. Returns the output and the new (k, v) [B, T, K, H]."""
        cfg = self.cfg
        b, t, _ = x.shape
        q = constrain(self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim), HEADS)
        k = constrain(self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim), KV_HEADS)
        v = constrain(self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim), KV_HEADS)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = jnp.asarray(rope_inv_freq(cfg))
        if cfg.rope_local_theta is not None:  # Gemma 3: the sliding-window layers have their own base (window may
            # be traced: a scan over layers of several windows)
            inv_freq = jnp.where(window > 0, jnp.asarray(rope_inv_freq(cfg, local=True)), inv_freq)
        q, k = rope(q, positions, inv_freq), rope(k, positions, inv_freq)
        new_kv, q_offset = None, None
        if kv is not None:
            k_cache, v_cache, index = kv
            new_kv, q_offset = (k, v), index  # the queries sit at slots index .. index + t - 1
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
        if self.opts.attention == "cudnn" and kv is None:
            # The fused kernel takes the causal mask and a static window itself; with right padding the real
            # queries never see a padded key, so no padding mask is needed.
            local = (int(window) - 1, 0) if window else None
            out = jax.nn.dot_product_attention(q, k, v, scale=cfg.scale, is_causal=True, local_window_size=local,
                                               implementation="cudnn")
        else:
            # The cache path always lands here: the fused kernel's causal mask assumes queries == keys.
            mask = _window_mask(mask, window, q_offset)
            out = attention(q, k, v, mask, scale=cfg.scale, softcap=cfg.attn_softcap)
        out = constrain(out, HEADS)
        return self.o_proj(out.reshape(b, t, cfg.num_heads * cfg.head_dim)), new_kv


def _window_mask(mask, window, q_offset=None):
    """Restricts mask [B, 1, T, S] to the last `window` keys (0 = no restriction); window may be traced.

    The queries are keys q_offset .. q_offset + T - 1 (default: the last T keys); q_offset may be traced."""
    if isinstance(window, int) and window == 0:
        return mask
    t, s = mask.shape[-2:]
    offset = s - t if q_offset is None else q_offset
    distance = jnp.arange(t)[:, None] + offset - jnp.arange(s)[None, :]  # query index - key index
    return mask & ((window == 0) | (distance < window))


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU for Llama-likes, GeGLU for Gemma."""

    def __init__(self, cfg: ModelConfig, opts: RuntimeOptions, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        lin = dict(dtype=opts.dtype, param_dtype=opts.param_dtype, use_bias=cfg.mlp_bias, rngs=rngs)
        self.gate_proj = Linear(d, f, axes=("embed", "mlp"), **lin)
        self.up_proj = Linear(d, f, axes=("embed", "mlp"), **lin)
        self.down_proj = Linear(f, d, axes=("mlp", "embed"), **lin)
        self.activation = cfg.activation

    def __call__(self, x):
        gate = self.gate_proj(x)
        if self.activation == "silu":
            gate = jax.nn.silu(gate)
        else:
            gate = jax.nn.gelu(gate, approximate=self.activation == "gelu_tanh")
        return self.down_proj(constrain(gate * self.up_proj(x), ("batch", "length", "mlp")))


class Block(nnx.Module):
    """Pre-norm decoder block; Gemma 2 and 3 also normalise the attention and MLP outputs ("sandwich" norms)."""

    def __init__(self, cfg: ModelConfig, opts: RuntimeOptions, *, rngs: nnx.Rngs):
        norm = lambda: RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one,  # noqa: E731
                               param_dtype=opts.param_dtype)
        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, opts, rngs=rngs)
        # In Llama-likes `post_attention_layernorm` is the MLP's input norm; in Gemma 2 and 3 it normalises the
        # attention output and `pre_feedforward_layernorm` is the MLP's input norm (Hugging Face's names).
        self.post_attention_layernorm = norm()
        if cfg.sandwich_norms:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        else:
            self.pre_feedforward_layernorm = self.post_feedforward_layernorm = None
        self.mlp = MLP(cfg, opts, rngs=rngs)

    def __call__(self, x, positions, mask, window, kv=None, attn_offset=None):
        """Returns the block's output, the attention's new (k, v) (None without a cache) and the MLP's output.
        attn_offset [B, T, D]: added to the attention's output (Vaccine's perturbation of it)."""
        attn, new_kv = self.self_attn(self.input_layernorm(x), positions, mask, window, kv)
        if attn_offset is not None:
            attn = attn + attn_offset.astype(attn.dtype)
        if self.pre_feedforward_layernorm is None:
            x = constrain(x + attn, RESIDUAL)
            mlp = self.mlp(self.post_attention_layernorm(x))
            return constrain(x + mlp, RESIDUAL), new_kv, mlp
        x = constrain(x + self.post_attention_layernorm(attn), RESIDUAL)
        mlp = self.mlp(self.pre_feedforward_layernorm(x))
        return constrain(x + self.post_feedforward_layernorm(mlp), RESIDUAL), new_kv, mlp


class Transformer(nnx.Module):
    """Causal LM (logits over the vocabulary) or, when cfg.num_labels > 0, a sequence classifier."""

    def __init__(self, cfg: ModelConfig, opts: RuntimeOptions | None = None, *, rngs: nnx.Rngs):
        opts = opts or RuntimeOptions()
        if opts.attention == "cudnn":
            if cfg.attn_softcap:
                raise ConfigError("model.attention='cudnn' does not support attention soft-capping (Gemma 2)")
            if opts.scan_layers and len(set(cfg.layer_windows)) > 1:
                raise ConfigError("model.attention='cudnn' with scan_layers needs one window for all layers")
        self.cfg, self.opts = cfg, opts
        embed = _init_normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), opts.param_dtype)
        self.embed_tokens = nnx.Param(embed, axes=("vocab", "embed"))

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, opts, rngs=rngs)

        self.layers = make_blocks(rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one,
                            param_dtype=opts.param_dtype)
        lin = dict(dtype=opts.dtype, param_dtype=opts.param_dtype, rngs=rngs)
        self.score = Linear(cfg.hidden_size, cfg.num_labels, axes=("embed", None), **lin) \
            if cfg.is_classifier else None
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"), **lin) \
            if not cfg.is_classifier and not cfg.tie_word_embeddings else None
        if opts.lora:
            add_lora(self, opts.lora, rngs)

    def __call__(self, input_ids: jax.Array | None, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 output_hidden_states: bool | int | Sequence[int] = False,
                 cache: KVCache | None = None, logits: bool = True, attention_offsets: jax.Array | None = None,
                 output_mlp: bool = False, inputs_embeds: jax.Array | None = None) -> ModelOutput:
        """input_ids [B, T]; attention_mask [B, T] (1 = real token); positions [B, T] (default 0..T-1, as in
        transformers; pass cumsum(mask) - 1 for left padding); segment_ids [B, T] for packed sequences.
        `output_hidden_states`: True for all, or the indices to keep (others are None), HF convention:
        index 0 is the embedding output, index l the output of block l, and the last one is after the final
        norm (as transformers returns it).
        `cache`: decode incrementally (causal LM only): the T tokens go to cache slots index .. index + T - 1
        and attend to every earlier real slot; the output carries the updated cache. Pass positions too.
        `logits=False` skips the vocabulary projection (ModelOutput.logits is None): the blockwise losses
        project the last hidden state (`output_hidden_states=[-1]`) a block of tokens at a time (`unembed`).
        `attention_offsets` [L, B, T, D]: added to each block's attention output (Vaccine perturbs them);
        `output_mlp`: ModelOutput.mlp_outputs holds each block's MLP output (RepNoise reads them).
        `inputs_embeds` [B, T, D]: token embeddings (rows of embed_tokens, or mixtures of them) used instead of
        looking up input_ids, which may then be None (the shape is inputs_embeds'); scaled by sqrt(D) for Gemma
        like looked-up rows (as transformers 4.x did; 5.x scales inside its embedding module, so takes them
        scaled). A GCG attack differentiates through one_hot @ embed_tokens this way. A classifier still needs
        input_ids to pool."""
        cfg = self.cfg
        b, t = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if cache is not None:
            if cfg.is_classifier or segment_ids is not None:
                raise ValueError("a KV cache is for causal-LM decoding, without classifier head or packing")
            mask, slots = _cache_mask(cache, attention_mask)
        else:
            mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & attention_mask.astype(bool)[:, None, None, :]
        if segment_ids is not None:
            mask &= (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]

        x = self._embed(input_ids, inputs_embeds)
        keep = _hidden_state_selection(output_hidden_states, cfg.num_layers)
        x, layer_outputs, new_kv, mlps = self._run_blocks(x, positions, mask, collect=bool(keep), cache=cache,
                                                          offsets=attention_offsets, collect_mlp=output_mlp)
        x = self.norm(x)
        if cache is not None:
            cache = _write_cache(cache, new_kv, slots, t)

        hidden_states = None
        if keep:
            states = [layer_outputs[0], *layer_outputs[1:-1], x]
            hidden_states = tuple(h if i in keep else None for i, h in enumerate(states))
        if cfg.is_classifier:
            return ModelOutput(self._pool(x, input_ids, attention_mask), hidden_states, mlp_outputs=mlps)
        return ModelOutput(self.unembed(x) if logits else None, hidden_states, cache, mlps)

    def _embed(self, input_ids: jax.Array, inputs_embeds: jax.Array | None = None) -> jax.Array:
        """Token embeddings [B, T, D] in the compute dtype (times sqrt(D) for Gemma, in that dtype as Gemma does),
        looked up or given (inputs_embeds).
        On a mesh the table is gathered whole first, as FSDP gathers every weight before its use: a lookup into
        a table split over the model dimension would come out split that way, and XLA could only move it to
        the batch split of the residual stream by replicating it ("Involuntary full rematerialization")."""
        if inputs_embeds is not None:
            x = inputs_embeds.astype(self.opts.dtype)
        else:
            table = constrain(self.embed_tokens[...], (None, None))
            x = jnp.take(table, input_ids, axis=0).astype(self.opts.dtype)
        if self.cfg.embed_scale:
            x = x * jnp.asarray(self.cfg.hidden_size ** 0.5, self.opts.dtype)
        return constrain(x, RESIDUAL)

    def unembed(self, x: jax.Array) -> jax.Array:
        """Final (normed) hidden states [..., D] -> logits [..., V] in the compute dtype, soft-capped where the
        family does it (Gemma 2)."""
        if self.lm_head is not None:
            logits = self.lm_head(x)
        else:
            logits = x @ self.embed_tokens[...].astype(self.opts.dtype).T
        if logits.ndim == 3:  # [B, T, V], or a block [B, c, V] of the blockwise losses
            logits = constrain(logits, ("batch", "length", "vocab"))
        if self.cfg.final_softcap:
            logits32 = logits.astype(jnp.float32)
            logits = (jnp.tanh(logits32 / self.cfg.final_softcap) * self.cfg.final_softcap).astype(logits.dtype)
        return logits

    def hidden_states_at(self, input_ids: jax.Array, attention_mask: jax.Array | None,
                         layers: Sequence[int], prefix: tuple[jax.Array, jax.Array] | None = None
                         ) -> tuple[jax.Array, ...]:
        """The hidden states at `layers` (HF indices, as __call__'s), running only the blocks up to the deepest
        one and no vocabulary projection: all that the refusal feature and the filters read.
        `prefix`: the keys and values ([depth, 1, P, K, H] each, `prefix_kv`) of P tokens that every row
        continues (a prompt template's opening): input_ids are the tokens after them, at positions P.., and attend
        to them too, so the shared tokens are computed once instead of in every row."""
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        depth, cache, start = max(layers), None, 0
        if prefix is None:
            mask = jnp.tril(jnp.ones((t, t), bool))[None, None] & attention_mask.astype(bool)[:, None, None, :]
        else:  # a cache holding the prefix, written after it as decoding writes: the suffix attends to both
            start = prefix[0].shape[2]
            slots = [(0, 0), (0, 0), (0, t), (0, 0), (0, 0)]
            k, v = (jnp.pad(jnp.broadcast_to(a, (depth, b, *a.shape[2:])), slots) for a in prefix)
            seen = jnp.pad(jnp.ones((b, start), bool), [(0, 0), (0, t)])
            cache = KVCache(k, v, seen, jnp.asarray(start, jnp.int32))
            mask, _ = _cache_mask(cache, attention_mask)
        positions = jnp.broadcast_to(jnp.arange(start, start + t, dtype=jnp.int32), (b, t))
        x = self._embed(input_ids)
        x, outputs, _, _ = self._run_blocks(x, positions, mask, collect=True, cache=cache, depth=depth)
        if depth == self.cfg.num_layers:  # the last hidden state is after the final norm, as transformers has it
            outputs[-1] = self.norm(x)
        return tuple(outputs[i] for i in layers)

    def prefix_kv(self, prefix_ids: jax.Array, depth: int) -> tuple[jax.Array, jax.Array]:
        """The keys and values [depth, 1, P, K, H] of the first `depth` blocks over the P tokens `prefix_ids`, for
        `hidden_states_at(..., prefix=...)`."""
        p = prefix_ids.shape[-1]
        out = self(prefix_ids.reshape(1, p), cache=KVCache.empty(self.cfg, 1, p, self.opts.dtype), logits=False,
                   positions=jnp.arange(p, dtype=jnp.int32)[None])
        return out.cache.k[:depth], out.cache.v[:depth]

    def _run_blocks(self, x, positions, mask, collect: bool, cache: KVCache | None = None, depth: int | None = None,
                    offsets: jax.Array | None = None, collect_mlp: bool = False):
        """Runs the stacked blocks (the first `depth` of them; default all); returns the output, if collect
        [input, output of each block], with a cache the new keys and values of every layer, stacked
        (k, v) [L, B, T, K, H] (else None), and if collect_mlp each block's MLP output (else None).
        offsets [L, B, T, D]: added to each block's attention output."""
        graphdef, state = nnx.split(self.layers)
        windows = self.cfg.layer_windows
        if depth is not None and depth < self.cfg.num_layers:
            state, windows = jax.tree.map(lambda a: a[:depth], state), windows[:depth]
        uniform = len(set(windows)) == 1  # then the window is a static int: no per-layer mask work

        def body(x, layer):
            layer_state, window, kv, offset = layer
            window = windows[0] if uniform else window
            kv = None if kv is None else (*kv, cache.index)
            y, new_kv, mlp = nnx.merge(graphdef, layer_state)(x, positions, mask, window, kv, offset)
            return y, (y if collect else None, new_kv, mlp if collect_mlp else None)

        policy = REMAT_POLICIES[self.opts.remat]
        if self.opts.remat != "none":
            body = jax.checkpoint(body, policy=policy, prevent_cse=not self.opts.scan_layers)
        x0 = x
        kvs = None if cache is None else (cache.k, cache.v)
        if self.opts.scan_layers:
            xs = (state, None if uniform else jnp.asarray(windows, jnp.int32), kvs, offsets)
            x, (ys, new_kv, mlps) = jax.lax.scan(body, x, xs)
            outputs = [x0, *[ys[i] for i in range(len(windows))]] if collect else []
            mlps = tuple(mlps[i] for i in range(len(windows))) if collect_mlp else None
        else:
            outputs, new_kvs, mlps = [x0], [], []
            for i, window in enumerate(windows):
                layer = jax.tree.map(lambda a, i=i: a[i], (state, kvs, offsets))
                x, (y, kv, mlp) = body(x, (layer[0], window, layer[1], layer[2]))
                outputs.append(y)
                new_kvs.append(kv)
                mlps.append(mlp)
            new_kv = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new_kvs)
            mlps = tuple(mlps) if collect_mlp else None
        return x, outputs, new_kv, mlps

    def _pool(self, x, input_ids, attention_mask):
        """Classifier logits at the last non-pad token, found as LlamaForSequenceClassification does."""
        b, t = input_ids.shape
        if self.cfg.pad_token_id is not None:
            real = input_ids != self.cfg.pad_token_id
        else:
            real = attention_mask.astype(bool)
        last = jnp.argmax(jnp.arange(t)[None, :] * real, axis=-1)
        pooled = x[jnp.arange(b), last]
        return self.score(pooled)


def _cache_mask(cache: KVCache, attention_mask):
    """Attention mask [B, 1, T, S] of T new tokens written at cache.index, and the cache's new slot mask.

    A query sees the real slots up to its own (causal over slots); with left padding, slot distance equals
    position distance between real tokens, so sliding windows can count slots (see _window_mask)."""
    t, s = attention_mask.shape[1], cache.mask.shape[1]
    slots = jax.lax.dynamic_update_slice(cache.mask, attention_mask.astype(bool), (0, cache.index))
    causal = jnp.arange(s)[None, :] <= cache.index + jnp.arange(t)[:, None]  # [T, S]
    return causal[None, None] & slots[:, None, None, :], slots


def _write_cache(cache: KVCache, new_kv, slots, t: int) -> KVCache:
    """Writes the stacked new (k, v) [L, B, T, K, H] at cache.index and advances it by t."""
    at = (0, 0, cache.index, 0, 0)
    k = jax.lax.dynamic_update_slice(cache.k, new_kv[0].astype(cache.k.dtype), at)
    v = jax.lax.dynamic_update_slice(cache.v, new_kv[1].astype(cache.v.dtype), at)
    return KVCache(k, v, slots, cache.index + t)


def add_lora(model: Transformer, lora: LoraConfig, rngs: nnx.Rngs) -> Transformer:
    """Attaches LoRA adapters to the projections named in lora.targets (in place; returns the model)."""
    for path, node in list(nnx.iter_graph(model)):
        if isinstance(node, Linear) and path and path[-1] in lora.targets:
            node.add_lora(lora, rngs.params())
    model.opts = dataclasses.replace(model.opts, lora=lora)
    return model


def merge_lora(model: Transformer) -> Transformer:
    """Folds every adapter into its base kernel (in place; returns the model), e.g. before export."""
    for _, node in list(nnx.iter_graph(model)):
        if isinstance(node, Linear):
            node.merge_lora()
    model.opts = dataclasses.replace(model.opts, lora=None)
    return model


def _init_normal(key, shape, dtype):
    return nnx.initializers.normal(stddev=0.02)(key, shape, dtype)


def _hidden_state_selection(request, num_layers: int) -> frozenset[int]:
    n = num_layers + 1
    if request is True:
        return frozenset(range(n))
    if request is False or request is None:
        return frozenset()
    indices = [request] if isinstance(request, (int, np.integer)) else list(request)
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise ValueError(f"output_hidden_states: indices {bad} out of range for {n} hidden states")
    return frozenset(i % n for i in indices)
