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
from typing import Callable

from reft_jax.config.schema import RunConfig
from reft_jax.data import Batch
from reft_jax.errors import ConfigError
from reft_jax.models import Transformer
from reft_jax.runtime.workdir import Workdir
from reft_jax.train import runs

BatchAt = Callable[[int], Batch]  # a step's batch, a pure function of the step index


@dataclasses.dataclass(frozen=True)
class Method:
    """Everything the harness knows of a method; the stages, preflight and the report ask it, never its name."""

    name: str
    title: str  # its row in report.md
    # the stage whose model finetuning starts from (reft_jax.stages.STAGES: "safety_alignment", or an alignment-stage
    # defence's "alignment:NAME"); None: the base model M0
    start_stage: str | None = None
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

    def path(self, wd: Workdir) -> Path:
        """Where its finetuned model and logs live (a training seed's own: Workdir.seed_root)."""
        return wd.seed_root / (self.folder or self.name)

    def check(self, cfg: RunConfig) -> None:
        """Raises ConfigError when the run's settings leave this method nothing to do (before any training)."""
        if self.lisa:
            runs.check_lisa_budget(cfg)

    def finetune(self, cfg: RunConfig, teacher: Transformer | None, user_at: BatchAt, align_at: BatchAt | None, *,
                 data_id: str) -> runs.Spec:
        """Its finetuning run (reft_jax.train.runs): Lisa's alternating steps, or the user data's CE plus the
        distillation KL from `teacher` and the joint CE of the alignment data as the method adds them.
        user_at / align_at: a step's user / alignment batch (align_at only where `uses_alignment`)."""
        steps = cfg.student.steps
        if self.lisa:
            return runs.lisa(cfg, user_at, align_at, steps=steps, data_id=data_id)
        return runs.student(cfg, teacher, user_at, align_at, steps=steps,
                            beta=cfg.distill.beta if self.distill else 0.0,
                            alpha=cfg.baselines.joint_weight if self.joint else 0.0, data_id=data_id,
                            name=self.name)


METHODS = {m.name: m for m in (
    Method("ref_teacher", "Ref-Teacher (filter + distillation)", filter="ref_teacher", distill=True,
           folder="student"),  # the contract's student/
    Method("no_defense", "No defence (base finetuned on all user data)"),
    Method("sa_ft", "SA -> FT (safety-aligned by SFT, then finetuned on all user data)",
           start_stage="safety_alignment"),
    Method("sa_plus_ft", "SA + FT (SFT on alignment and user data together)", joint=True),
    Method("filter_only", "Ref-Teacher filter only (no distillation)", filter="ref_teacher"),
    Method("distill_only", "Ref-Teacher distillation only (no filter)", distill=True),
    Method("saft", "SAFT filter, then finetuning", filter="saft"),
    Method("llamaguard_filter", "Llama-Guard filter, then finetuning", filter="llama_guard"),
    Method("sa_ft+filter", "SA -> FT with the Ref-Teacher filter", start_stage="safety_alignment",
           filter="ref_teacher"),
    Method("sa_plus_ft+filter", "SA + FT with the Ref-Teacher filter", filter="ref_teacher", joint=True),
    Method("vaccine", "Vaccine (perturbation-aware alignment, then finetuning)", start_stage="alignment:vaccine"),
    Method("repnoise", "RepNoise (representation noising, then finetuning)", start_stage="alignment:repnoise"),
    Method("booster", "Booster (harmful-perturbation attenuation, then finetuning)", start_stage="alignment:booster"),
    Method("lisa", "Lisa (SA, then finetuning alternating with alignment steps)", start_stage="safety_alignment",
           lisa=True),
)}


def title(name: str) -> str:
    """A method's title for the report (its name when it is not one of METHODS: an older report's)."""
    return METHODS[name].title if name in METHODS else name


def selected(spec: str) -> list[Method]:
    """config `methods`: "all", or comma-separated names. Ref-Teacher and no defence always run (the report's
    contract), first."""
    names = list(METHODS) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(f"methods: unknown method {unknown[0]!r} (available: all, {', '.join(METHODS)})")
    names = list(dict.fromkeys(["ref_teacher", "no_defense", *names]))
    return [METHODS[n] for n in names]
