"""The stages of a run, one module each, and their registry.

A stage is a function of the run context (reft_jax.experiment.context.RunContext) that writes one folder of the
workdir and is done when that folder's marker (its last output) exists. The registry below says, for each stage,
its folder, its marker and what it needs before it; a method's stages and a run's plan are derived from it.
Filters and alignment-stage defences register themselves in their modules (a `Filter` named FILTER, an entry of
defence_alignment.DEFENCES); a method (reft_jax.experiment.methods.METHODS) names them.

    teacher              stages/teacher.py            the Ref-Teacher and its refusal feature
    safety_alignment     stages/safety_alignment.py   the base model SFT-trained on the alignment data
    alignment:DEFENCE    stages/defence_alignment.py  Vaccine's, RepNoise's or Booster's alignment of the base
    filter               stages/ref_teacher_filter.py the teacher's scores of the user data
    filter:saft          stages/saft_filter.py        the SAFT baseline's filter
    filter:llama_guard   stages/llama_guard_filter.py a Llama-Guard judge as a filter
    finetune:METHOD      stages/finetune.py           each method's finetuning
(stages/evaluate.py evaluates the finetuned methods once their stages are done.)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS, Method
from reft_jax.runtime.workdir import FILTER_REPORT, FILTER_SETTINGS, Workdir, model_config
from reft_jax.stages import (
    defence_alignment,
    finetune,
    llama_guard_filter,
    ref_teacher_filter,
    safety_alignment,
    saft_filter,
    teacher,
)
from reft_jax.stages.common import Filter
from reft_jax.stages.defence_alignment import DEFENCES

FILTERS: dict[str, Filter] = {f.name: f for f in (ref_teacher_filter.FILTER, saft_filter.FILTER,
                                                  llama_guard_filter.FILTER)}


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], object]
    folder: Callable[[Workdir], Path]
    needs: tuple[str, ...] = ()  # stages whose outputs it reads
    done: Callable[[Path], Path] = model_config  # its folder -> the marker: its last output

    def path(self, wd: Workdir) -> Path:
        return self.folder(wd)

    def marker(self, wd: Workdir) -> Path:
        return self.done(self.folder(wd))


def _marker(name: str) -> Callable[[Path], Path]:
    return lambda folder: folder / name


def _finetune(method: Method, shared: dict[str, Stage]) -> Stage:
    screen = FILTERS[method.filter] if method.filter else None
    start = shared[method.start_stage] if method.start_stage else None
    needs = [screen.stage] if screen else []
    needs += ["teacher"] if method.distill else []
    needs += [start.name] if start else []
    run = functools.partial(finetune.run, method=method, screen=screen, start=start.folder if start else None)
    return Stage(method.stage, run, method.path, tuple(needs))


def _registry() -> dict[str, Stage]:
    """Every stage, in the order a run takes them: what others need first."""
    shared = [
        Stage("teacher", teacher.run, lambda wd: wd.teacher, done=_marker(FILTER_SETTINGS)),
        Stage("safety_alignment", safety_alignment.run, lambda wd: wd.safety_aligned),
        *(Stage(d.stage, functools.partial(defence_alignment.run, defence=d), d.path) for d in DEFENCES.values()),
        *(Stage(f.stage, f.run, f.path, f.needs, done=_marker(FILTER_REPORT)) for f in FILTERS.values()),
    ]
    shared = {s.name: s for s in shared}
    return {**shared, **{m.stage: _finetune(m, shared) for m in METHODS.values()}}


STAGES = _registry()


def stages_of(method: Method) -> list[str]:
    """The stages that produce this method's model, in the order they run."""
    needed = set()

    def visit(name: str) -> None:
        needed.add(name)
        for need in STAGES[name].needs:
            visit(need)

    visit(method.stage)
    return [name for name in STAGES if name in needed]


def plan(methods: list[Method]) -> list[str]:
    """Every stage the methods need, once each, in registry order; the finetunings in the methods' order."""
    needed = {name for m in methods for name in stages_of(m)}
    finetunes = {m.stage for m in METHODS.values()}
    return [name for name in STAGES if name in needed and name not in finetunes] + [m.stage for m in methods]


def run_stage(name: str, ctx: RunContext):
    """Runs the stage `name` of the registry; returns what it returns (its folder, or a filter's report)."""
    return STAGES[name].run(ctx)
