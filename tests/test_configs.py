"""Every shipped config loads through the CLI's config parsing, with the fields the pipeline reads."""

import pytest

from reft_jax.cli import load_config
from reft_jax.config import default_config
from reft_jax.config.schema import RunConfig
from reft_jax.errors import ConfigError

CONFIGS = ["configs/demo.py", "configs/real_tiny.py", "configs/gemma3_270m.py", "configs/gemma3_270m.py:quick"] + [
    f"configs/literature.py:{m},{t}" for m in ("llama2-7b", "qwen2-7b", "gemma2-9b") for t in ("sst2", "agnews", "gsm8k")
] + ["configs/bench_tiny.py", "configs/bench_llama3_1b.py", "configs/bench_llama3_8b.py:full,1024",
     "configs/bench_qwen2_7b.py"]


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_loads_with_every_default_field(config_file):
    cfg = load_config(config_file, ["--config.seed=3", "--config.mesh.fsdp=2"])
    assert cfg.seed == 3 and cfg.mesh.fsdp == 2
    default = default_config()
    missing = [k for k in _keys(default) if k not in _keys(cfg)]
    assert not missing
    RunConfig.of(cfg)  # every field of the right type, every choice known


def test_configs_are_found_in_the_package_away_from_the_checkout(tmp_path, monkeypatch):
    """`--config configs/NAME.py` works after a plain `pip install .` too: configs/ ships as reft_jax.configs."""
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert load_config("configs/smollm2.py:quick", []).teacher.steps == 10
    with pytest.raises(ConfigError, match="^configs/nothing.py: config file not found$"):
        load_config("configs/nothing.py", [])


@pytest.mark.parametrize("config_file", ["configs/real_tiny.py", "configs/smollm2.py", "configs/gemma3_270m.py"])
def test_real_data_defaults_to_hub_names_with_one_local_folder_field(config_file):
    d = RunConfig.of(load_config(config_file, [])).data
    assert d.alignment.harmful["path"] == "PKU-Alignment/BeaverTails" and not d.local_dir
    assert d.local_files["eval"]["harmful"][0] == "refusal/harmful_val.json"


def _keys(cfg, prefix=""):
    out = set()
    for key, value in cfg.items():
        out.add(prefix + key)
        if hasattr(value, "items"):
            out |= _keys(value, prefix + key + ".")
    return out


def test_literature_recipe_is_lora_on_the_middle_layer():
    cfg = load_config("configs/literature.py:gemma2-9b,gsm8k", [])
    assert cfg.model.lora.rank == 8 and cfg.refusal.layer == 21 and cfg.data.user.task == "gsm8k"
    assert cfg.data.user.n == 1000 and cfg.data.user.p == 0.1


def test_bad_recipe_argument():
    with pytest.raises(ConfigError, match="MODEL,TASK"):
        load_config("configs/literature.py:gpt2,sst2", [])


def test_override_of_the_wrong_type():
    with pytest.raises(ConfigError):
        load_config("configs/demo.py", ["--config.teacher.steps=many"])


@pytest.mark.parametrize("config_file, params", [
    ("configs/bench_llama3_1b.py", 1.236e9), ("configs/bench_llama3_8b.py", 8.030e9),
    ("configs/bench_qwen2_7b.py", 7.616e9)])
def test_gpu_bench_configs_have_the_published_sizes(config_file, params):
    """The parameter counts the model cards give (abstract init: nothing is allocated)."""
    import jax
    from flax import nnx

    from reft_jax.bench import harness
    from reft_jax.models import RuntimeOptions, Transformer, from_hf_dict

    cfg = load_config(config_file, [])
    harness.validate(cfg)
    model_cfg = from_hf_dict(cfg.model.init.to_dict())
    abstract = nnx.eval_shape(lambda: Transformer(model_cfg, RuntimeOptions(), rngs=nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert count == pytest.approx(params, rel=2e-3)
    assert cfg.bench.seq_len == 2048 and cfg.model.dtype == "bfloat16"


def test_gpu_bench_config_argument():
    cfg = load_config("configs/bench_llama3_8b.py:full,1024", [])
    assert tuple(cfg.bench.finetune) == ("full",) and cfg.bench.seq_len == 1024 and cfg.model.param_dtype == "float32"
    with pytest.raises(ConfigError, match="expected full, lora"):
        load_config("configs/bench_llama3_8b.py:fast", [])
