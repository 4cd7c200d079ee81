"""The methods a run compares: Ref-Teacher, its ablations, and the baselines, all in one harness.

A method is a recipe over four choices: the model finetuning starts from (the base, the base after safety
alignment by SFT on the alignment data, or after an alignment-stage defence: Vaccine, RepNoise, Booster), the
filter in front of the user data (none, the Ref-Teacher's, SAFT's or a Llama-Guard judge's), and what the
alignment data adds to the finetuning (the teacher's distillation KL, plain CE when it is trained jointly, or
Lisa's alternating alignment steps). Filters share one data flow (a FilterResult whose
flagged examples are removed before batching), so swapping one leaves the rest of the pipeline as it is.
The stages that produce a method's model follow from its recipe (reft_jax.stages.stages_of).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reft_jax.errors import ConfigError
from reft_jax.runtime.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    # "base" (M0), "sa" (M0 after SFT on the alignment data) or an alignment-stage defence of
    # reft_jax.stages.defence_alignment.DEFENCES
    start: str = "base"
    filter: str | None = None  # a filter of reft_jax.stages.FILTERS, or None: finetune on all user data
    distill: bool = False  # + beta * KL(teacher || student) on alignment responses
    joint: bool = False  # + CE on alignment responses (SFT on alignment and user data together)
    lisa: bool = False  # Lisa's finetuning: alignment and user steps alternate, with a proximal term
    folder: str = ""  # its folder in the workdir; "" = its name

    @property
    def uses_alignment(self) -> bool:
        """Its finetuning reads the alignment data (distillation, joint SFT or Lisa's alignment steps)."""
        return self.distill or self.joint or self.lisa

    @property
    def stage(self) -> str:
        """Its finetuning stage (reft_jax.stages.STAGES)."""
        return f"finetune:{self.name}"

    @property
    def start_stage(self) -> str | None:
        """The stage that produces the starting model (reft_jax.stages.STAGES); None for the base itself."""
        return {"base": None, "sa": "safety_alignment"}.get(self.start, f"alignment:{self.start}")

    def path(self, wd: Workdir) -> Path:
        """Where its finetuned model and logs live."""
        return wd.root / (self.folder or self.name)


METHODS = {m.name: m for m in (
    Method("ref_teacher", filter="ref_teacher", distill=True, folder="student"),  # the contract's student/
    Method("no_defense"),
    Method("sa_ft", start="sa"),
    Method("sa_plus_ft", joint=True),
    Method("filter_only", filter="ref_teacher"),
    Method("distill_only", distill=True),
    Method("saft", filter="saft"),
    Method("llamaguard_filter", filter="llama_guard"),
    Method("sa_ft+filter", start="sa", filter="ref_teacher"),
    Method("sa_plus_ft+filter", filter="ref_teacher", joint=True),
    Method("vaccine", start="vaccine"),
    Method("repnoise", start="repnoise"),
    Method("booster", start="booster"),
    Method("lisa", start="sa", lisa=True),
)}


def selected(spec: str) -> list[Method]:
    """config `methods`: "all", or comma-separated names. Ref-Teacher and no defence always run (the report's
    contract), first."""
    names = list(METHODS) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown method {unknown[0]!r} (available: all, {', '.join(METHODS)})")
    names = list(dict.fromkeys(["ref_teacher", "no_defense", *names]))
    return [METHODS[n] for n in names]
