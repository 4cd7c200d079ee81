"""The typed config: every field of default_config() typed at the edge, and bad values named there."""

import dataclasses

import pytest

from reft_jax.config.defaults import default_config
from reft_jax.config.schema import RunConfig, replace
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
