"""Which config.json keys `from_hf_dict` accepts: the rule decided from transformers' own config classes.

Published configs are the `config.json` files of the hub repositories, key for key (found in public sources;
SmolLM2-135M-Instruct and gemma-3-270m are written from the published files as remembered; gemma-3-270m's
maps as the converted GGUF of the same model does, tests/test_gemma3.py).
"""

import pytest
import transformers

from reft_jax.errors import ConfigError
from reft_jax.models import config as config_module
from reft_jax.models import from_hf_dict, to_hf_dict

LLAMA3_ROPE = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"}

PUBLISHED = {
    "meta-llama/Llama-3.2-1B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
        "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": LLAMA3_ROPE,
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
    },
    "meta-llama/Llama-2-7b-hf": {
        "_name_or_path": "meta-llama/Llama-2-7b-hf", "architectures": ["LlamaForCausalLM"], "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
    },
    "mistralai/Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000,
    },
    "Qwen/Qwen2.5-0.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "Qwen/Qwen3-0.6B": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
        "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960,
        "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "google/gemma-2b-it": {
        "_name_or_path": "google/gemma-2b-it", "architectures": ["GemmaForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 2, "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 16384, "max_position_embeddings": 8192,
        "model_type": "gemma", "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
        "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
        "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0", "use_cache": True, "vocab_size": 256000,
    },
    "google/gemma-2-9b-it": {
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
        "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "gemma2",
        "num_attention_heads": 16, "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
        "sliding_window_size": 4096, "torch_dtype": "bfloat16", "transformers_version": "4.42.0.dev0",
        "use_cache": True, "vocab_size": 256000,
    },
    "google/gemma-3-270m": {
        "_sliding_window_pattern": 6, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
        "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 640, "initializer_range": 0.02, "intermediate_size": 2048,
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)],
        "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
        "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": 512, "torch_dtype": "bfloat16", "transformers_version": "4.55.0.dev0",
        "use_bidirectional_attention": False, "use_cache": True, "vocab_size": 262144,
    },
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 8192, "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 24, "num_key_value_heads": 32, "pad_token_id": 2,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 130000,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
        "transformers.js_config": {"dtype": "q4", "kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"},
                                   "use_external_data_format": {"model.onnx": True, "model_fp16.onnx": True}},
        "use_cache": True, "vocab_size": 49152,
    },
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536, "is_llama_config": True, "max_position_embeddings": 8192, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
        "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False,
        "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.42.3", "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16",
                                                                                        "fp16": "float16"}},
        "use_cache": True, "vocab_size": 49152,
    },
}

# What each must map to: (layers, heads, kv heads, head_dim, rope theta, tie) plus what sets the family apart.
EXPECTED = {
    "meta-llama/Llama-3.2-1B-Instruct": ((16, 32, 8, 64, 500000.0, True), dict(
        rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
        rope_original_max_position=8192, eos_token_id=[128001, 128008, 128009])),
    "meta-llama/Llama-2-7b-hf": ((32, 32, 32, 128, 10000.0, False), dict(rope_type="default", rms_norm_eps=1e-5)),
    "mistralai/Mistral-7B-v0.1": ((32, 32, 8, 128, 10000.0, False), dict(layer_windows=(4096,) * 32)),
    "Qwen/Qwen2.5-0.5B-Instruct": ((24, 14, 2, 64, 1e6, True), dict(qkv_bias=True, o_bias=False,
                                                                     layer_windows=(0,) * 24)),
    "Qwen/Qwen3-0.6B": ((28, 16, 8, 128, 1e6, True), dict(qk_norm=True, qkv_bias=False, layer_windows=(0,) * 28)),
    "google/gemma-2b-it": ((18, 8, 1, 256, 10000.0, True), dict(activation="gelu_tanh", norm_plus_one=True,
                                                               embed_scale=True, attn_softcap=None)),
    "google/gemma-2-9b-it": ((42, 16, 8, 256, 10000.0, True), dict(
        activation="gelu_tanh", sandwich_norms=True, attn_softcap=50.0, final_softcap=30.0, scale=256 ** -0.5,
        layer_windows=tuple(4096 if i % 2 == 0 else 0 for i in range(42)))),
    "google/gemma-3-270m": ((18, 4, 1, 256, 1e6, True), dict(
        activation="gelu_tanh", qk_norm=True, sandwich_norms=True, norm_plus_one=True, embed_scale=True,
        rope_local_theta=10000.0, attn_softcap=None, final_softcap=None, scale=256 ** -0.5,
        layer_windows=tuple(0 if (i + 1) % 6 == 0 else 512 for i in range(18)))),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": ((24, 32, 32, 64, 130000.0, True), dict(pad_token_id=2)),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ((30, 9, 3, 64, 100000.0, True), dict(pad_token_id=2, rms_norm_eps=1e-5)),
}
CORE = ("num_layers", "num_heads", "num_kv_heads", "head_dim", "rope_theta", "tie_word_embeddings")

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)
# Each family's class with the features that set it apart switched on.
BUILT = {
    "llama": (transformers.LlamaConfig, dict(rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE, factor=8.0))),
    "mistral": (transformers.MistralConfig, dict(sliding_window=16)),
    "qwen2": (transformers.Qwen2Config, dict(use_sliding_window=True, sliding_window=16, max_window_layers=2)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=16)),
    "gemma": (transformers.GemmaConfig, dict(head_dim=16)),
    "gemma2": (transformers.Gemma2Config, dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=24)),
    "gemma3_text": (transformers.Gemma3TextConfig, dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=24,
                                                        sliding_window_pattern=2, rope_local_base_freq=100.0)),
}


def one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_config_loads(name):
    cfg = from_hf_dict(PUBLISHED[name], where=f"{name}/config.json")
    core, extra = EXPECTED[name]
    assert tuple(getattr(cfg, k) for k in CORE) == core
    assert {k: getattr(cfg, k) for k in extra} == extra
    assert from_hf_dict(to_hf_dict(cfg, PUBLISHED[name])) == cfg


@pytest.mark.parametrize("family", BUILT)
def test_config_written_by_transformers_loads(family):
    config_class, extra = BUILT[family]
    hf_config = config_class(**SMALL, **extra, unk_token_id=0, _model_name_or_path="org/tiny")
    hf = hf_config.to_dict()
    assert hf["unk_token_id"] == 0 and hf["_model_name_or_path"] == "org/tiny"
    cfg = from_hf_dict(hf)
    rope, head_dim = hf_config.rope_parameters, getattr(hf_config, "head_dim", None) or 32 // 4
    if family == "gemma3_text":  # one RoPE per layer type: the global layers' is rope_theta
        assert cfg.rope_local_theta == rope["sliding_attention"]["rope_theta"] == 100.0
        rope = rope["full_attention"]
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.rope_type,
            cfg.tie_word_embeddings) == (4, 4, 2, head_dim, rope["rope_theta"], rope["rope_type"],
                                         hf_config.tie_word_embeddings)
    # The windows transformers' modeling code applies: per layer type, or Mistral's one window for all layers.
    types = getattr(hf_config, "layer_types", None) or ["sliding_attention" if family == "mistral" else
                                                         "full_attention"] * 4
    assert cfg.layer_windows == tuple(hf_config.sliding_window if t == "sliding_attention" else 0 for t in types)
    assert any(cfg.layer_windows) == (family in ("mistral", "qwen2", "gemma2", "gemma3_text"))
    if family == "llama":
        assert (cfg.rope_factor, cfg.rope_original_max_position) == (8.0, 8192)
    if family in ("gemma2", "gemma3_text"):
        assert (cfg.attn_softcap, cfg.final_softcap, cfg.scale) == (
            hf_config.attn_logit_softcapping, hf_config.final_logit_softcapping, 24 ** -0.5)
    assert from_hf_dict(to_hf_dict(cfg, hf)) == cfg


@pytest.mark.parametrize("key,value", [
    ("_commit_hash", "4e20de36"),  # private bookkeeping
    ("output_hidden_states", True),  # the generic base class's
    ("unk_token_id", 0),  # neither class's: transformers never reads it
    ("rope_interleaved", True),  # neither class's
    ("initializer_range", 0.5),  # model-specific, but never changes the forward pass
    ("use_cache", False),  # model-specific, but never changes the forward pass
])
def test_keys_that_cannot_change_the_maths_are_accepted(key, value):
    hf = PUBLISHED["Qwen/Qwen3-0.6B"]
    assert from_hf_dict({**hf, key: value}) == from_hf_dict(hf)


@pytest.mark.parametrize("name,changes,named", [
    ("meta-llama/Llama-3.2-1B-Instruct", {"quantization_config": {"quant_method": "gptq", "bits": 4}},
     "'quantization_config' = {'quant_method': 'gptq', 'bits': 4}"),
    ("meta-llama/Llama-3.2-1B-Instruct", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ("Qwen/Qwen2.5-0.5B-Instruct", {"attention_dropout": 0.1}, "attention_dropout=0.1"),
    ("Qwen/Qwen3-0.6B", {"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ("google/gemma-2-9b-it", {"model_type": "gpt2"}, "'gpt2'"),
    ("google/gemma-3-270m", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0"),
    ("google/gemma-3-270m", {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
     "rope type 'linear' of the sliding-window layers"),
    ("google/gemma-3-270m", {"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "'yarn'"),
    ("google/gemma-3-270m", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ("google/gemma-3-270m", {"layer_types": None, "sliding_window": None}, "sliding_window is not set"),
    ("google/gemma-3-270m", {"model_type": "gemma3"}, "'gemma3' is not supported"),
])
def test_unsupported_values_are_refused(name, changes, named):
    with pytest.raises(ConfigError) as excinfo:
        from_hf_dict({**PUBLISHED[name], **changes}, where=f"{name}/config.json")
    one_line_error(excinfo, f"{name}/config.json", named)


# transformers 5.x's seven family classes declare no model-specific attribute beyond those this code reads or
# knows to be inert, so the rule for unread ones is exercised on real attributes by un-reading one of them (the
# situation before this code implemented it, or when a new transformers adds one).
@pytest.mark.parametrize("family,key,value", [
    ("gemma2", "final_logit_softcapping", 20.0),
    ("gemma", "use_bidirectional_attention", True),
    ("qwen2", "max_window_layers", 5),
    ("llama", "pretraining_tp", 2),
])
def test_unread_model_specific_attribute_must_keep_its_class_default(monkeypatch, family, key, value):
    monkeypatch.setattr(config_module, "_HANDLED_KEYS", config_module._HANDLED_KEYS - {key})
    config_class, _ = BUILT[family]
    hf = {**config_class(**SMALL).to_dict(), key: getattr(config_class(), key)}
    from_hf_dict(hf)
    with pytest.raises(ConfigError) as excinfo:
        from_hf_dict({**hf, key: value}, where="model/config.json")
    one_line_error(excinfo, "model/config.json", f"{key!r} = {value!r}", config_class.__name__)


def test_class_keys_are_derived_once():
    from_hf_dict(PUBLISHED["google/gemma-2-9b-it"])
    before = config_module._class_keys.cache_info()
    from_hf_dict(PUBLISHED["google/gemma-2-9b-it"])
    after = config_module._class_keys.cache_info()
    assert (after.misses, after.hits) == (before.misses, before.hits + 1)
