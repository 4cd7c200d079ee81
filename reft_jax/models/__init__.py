"""Hugging Face-compatible decoder models in Flax NNX."""

from reft_jax.models.config import ModelConfig, from_hf_dict, load_hf_config, to_hf_dict
from reft_jax.models.hf_io import from_pretrained, save_pretrained
from reft_jax.models.layers import LoraConfig
from reft_jax.models.peft_io import save_adapter
from reft_jax.models.transformer import ModelOutput, RuntimeOptions, Transformer, add_lora, merge_lora
