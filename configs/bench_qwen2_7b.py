"""Qwen2-7B-sized benchmark on one GPU: LoRA (the frozen base and teacher in bf16), batch 4 x 2048 tokens,
each decoder block rematerialised; `:full` for full finetuning (does not fit one 80 GB GPU, see
bench_llama3_8b.py).
  reft-jax bench --config configs/bench_qwen2_7b.py --workdir runs/bench_qwen2_7b
"""

from reft_jax.bench.presets import gpu_config


def get_config(arg: str = ""):
    return gpu_config("qwen2-7b", arg, batch_size=4, default_finetune=("lora",), remat="full",
                      lora_param_dtype="bfloat16")
