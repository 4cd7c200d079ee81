"""The embedded demo: generated data, its own tokenizer, a small Llama-style model from random init.

Runs the whole pipeline on a 2-core CPU with no download:
  reft-jax run --config configs/demo.py --workdir runs/demo
"""

from reft_jax.config import default_config


def get_config():
    c = default_config()
    c.data.demo = True  # sources and tokenizer are generated under WORKDIR/demo
    c.data.buckets = (64, 96)
    c.data.batch_size = 16
    c.data.user.task = "sst2"  # the demo's task is a synthetic SST2-style sentiment task
    c.data.user.n = 400
    c.data.user.p = 0.1
    c.data.alignment.n_harmful = 192  # of the 256 generated: the rest are the check split's, never trained on
    c.data.alignment.n_harmless = 192
    c.data.pool.n_each = 64
    c.data.pool.n_calibration = 32
    c.data.pool.n_check = 32
    c.model.init.update(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2)
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 20
    c.refusal.update_every = 25
    c.teacher.steps = 150
    c.student.steps = 150
    c.defences.lisa.align_steps = 5  # Lisa's 1 : 9 proportion, three cycles in 150 steps
    c.defences.lisa.user_steps = 45
    c.checkpoint.every = 50
    c.eval.max_new_tokens = 24
    return c
