"""Models by hub id: `org/name[@revision]` is read from the hub's cache in its layout. No hub is reachable from
the tests: they build the cache folder a download would leave and run with HF_HUB_OFFLINE=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from reft_jax.config import default_config
from reft_jax.config.schema import RunConfig
from reft_jax.config.typed import replace
from reft_jax.errors import CheckpointError
from reft_jax.experiment.context import RunContext
from reft_jax.models import (
    LoraConfig,
    ModelConfig,
    RuntimeOptions,
    Transformer,
    from_pretrained,
    hub,
    save_adapter,
    save_pretrained,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(root: Path, repo: str, weights: bool = True) -> Path:
    """The hub cache's layout for `repo` at COMMIT (refs/main names it): what snapshot_download leaves."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    model = Transformer(ModelConfig("llama", 61, 32, 48, 2, 4, 2, 8), RuntimeOptions(), rngs=nnx.Rngs(3))
    save_pretrained(model, snapshot)
    if not weights:
        (snapshot / "model.safetensors").rename(snapshot / "pytorch_model.bin")
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hub"
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(root))):
        monkeypatch.setattr(constants, name, value)
    return root


def test_hub_ids_are_told_from_local_paths(tmp_path, monkeypatch):
    assert hub.is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") and hub.is_hub_id("org/name@v1.0")
    assert hub.split_id("org/name@v1.0") == ("org/name", "v1.0") and hub.split_id("org/name") == ("org/name", None)
    (tmp_path / "org").mkdir()
    monkeypatch.chdir(tmp_path)
    for local in ("./model", "/abs/model", "~/model", "model.gguf", "org"):
        assert not hub.is_hub_id(local), local
    (tmp_path / "org" / "name").mkdir()
    assert not hub.is_hub_id("org/name")  # a folder of that name exists here: it is read, not downloaded


def test_a_hub_id_loads_from_the_cache_with_the_folders_weights(offline_cache):
    snapshot = _cache(offline_cache, "tiny-org/tiny-llama")
    ids = np.arange(12).reshape(2, 6)
    want = np.asarray(from_pretrained(snapshot)(ids).logits)
    for name in ("tiny-org/tiny-llama", "tiny-org/tiny-llama@main", f"tiny-org/tiny-llama@{COMMIT}"):
        np.testing.assert_array_equal(np.asarray(from_pretrained(name)(ids).logits), want)


def test_a_run_config_naming_a_hub_model_resolves_to_its_snapshot(offline_cache, tmp_path):
    snapshot = _cache(offline_cache, "tiny-org/tiny-llama")
    cfg = replace(RunConfig.of(default_config()), "model.path", "tiny-org/tiny-llama@main")
    ctx = RunContext.create(cfg, tmp_path)
    assert Path(ctx.cfg.model.path) == snapshot and ctx.base_model_id == "tiny-org/tiny-llama@main"
    # An adapter trained on it names the hub model, not the cache folder.
    lora = LoraConfig(2, 4.0, ("q_proj",))
    save_adapter(from_pretrained(ctx.cfg.model.path, lora=lora), tmp_path / "adapter", ctx.base_model_id)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("tiny-org/tiny-llama", "main")


def test_missing_models_and_pickle_only_models_are_one_line_errors(offline_cache):
    with pytest.raises(CheckpointError, match=r"^nobody/nothing: cannot download from the hub \("):
        from_pretrained("nobody/nothing")
    _cache(offline_cache, "tiny-org/pickled", weights=False)
    with pytest.raises(CheckpointError, match="^tiny-org/pickled: no safetensors weights on the hub"):
        from_pretrained("tiny-org/pickled")


def test_the_offline_environment_variable_is_honoured(tmp_path):
    """As a user would run it: the environment variables alone, in a fresh process."""
    _cache(tmp_path / "hub", "tiny-org/tiny-llama")
    code = ("from reft_jax.models import from_pretrained; m = from_pretrained('tiny-org/tiny-llama'); "
            "print(m.cfg.num_layers)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "2"
