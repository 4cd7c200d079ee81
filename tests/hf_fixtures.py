"""Tiny random Hugging Face models of every supported family, built with transformers (PyTorch) as oracles."""

from __future__ import annotations

import numpy as np
import torch
import transformers

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)

# Each family with the features that set it apart switched on, windows shorter than the test sequences.
FAMILIES = {
    "llama": (transformers.LlamaConfig, dict(
        rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama_bias": (transformers.LlamaConfig, dict(attention_bias=True, mlp_bias=True, num_key_value_heads=4,
                                                  rope_scaling=dict(rope_type="linear", factor=2.0))),
    "mistral": (transformers.MistralConfig, dict(sliding_window=5)),
    "qwen2": (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=16)),
    "gemma": (transformers.GemmaConfig, dict(head_dim=16)),
    "gemma2": (transformers.Gemma2Config, dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=24)),
    # Local and global layers with their own RoPE bases, every second layer global; final soft-capping on.
    "gemma3": (transformers.Gemma3TextConfig, dict(
        head_dim=16, sliding_window=4, query_pre_attn_scalar=24, rope_theta=1e6, rope_local_base_freq=100.0,
        sliding_window_pattern=2, final_logit_softcapping=30.0)),
}


def hf_config(family: str, **overrides):
    config_class, extra = FAMILIES[family]
    return config_class(**{**COMMON, **extra, **overrides})


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random offsets on every weight, so that zero-initialised biases and norms are exercised too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def make_hf_model(family: str, folder, *, classifier: bool = False, dtype=torch.float32, **overrides):
    """Builds, perturbs and saves a tiny random model; returns the PyTorch model (eager attention)."""
    config = hf_config(family, **overrides)
    config._attn_implementation = "eager"  # the reference maths, soft-capping included
    torch.manual_seed(0)
    cls = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModelForCausalLM
    model = perturbed(cls.from_config(config)).to(dtype)
    model.save_pretrained(folder)
    return model


def token_batch(seed: int = 0, batch: int = 3, length: int = 12):
    """Random tokens with right padding of different lengths; pad positions hold the pad id 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for b in range(1, batch):
        mask[b, length - 2 * b - 2:] = 0
    ids = np.where(mask == 1, ids, 0)
    return ids, mask
