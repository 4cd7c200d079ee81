"""The stages of a run, one module each, and their registry.

A stage is a function of the run context (reft_jax.experiment.context.RunContext) that writes one folder of the workdir
(reft_jax.runtime.workdir.Workdir.stage) and is done when that folder's marker exists (Workdir.done). The registry
below says what each stage needs before it; a method's stages and a run's plan are derived from it. A new
defence or filter is one module here and one line in STAGES (and one in reft_jax.experiment.methods.METHODS).

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
from typing import Callable

from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import ALIGNMENT_DEFENCES, METHODS, Method
from reft_jax.stages import (
    defence_alignment,
    finetune,
    llama_guard_filter,
    ref_teacher_filter,
    safety_alignment,
    saft_filter,
    teacher,
)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], object]
    needs: tuple[str, ...] = ()  # stages whose outputs it reads


def filter_stage(name: str) -> str:
    """The stage of filter `name` (methods.FILTERS)."""
    return "filter" if name == "ref_teacher" else f"filter:{name}"


def _finetune(method: Method) -> Stage:
    needs = [filter_stage(method.filter)] if method.filter else []
    needs += ["teacher"] if method.distill else []
    needs += [method.start_stage] if method.start_stage else []
    return Stage(f"finetune:{method.name}", functools.partial(finetune.run, method=method), tuple(needs))


# In the order a run takes them: what others need first.
STAGES = {s.name: s for s in (
    Stage("teacher", teacher.run),
    Stage("safety_alignment", safety_alignment.run),
    *(Stage(f"alignment:{d}", functools.partial(defence_alignment.run, defence=d)) for d in ALIGNMENT_DEFENCES),
    Stage("filter", ref_teacher_filter.run, needs=("teacher",)),
    Stage("filter:saft", saft_filter.run),
    Stage("filter:llama_guard", llama_guard_filter.run),
    *(_finetune(m) for m in METHODS.values()),
)}


def stages_of(method: Method) -> list[str]:
    """The stages that produce this method's model, in the order they run."""
    needed = set()

    def visit(name: str) -> None:
        needed.add(name)
        for need in STAGES[name].needs:
            visit(need)

    visit(f"finetune:{method.name}")
    return [name for name in STAGES if name in needed]


def plan(methods: list[Method]) -> list[str]:
    """Every stage the methods need, once each, in registry order; the finetunings in the methods' order."""
    needed = {name for m in methods for name in stages_of(m)}
    shared = [name for name in STAGES if name in needed and not name.startswith("finetune:")]
    return shared + [f"finetune:{m.name}" for m in methods]


def run_stage(name: str, ctx: RunContext):
    """Runs the stage `name` of the registry; returns what it returns (its folder, or a filter's report)."""
    return STAGES[name].run(ctx)
