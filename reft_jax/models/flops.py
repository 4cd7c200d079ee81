"""Model FLOPs of the Ref-Teacher steps, counted the MaxText way.

A matmul of an [m, k] by a [k, n] operand costs 2 m k n FLOPs. Per token, a forward pass through the weight
matrices costs 2 N, where N counts the matmul weights: the attention and MLP projections of every layer and
the output projection to the vocabulary (a matmul even when tied to the embedding; the embedding lookup is
not). Training adds the backward pass: 2 N for the activation gradients and 2 N for the weight gradients,
6 N per trained token. Under LoRA the frozen weights get no weight gradients, so a LoRA token costs
2 (N + N_lora) + 2 (N + N_lora) + 2 N_lora = 4 N + 6 N_lora. Causal attention adds 4 h d per attended
(query, key) pair per layer forward (QK^T and AV), and twice that backward; a row of T tokens attends to
T (T + 1) / 2 pairs, fewer under a sliding window. Norms, RoPE, softmax and the optimizer are not counted:
these are model FLOPs, what MFU divides by, not hardware FLOPs.
"""

from __future__ import annotations

from reft_jax.models.config import ModelConfig
from reft_jax.models.layers import LoraConfig


def _projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of one decoder block, keyed by its Hugging Face name."""
    d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    return dict(q_proj=(d, q), k_proj=(d, kv), v_proj=(d, kv), o_proj=(q, d), gate_proj=(d, f), up_proj=(d, f),
                down_proj=(f, d))


def matmul_params(cfg: ModelConfig) -> int:
    """N: the weights that a token meets in a matmul (all layers' projections plus the vocabulary projection)."""
    per_layer = sum(i * o for i, o in _projection_shapes(cfg).values())
    head = cfg.num_labels if cfg.is_classifier else cfg.vocab_size
    return cfg.num_layers * per_layer + cfg.hidden_size * head


def lora_params(cfg: ModelConfig, lora: LoraConfig) -> int:
    """N_lora: adapter weights, r (in + out) per targeted projection per layer."""
    shapes = _projection_shapes(cfg)
    return cfg.num_layers * sum(lora.rank * (i + o) for name, (i, o) in shapes.items() if name in lora.targets)


def attended_pairs(seq_len: int, window: int = 0) -> int:
    """(query, key) pairs of one causal row of seq_len tokens; window > 0 keeps the last `window` keys."""
    if window <= 0 or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


def attention_forward_flops(cfg: ModelConfig, batch: int, seq_len: int) -> int:
    """QK^T and AV of every layer, forward, for `batch` rows of `seq_len` tokens."""
    per_pair = 4 * cfg.num_heads * cfg.head_dim
    return batch * per_pair * sum(attended_pairs(seq_len, w) for w in cfg.layer_windows)


def forward_flops(cfg: ModelConfig, batch: int, seq_len: int, lora: LoraConfig | None = None) -> int:
    """One forward pass (e.g. the frozen teacher's)."""
    n = matmul_params(cfg) + (lora_params(cfg, lora) if lora else 0)
    return 2 * n * batch * seq_len + attention_forward_flops(cfg, batch, seq_len)


def train_flops(cfg: ModelConfig, batch: int, seq_len: int, lora: LoraConfig | None = None) -> int:
    """One forward and backward pass of the trained model: 6 N per token (4 N + 6 N_lora under LoRA)."""
    n = matmul_params(cfg)
    per_token = 4 * n + 6 * lora_params(cfg, lora) if lora else 6 * n
    return per_token * batch * seq_len + 3 * attention_forward_flops(cfg, batch, seq_len)


def input_gradient_flops(cfg: ModelConfig, batch: int, seq_len: int, lora: LoraConfig | None = None) -> int:
    """A forward pass and the backward of the activations alone, no weight gradient (Vaccine's first pass, which
    differentiates with respect to the attention outputs only): 4 (N + N_lora) per token."""
    n = matmul_params(cfg) + (lora_params(cfg, lora) if lora else 0)
    return 4 * n * batch * seq_len + 3 * attention_forward_flops(cfg, batch, seq_len)


def logit_lens_flops(cfg: ModelConfig, batch: int, seq_len: int, lora: LoraConfig | None = None) -> int:
    """RepNoise's vocabulary projection of the embedding and of every block's output but the last (which the
    forward pass counts), forward and backward; the projection gets weight gradients unless under LoRA."""
    return cfg.num_layers * (4 if lora else 6) * cfg.hidden_size * cfg.vocab_size * batch * seq_len
