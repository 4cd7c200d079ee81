"""What an export hands a user: a PEFT adapter that peft loads onto the transformers base model with the same
logits, and config keys that transformers 4.x and 5.x both read. (The `reft-jax export` command end to end:
tests/test_own_data.py.)"""

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from reft_jax.models import LoraConfig, ModelConfig, RuntimeOptions, Transformer, save_adapter, save_pretrained
from reft_jax.models.config import from_hf_dict, to_hf_dict


def test_save_adapter_matches_peft_on_every_target(tmp_path):
    import jax
    import peft

    cfg = ModelConfig("llama", 61, 32, 48, 2, 4, 2, 8)
    lora = LoraConfig(4, 8.0, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    model = Transformer(cfg, RuntimeOptions(lora=lora), rngs=nnx.Rngs(0))
    leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.LoRAParam))  # B starts at 0: give every adapter a value
    nnx.update(model, jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(jax.random.key(i), x.shape)
                                                   for i, x in enumerate(leaves)]))
    base = Transformer(cfg, RuntimeOptions(), rngs=nnx.Rngs(0))  # the same seed: the same base weights
    save_pretrained(base, tmp_path / "base")
    save_adapter(model, tmp_path / "adapter", str(tmp_path / "base"))
    hf = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                        tmp_path / "adapter").eval()
    ids = np.random.default_rng(0).integers(0, 61, (2, 7))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids).logits), ref, atol=1e-5)


@pytest.mark.parametrize("family,rope", [
    ("llama", dict(rope_type="llama3", rope_factor=8.0, rope_theta=500000.0, rope_low_freq_factor=1.0,
                   rope_high_freq_factor=4.0, rope_original_max_position=8192)),
    ("llama", dict(rope_type="linear", rope_factor=2.0)),
    ("mistral", dict(rope_theta=1e6)),
    ("qwen2", dict(rope_type="linear", rope_factor=4.0)),
    ("qwen3", dict(rope_type="linear", rope_factor=4.0)),
    ("gemma", dict(rope_theta=10000.0)),
    ("gemma2", dict(rope_theta=10000.0)),
])
def test_rope_keys_read_by_transformers_4_and_5(family, rope, tmp_path):
    cfg = dataclasses.replace(from_hf_dict(to_hf_dict(ModelConfig(family, 61, 32, 48, 2, 4, 2, 8))), **rope)
    hf = to_hf_dict(cfg)
    # transformers 4.x (4.56 and later 4.x): rope_theta at the top, rope_scaling None or {rope_type, factor, ...}
    assert hf["rope_theta"] == cfg.rope_theta
    if cfg.rope_type == "default":
        assert hf["rope_scaling"] is None
    else:
        want = {"rope_type", "factor"} | ({"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
                                          if cfg.rope_type == "llama3" else set())
        assert set(hf["rope_scaling"]) == want and hf["rope_scaling"]["rope_type"] == cfg.rope_type
    # transformers 5 (installed here) reads the same file to the same RoPE.
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters["rope_theta"] == cfg.rope_theta
    assert loaded.rope_parameters["rope_type"] == cfg.rope_type
    assert loaded.rope_parameters.get("factor", 1.0) == cfg.rope_factor
    assert from_hf_dict(hf) == cfg


@pytest.mark.parametrize("scaling", [{}, dict(rope_type="linear", rope_factor=8.0)])
def test_gemma3_rope_keys_read_by_transformers_4_and_5(scaling, tmp_path):
    """Gemma 3's two RoPE bases: 4.x reads rope_theta, rope_scaling and rope_local_base_freq, 5.x one set per layer
    type; the global layers' may be scaled, the sliding-window layers' never is."""
    cfg = dataclasses.replace(from_hf_dict(to_hf_dict(ModelConfig("gemma3_text", 61, 32, 48, 2, 4, 2, 8))),
                              rope_theta=1e6, rope_local_theta=1e4, **scaling)
    hf = to_hf_dict(cfg)
    assert (hf["rope_theta"], hf["rope_local_base_freq"]) == (1e6, 1e4)
    assert (hf["rope_scaling"] or {}).get("factor") == scaling.get("rope_factor")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    full, local = loaded.rope_parameters["full_attention"], loaded.rope_parameters["sliding_attention"]
    assert (full["rope_theta"], full["rope_type"], full.get("factor", 1.0)) == (1e6, cfg.rope_type, cfg.rope_factor)
    assert (local["rope_theta"], local["rope_type"]) == (1e4, "default")
    assert from_hf_dict(hf) == cfg
