"""The workdir layout: the contract's paths, and one place (the stage registry) for every stage's folder and
"done" marker."""

from pathlib import Path

import pytest

from reft_jax.experiment.methods import METHODS
from reft_jax.runtime.workdir import Workdir, model_dir
from reft_jax.stages import FILTERS, STAGES
from reft_jax.stages.defence_alignment import DEFENCES


def test_contract_paths():
    wd = Workdir("/runs/x")
    assert model_dir(wd.teacher) == Path("/runs/x/teacher/model")
    assert wd.refusal_feature == Path("/runs/x/teacher/refusal_feature.npy")
    assert wd.filter_settings == Path("/runs/x/teacher/filter.json")
    assert FILTERS["ref_teacher"].path(wd) == Path("/runs/x/filter")
    assert FILTERS["saft"].path(wd) == Path("/runs/x/filters/saft")
    assert METHODS["ref_teacher"].path(wd) == Path("/runs/x/student") and METHODS["sa_ft"].path(wd) == Path("/runs/x/sa_ft")
    assert DEFENCES["vaccine"].path(wd) == Path("/runs/x/vaccine_aligned")
    assert wd.report == Path("/runs/x/report.json") and wd.plot("loss_curves") == Path("/runs/x/loss_curves.png")


def test_every_methods_stage_has_a_folder_and_a_done_marker():
    wd = Workdir("/w")
    want = {"teacher": "/w/teacher/filter.json", "safety_alignment": "/w/safety_aligned/model/config.json",
            "alignment:booster": "/w/booster_aligned/model/config.json",
            "filter": "/w/filter/report.json", "filter:saft": "/w/filters/saft/report.json",
            "filter:llama_guard": "/w/filters/llama_guard/report.json",
            "finetune:ref_teacher": "/w/student/model/config.json",
            "finetune:no_defense": "/w/no_defense/model/config.json"}
    assert set(want) <= set(STAGES)
    for name, stage in STAGES.items():
        assert stage.name == name and stage.marker(wd).is_relative_to(stage.path(wd))
        assert set(stage.needs) <= set(STAGES), name
    for name, path in want.items():
        assert STAGES[name].marker(wd) == Path(path), name
    folders = [stage.path(wd) for stage in STAGES.values()]
    assert len(set(folders)) == len(folders)  # no two stages write one folder


def test_every_method_names_registered_stages():
    for method in METHODS.values():
        assert method.stage in STAGES
        assert method.filter is None or method.filter in FILTERS
        assert method.start_stage is None or method.start_stage in STAGES


@pytest.mark.parametrize("module", ["workdir", "finetune", "evaluate", "pipeline", "attack", "export"])
def test_no_method_filter_or_defence_is_special_cased_by_its_name(module):
    """Folders, inputs and markers come from the registries; a module outside them never branches on a name."""
    import importlib
    import inspect

    path = {"workdir": "reft_jax.runtime.workdir", "finetune": "reft_jax.stages.finetune",
            "evaluate": "reft_jax.stages.evaluate", "pipeline": "reft_jax.pipeline",
            "attack": "reft_jax.stages.attack", "export": "reft_jax.experiment.export"}[module]
    source = inspect.getsource(importlib.import_module(path))
    names = [*METHODS, *FILTERS, *DEFENCES]
    for name in names:
        for pattern in (f'== "{name}"', f'!= "{name}"', f'"{name}" if', f'if name == "{name}"'):
            assert pattern not in source, (module, pattern)
    assert 'partition(":")' not in source
