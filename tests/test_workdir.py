"""The workdir layout: the contract's paths, and one place (the stage registry) for every stage's folder and
"done" marker."""

from pathlib import Path

import reft_jax
from reft_jax.experiment.methods import METHODS
from reft_jax.runtime.workdir import Workdir, model_dir
from reft_jax.stages import FILTERS, STAGES
from reft_jax.stages.defence_alignment import DEFENCES


def test_contract_paths():
    wd = Workdir("/runs/x")
    assert model_dir(wd.teacher) == Path("/runs/x/teacher/model")
    assert wd.refusal_feature == Path("/runs/x/teacher/refusal_feature.npy")
    assert wd.filter_settings == Path("/runs/x/teacher/filter.json")
    assert wd.probe == Path("/runs/x/teacher/probe.npz")
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


def test_a_seeded_stage_and_only_one_has_a_folder_per_training_seed():
    """With config `seeds`, a seed after the first writes the seeded stages (finetunings, alignment stages), its
    evaluation and attacks under seeds/SEED/; the teacher and the filters are the root's for every seed."""
    wd, seed = Workdir("/w"), Workdir("/w").of_seed(3)
    assert wd.of_seed(None) == wd and seed.seed_root == Path("/w/seeds/3") and seed.root == wd.root
    for name, stage in STAGES.items():
        if stage.seeded:
            assert stage.path(seed) == Path("/w/seeds/3") / stage.path(wd).relative_to("/w"), name
            assert "training_seed" in stage.inputs, name
        else:
            assert stage.path(seed) == stage.path(wd) and "training_seed" not in stage.inputs, name
    assert {name for name, stage in STAGES.items() if stage.seeded} == {
        *(m.stage for m in METHODS.values()), "safety_alignment", *(d.stage for d in DEFENCES.values())}
    assert seed.eval == Path("/w/seeds/3/eval") and seed.attack("lisa") == Path("/w/seeds/3/attack/lisa")
    assert seed.report == wd.report and seed.lookalikes == wd.lookalikes and seed.filter_settings == wd.filter_settings


def test_every_method_names_registered_stages():
    for method in METHODS.values():
        assert method.stage in STAGES
        assert method.filter is None or method.filter in FILTERS
        assert method.start_stage is None or method.start_stage in STAGES


# Where names are declared: the stage registry, the methods, the defences' and the filters' registrations.
REGISTRIES = {"stages/__init__.py", "experiment/methods.py", "stages/defence_alignment.py", "stages/common.py"}


def _name_checks(path: Path) -> list[str]:
    """Where the module at `path` compares a method's, filter's, defence's or stage's name as a string, or spells a
    registry-built stage name ("finetune:...", "alignment:...", "filter:...") itself."""
    import ast

    # ("teacher" and "filter" are also the words of a model, a subcommand and a step kind: not checked)
    names = {*METHODS, *FILTERS, *DEFENCES, *(s for s in STAGES if s not in ("teacher", "filter"))}
    prefixes = ("finetune:", "alignment:", "filter:")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(prefixes) \
                and len(node.value) > len(node.value.split(":")[0]) + 1 or \
                isinstance(node, ast.Constant) and node.value in prefixes:
            found.append(f"{path}:{node.lineno}: {node.value!r}")
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                values = side.elts if isinstance(side, (ast.Set, ast.List, ast.Tuple)) else [side]
                found += [f"{path}:{node.lineno}: compares {v.value!r}" for v in values
                          if isinstance(v, ast.Constant) and v.value in names]
    return found


def test_no_method_filter_defence_or_stage_is_special_cased_by_its_name():
    """Folders, inputs, markers and checks come from the registries' objects; no module outside the registries
    compares a name, or builds a stage's name, so a new method or defence gets every check by being registered."""
    package = Path(reft_jax.__file__).parent
    found = [hit for path in sorted(package.rglob("*.py"))
             if str(path.relative_to(package)) not in REGISTRIES and not path.name.endswith("_filter.py")
             for hit in _name_checks(path)]
    assert not found, found


def test_the_name_check_catches_a_comparison(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(plan, m):\n    a = any(s.startswith("finetune:") for s in plan)\n'
                   '    b = {"alignment:repnoise"} & set(plan)\n    return a or b or m.name == "lisa" or "safety_alignment" in plan\n')
    assert len(_name_checks(bad)) == 4
