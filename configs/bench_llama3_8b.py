"""Llama-3-8B-sized benchmark on one GPU: LoRA (the frozen base and teacher in bf16), batch 4 x 2048 tokens,
each decoder block rematerialised. Full finetuning (`:full`) needs about 16 bytes per parameter (float32
weights, gradients and AdamW moments), 128 GB before activations: more than one 80 GB GPU.
  reft-jax bench --config configs/bench_llama3_8b.py --workdir runs/bench_8b
"""

from reft_jax.bench.presets import gpu_config


def get_config(arg: str = ""):
    return gpu_config("llama3-8b", arg, batch_size=4, default_finetune=("lora",), remat="full",
                      lora_param_dtype="bfloat16")
