"""The typed config: every field declared once with its default and meaning, typed at the edge, bad values named there."""

import dataclasses

import pytest

from reft_jax.config import default_config
from reft_jax.config.schema import RunConfig, field_help
from reft_jax.config.typed import replace
from reft_jax.errors import ConfigError


def test_every_default_field_is_typed_and_round_trips():
    cfg = RunConfig.of(default_config())
    assert cfg.to_dict() == {**default_config().to_dict(), "data": {**default_config().to_dict()["data"],
                                                                    "buckets": (128, 256, 512)}}
    assert RunConfig.of(cfg) is cfg and RunConfig.of(cfg.to_dict()) == cfg
    assert isinstance(cfg.optim.learning_rate, float) and cfg.data.alignment.n_harmful is None
    assert cfg.data.max_length == 512 and cfg.data.min_response_tokens is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1


def _with(path, value):
    tree = default_config().to_dict()
    *parents, leaf = path.split(".")
    node = tree
    for name in parents:
        node = node[name]
    node[leaf] = value
    return tree


@pytest.mark.parametrize("path,value,message", [
    ("optim.learning_rate", "fast", "optim.learning_rate: 'fast' is not a number"),
    ("teacher.steps", 2.5, "teacher.steps: 2.5 is not an integer"),
    ("logging.progress", 1, "logging.progress: 1 is not true or false"),
    ("refusal.kind", "cubic", "refusal.kind: 'cubic' is not one of squared, linear"),
    ("eval.judge", "gpt", "eval.judge: 'gpt' is not one of keyword, llama_guard, beavertails"),
    ("data.alignment.n_harmful", "all", "data.alignment.n_harmful: 'all' is not an integer or None"),
    ("data.buckets", (64, "x"), "data.buckets[1]: 'x' is not an integer"),
    ("model.lora", 4, "model.lora.: expected a section, got 4"),
])
def test_a_bad_value_names_its_field(path, value, message):
    with pytest.raises(ConfigError) as e:
        RunConfig.of(_with(path, value))
    assert str(e.value) == message


def test_unknown_and_missing_fields_are_named():
    tree = _with("optim.momentum", 0.9)
    with pytest.raises(ConfigError, match="^optim.momentum: unknown config field$"):
        RunConfig.of(tree)
    del tree["optim"]["momentum"], tree["optim"]["b1"]
    with pytest.raises(ConfigError, match="^optim.b1: missing config field$"):
        RunConfig.of(tree)


def test_sources_may_be_paths_or_hub_mappings_and_selections_split_on_commas():
    cfg = RunConfig.of(_with("data.pool.harmful", {"path": "walledai/AdvBench", "split": "train"}))
    assert cfg.data.pool.harmful == {"path": "walledai/AdvBench", "split": "train"}
    both = RunConfig.of(_with("data.pool.harmful", ["a.json", {"path": "declare-lab/HarmfulQA"}])).data.pool.harmful
    assert both == ("a.json", {"path": "declare-lab/HarmfulQA"})  # a list of sources
    with pytest.raises(ConfigError, match=r"^data.pool.harmful: 3 is not"):
        RunConfig.of(_with("data.pool.harmful", 3))
    assert RunConfig.of(_with("bench.frameworks", "jax,torch")).bench.frameworks == ("jax", "torch")
    assert RunConfig.of(_with("bench.steps", ("student,teacher",))).bench.steps == ("student", "teacher")


def test_replace_sets_a_dotted_field_in_a_copy():
    cfg = RunConfig.of(default_config())
    moved = replace(cfg, "data.eval.harmful", "/data/harmful.jsonl")
    assert moved.data.eval.harmful == "/data/harmful.jsonl" and cfg.data.eval.harmful == ""
    assert moved.data.pool == cfg.data.pool


def test_every_field_is_declared_once_with_what_it_means():
    helps = field_help()
    assert len(helps) > 150 and "model.lora.rank" in helps and "data.pool" in helps  # fields and sections
    assert [path for path, text in helps.items() if len(text.strip()) < 8] == []
    # default_config() is the declaration's defaults: typed, it is the dataclass built with no argument
    assert RunConfig.of(default_config()) == RunConfig()
    c = default_config()
    c.data.alignment.n_harmful = 5  # None defaults stay typed for command-line overrides
    with pytest.raises(TypeError):
        c.data.alignment.n_harmless = "all"
    assert default_config().model.init is not default_config().model.init


def test_library_settings_extend_their_config_sections():
    from reft_jax.config.schema import GCGSection, LoraSection
    from reft_jax.evaluation.gcg import GCGConfig
    from reft_jax.models import LoraConfig
    from reft_jax.models.from_config import lora_config
    from reft_jax.stages.attack import gcg_config

    cfg = replace(RunConfig(), "model.lora", LoraSection(rank=4, alpha=8.0, targets=("q_proj",)))
    assert lora_config(cfg) == LoraConfig(4, 8.0, ("q_proj",)) and lora_config(RunConfig()) is None
    g = gcg_config(replace(cfg, "eval.gcg", GCGSection(steps=7, top_k=3)))
    assert isinstance(g, GCGConfig) and (g.steps, g.top_k, g.candidates) == (7, 3, 128)
