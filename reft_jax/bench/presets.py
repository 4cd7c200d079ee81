"""GPU benchmark presets: the architectures of public checkpoints, built from random init (no download).

The configs/bench_*.py files pick one and take `FINETUNE[,SEQ_LEN]` as their argument, e.g.
`--config configs/bench_llama3_8b.py:lora,1024`.
"""

from __future__ import annotations

from reft_jax.config import default_config
from reft_jax.errors import ConfigError

LLAMA3_ROPE = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)

MODELS = {
    # meta-llama/Llama-3.2-1B
    "llama3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                        max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                        rms_norm_eps=1e-5, tie_word_embeddings=True),
    # meta-llama/Meta-Llama-3-8B
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=False),
    # Qwen/Qwen2-7B
    "qwen2-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, use_sliding_window=False),
}


def gpu_config(model: str, arg: str, *, batch_size: int, default_finetune: tuple[str, ...], remat: str,
               lora_param_dtype: str = "float32"):
    """bf16 compute, cuDNN attention, rank-16 LoRA on every projection; `arg` = "[full|lora|both][,SEQ_LEN]".

    Full finetuning keeps float32 master weights. LoRA runs may store the frozen base in bf16
    (lora_param_dtype) so that an 8B student and its teacher fit one 80 GB GPU."""
    parts = [p for p in arg.split(",") if p]
    finetune = default_finetune
    seq_len = 2048
    for part in parts:
        if part in ("full", "lora"):
            finetune = (part,)
        elif part == "both":
            finetune = ("full", "lora")
        elif part.isdigit():
            seq_len = int(part)
        else:
            raise ConfigError(f"bench config argument {part!r}: expected full, lora, both or a sequence length")
    c = default_config()
    c.model.init = MODELS[model]
    c.model.dtype = "bfloat16"
    c.model.param_dtype = lora_param_dtype if finetune == ("lora",) else "float32"
    c.model.attention = "cudnn"
    c.model.remat = remat
    c.model.scan_layers = True
    c.model.lora.rank = 16
    c.model.lora.alpha = 32.0
    c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    c.optim.schedule = "constant"
    c.bench.finetune = finetune
    c.bench.batch_size = batch_size
    c.bench.seq_len = seq_len
    c.bench.warmup = 3
    c.bench.iters = 10
    return c
