"""Bad checkpoints give one-line errors that name the file and the problem; pickle is never loaded."""

import json
import pickle

import pytest
from hf_fixtures import make_hf_model

from reft_jax.errors import CheckpointError, ConfigError
from reft_jax.models import from_pretrained, save_pretrained


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    make_hf_model("llama", folder)
    return folder


def copy_of(checkpoint, tmp_path):
    for f in checkpoint.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("changes,named", [
    ({"pretraining_tp": 2}, "pretraining_tp=2"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "'yarn'"),
    ({"hidden_act": "relu2"}, "'relu2'"),
    ({"model_type": "gpt2"}, "'gpt2'"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"quantization_config": {"quant_method": "gptq"}}, "'quantization_config'"),
])
def test_unsupported_config_attribute(checkpoint, tmp_path, changes, named):
    folder = copy_of(checkpoint, tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(ConfigError) as excinfo:
        from_pretrained(folder)
    one_line_error(excinfo, "config.json", named)


def test_missing_shard(checkpoint, tmp_path):
    model = from_pretrained(checkpoint)
    save_pretrained(model, tmp_path, max_shard_bytes=20_000)
    second = sorted(tmp_path.glob("model-*-of-*.safetensors"))[1]
    second.unlink()
    with pytest.raises(CheckpointError) as excinfo:
        from_pretrained(tmp_path)
    one_line_error(excinfo, "model.safetensors.index.json", "missing", second.name)


def test_shape_mismatch(checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    edit_config(folder, intermediate_size=64)
    with pytest.raises(CheckpointError) as excinfo:
        from_pretrained(folder)
    one_line_error(excinfo, "model.safetensors", "mlp", "has shape", "expected")


def test_tensors_the_config_does_not_explain(checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    edit_config(folder, num_hidden_layers=2)
    with pytest.raises(CheckpointError) as excinfo:
        from_pretrained(folder)
    one_line_error(excinfo, "model.layers.2.")


class _Bomb:
    """Unpickling this writes a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_pickle_checkpoint_is_refused_and_never_unpickled(checkpoint, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
    sentinel = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb(sentinel)))
    with pytest.raises(CheckpointError) as excinfo:
        from_pretrained(folder)
    one_line_error(excinfo, "pytorch_model.bin", "pickle", "safetensors")
    assert not sentinel.exists()


def test_not_a_safetensors_file(checkpoint, tmp_path):
    folder = copy_of(checkpoint, tmp_path)
    (folder / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError) as excinfo:
        from_pretrained(folder)
    one_line_error(excinfo, "model.safetensors")


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        from_pretrained(tmp_path)
    one_line_error(excinfo, "config.json")
