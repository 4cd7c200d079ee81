"""The Flax decoder against transformers' PyTorch models: logits, hidden states, classifier, bf16, round trip."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_fixtures import FAMILIES, make_hf_model, token_batch

from reft_jax.models import (
    LoraConfig,
    ModelConfig,
    RuntimeOptions,
    Transformer,
    from_pretrained,
    merge_lora,
    save_pretrained,
)

TOL = 1e-4
PREFIX = 4  # shared opening tokens of the prefix path (hidden_states_at's `prefix`)


def torch_outputs(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    return out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states]


def max_err(a, b, valid):
    return float(np.abs(np.asarray(a, np.float32) - b)[valid].max())


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model = make_hf_model(request.param, folder)
    return request.param, folder, model


@pytest.mark.parametrize("scan_layers,remat", [(False, "none"), (True, "full")])
def test_logits_and_hidden_states_match_transformers(family_checkpoint, scan_layers, remat):
    family, folder, hf_model = family_checkpoint
    ids, mask = token_batch()
    ids[:, :PREFIX] = ids[0, :PREFIX]  # every row opens with the same tokens (a prompt template's)
    ref_logits, ref_hidden = torch_outputs(hf_model, ids, mask)
    model = from_pretrained(folder, scan_layers=scan_layers, remat=remat)
    out = model(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    valid = mask.astype(bool)  # padded positions are garbage in both implementations
    assert out.logits.shape == ref_logits.shape
    assert max_err(out.logits, ref_logits, valid) <= TOL
    assert len(out.hidden_states) == len(ref_hidden) == hf_model.config.num_hidden_layers + 1
    for i, (ours, ref) in enumerate(zip(out.hidden_states, ref_hidden)):
        assert max_err(ours, ref, valid) <= TOL, f"hidden state {i}"
    # The truncated pass the refusal feature and the filters use: only the blocks up to the deepest layer asked.
    last = hf_model.config.num_hidden_layers
    for layers in ((last // 2,), (1, last)):
        for i, ours in zip(layers, model.hidden_states_at(jnp.asarray(ids), jnp.asarray(mask), layers)):
            assert max_err(ours, ref_hidden[i], valid) <= TOL, f"hidden_states_at {i}"
        # The shared opening's keys and values computed once, the rows' other tokens attending to them.
        prefix = model.prefix_kv(jnp.asarray(ids[0, :PREFIX]), max(layers))
        after = model.hidden_states_at(jnp.asarray(ids[:, PREFIX:]), jnp.asarray(mask[:, PREFIX:]), layers, prefix)
        for i, ours in zip(layers, after):
            assert max_err(ours, ref_hidden[i][:, PREFIX:], valid[:, PREFIX:]) <= TOL, f"after the prefix, {i}"


def test_sliding_window_is_exercised(tmp_path):
    """The Mistral test case only proves the window if the window changes the result at this length."""
    ids, mask = token_batch()
    windowed = from_pretrained(_saved(tmp_path / "w", "mistral"))
    full = from_pretrained(_saved(tmp_path / "f", "mistral", sliding_window=None))
    diff = np.abs(np.asarray(windowed(ids, mask).logits) - np.asarray(full(ids, mask).logits))
    assert diff[mask.astype(bool)].max() > 1e-3


def test_gemma3_windows_and_rope_bases_are_exercised(tmp_path):
    """The Gemma 3 case proves its sliding windows and its local RoPE base only if each changes the result."""
    ids, mask = token_batch()
    logits = lambda folder: np.asarray(from_pretrained(folder)(ids, mask).logits)  # noqa: E731
    base = logits(_saved(tmp_path / "g", "gemma3"))
    for name, overrides in (("window", dict(sliding_window_pattern=1)), ("local RoPE", dict(rope_local_base_freq=1e6))):
        diff = np.abs(logits(_saved(tmp_path / name, "gemma3", **overrides)) - base)
        assert diff[mask.astype(bool)].max() > 1e-3, name


def test_gemma3_scaled_global_rope_matches_transformers(tmp_path):
    """Gemma 3 from 1B up scales the global layers' RoPE (linear, factor 8) and not the local layers'."""
    hf_model = make_hf_model("gemma3", tmp_path, rope_scaling=dict(rope_type="linear", factor=8.0))
    ids, mask = token_batch()
    ref, _ = torch_outputs(hf_model, ids, mask)
    model = from_pretrained(tmp_path)
    assert (model.cfg.rope_type, model.cfg.rope_factor, model.cfg.rope_local_theta) == ("linear", 8.0, 100.0)
    assert max_err(model(ids, mask).logits, ref, mask.astype(bool)) <= TOL


def _saved(folder, family, **overrides):
    make_hf_model(family, folder, **overrides)
    return folder


def test_selected_hidden_states_only():
    ids, mask = token_batch()
    model = Transformer(ModelConfig("llama", 97, 32, 48, 3, 4, 2, 8), rngs=nnx.Rngs(0))
    out = model(ids, mask, output_hidden_states=[2, -1])
    full = model(ids, mask, output_hidden_states=True)
    assert [h is None for h in out.hidden_states] == [True, True, False, False]
    np.testing.assert_array_equal(out.hidden_states[2], full.hidden_states[2])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3"])
def test_sequence_classifier_matches_transformers(tmp_path, family):
    hf_model = make_hf_model(family, tmp_path, classifier=True, num_labels=3)
    ids, mask = token_batch()
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = from_pretrained(tmp_path)
    assert model.cfg.num_labels == 3
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)).logits)
    assert logits.shape == (3, 3)
    np.testing.assert_allclose(logits, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3"])
def test_bfloat16_close_to_transformers(tmp_path, family):
    """bf16 compute and storage against PyTorch float32: the relative error is reported and loosely bounded."""
    hf_model = make_hf_model(family, tmp_path)
    ids, mask = token_batch()
    ref, _ = torch_outputs(hf_model, ids, mask)
    model = from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert model.embed_tokens[...].dtype == jnp.bfloat16
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)).logits, np.float32)
    valid = mask.astype(bool)
    rel = np.linalg.norm((logits - ref)[valid]) / np.linalg.norm(ref[valid])
    print(f"{family} bf16 relative error of logits: {rel:.4f}")
    assert rel < 0.05


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_through_transformers(tmp_path, family):
    """reft-jax save_pretrained -> transformers from_pretrained gives the same logits."""
    make_hf_model(family, tmp_path / "orig")
    model = from_pretrained(tmp_path / "orig")
    save_pretrained(model, tmp_path / "export")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation="eager")
    ids, mask = token_batch()
    ref, _ = torch_outputs(reloaded, ids, mask)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)).logits)
    assert max_err(ours, ref, mask.astype(bool)) <= TOL


def test_lora_merge_and_export(tmp_path):
    make_hf_model("qwen2", tmp_path / "orig")
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    model = from_pretrained(tmp_path / "orig", lora=lora)
    ids, mask = token_batch()
    base = np.asarray(model(ids, mask).logits)
    # B starts at zero: the adapted model equals the base; then give the adapters a random nonzero value.
    np.testing.assert_allclose(base, np.asarray(from_pretrained(tmp_path / "orig")(ids, mask).logits), atol=1e-6)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        var.set_value(jax.random.normal(jax.random.key(1), var.shape) * 0.1)
    adapted = np.asarray(model(ids, mask).logits)
    assert np.abs(adapted - base).max() > 1e-3
    save_pretrained(model, tmp_path / "export")  # merges a copy
    assert model.opts.lora is not None and len(nnx.state(model, nnx.LoRAParam)) > 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    ref, _ = torch_outputs(reloaded, ids, mask)
    assert max_err(adapted, ref, mask.astype(bool)) <= TOL
    merged = np.asarray(merge_lora(model)(ids, mask).logits)
    assert max_err(merged, adapted, mask.astype(bool)) <= TOL


def test_lora_params_only_on_targets():
    cfg = ModelConfig("llama", 97, 32, 48, 2, 4, 2, 8)
    model = Transformer(cfg, RuntimeOptions(lora=LoraConfig(rank=2, targets=("v_proj", "up_proj"))),
                        rngs=nnx.Rngs(0))
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))}
    assert paths == {"layers/self_attn/v_proj/lora_a", "layers/self_attn/v_proj/lora_b",
                     "layers/mlp/up_proj/lora_a", "layers/mlp/up_proj/lora_b"}


def test_sharded_checkpoint_round_trip(tmp_path):
    """Writing with a small shard size gives model-0000k-of-0000n files and an index transformers reads."""
    make_hf_model("llama", tmp_path / "orig")
    model = from_pretrained(tmp_path / "orig")
    save_pretrained(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    ids, mask = token_batch()
    again = from_pretrained(tmp_path / "sharded")
    np.testing.assert_array_equal(np.asarray(again(ids, mask).logits), np.asarray(model(ids, mask).logits))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    ref, _ = torch_outputs(reloaded, ids, mask)
    assert max_err(model(ids, mask).logits, ref, mask.astype(bool)) <= TOL
