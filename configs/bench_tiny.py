"""Tiny benchmark for a CPU: a 4-layer Llama-style model, float32, the student and teacher steps, full and LoRA,
JAX against PyTorch eager and torch.compile. About 3 minutes on 2 cores, most of it torch.compile compiling:
  reft-jax bench --config configs/bench_tiny.py --workdir runs/bench_tiny
"""

from reft_jax.config import default_config


def get_config():
    c = default_config()
    c.model.init.update(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024)
    c.model.lora.rank = 16
    c.optim.schedule = "constant"
    c.bench.batch_size = 4
    c.bench.seq_len = 256
    c.bench.warmup = 2
    c.bench.iters = 5
    c.bench.same_weights = True  # the first losses of both frameworks must then agree
    return c
