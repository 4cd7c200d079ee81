"""The workdir layout: one place for every stage's folder and "done" marker (the contract's paths)."""

from pathlib import Path

from reft_jax.runtime.workdir import Workdir, model_dir
from reft_jax.stages import STAGES


def test_contract_paths():
    wd = Workdir("/runs/x")
    assert model_dir(wd.teacher) == Path("/runs/x/teacher/model")
    assert wd.refusal_feature == Path("/runs/x/teacher/refusal_feature.npy")
    assert wd.filter_settings == Path("/runs/x/teacher/filter.json")
    assert wd.filter() == Path("/runs/x/filter") and wd.filter("saft") == Path("/runs/x/filters/saft")
    assert wd.method("ref_teacher") == Path("/runs/x/student") and wd.method("sa_ft") == Path("/runs/x/sa_ft")
    assert wd.report == Path("/runs/x/report.json") and wd.plot("loss_curves") == Path("/runs/x/loss_curves.png")


def test_every_methods_stage_has_a_folder_and_a_done_marker():
    wd = Workdir("/w")
    want = {"teacher": "/w/teacher/filter.json", "safety_alignment": "/w/safety_aligned/model/config.json",
            "filter": "/w/filter/report.json", "filter:saft": "/w/filters/saft/report.json",
            "filter:llama_guard": "/w/filters/llama_guard/report.json",
            "finetune:ref_teacher": "/w/student/model/config.json",
            "finetune:no_defense": "/w/no_defense/model/config.json"}
    stages = set(STAGES)
    assert set(want) <= stages
    for stage in stages:
        assert wd.done(stage).is_relative_to(wd.stage(stage))
    for stage, path in want.items():
        assert wd.done(stage) == Path(path), stage
