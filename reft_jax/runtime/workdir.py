"""The paths of a run's workdir. The fixed ones are here; the folders and "done" markers of the registered stages
(methods, filters, defences) are declared with them (reft_jax.stages.STAGES).

  demo/                        generated demo data and tokenizer (data.demo)
  base_model/                  a GGUF checkpoint converted once (model.path = x.gguf)
  tokenizer/                   a tokenizer trained on the sources (data.tokenizer = "train")
  lookalikes.json              the base model's answers to the lookalike prompts (data.alignment.n_lookalikes)
  teacher/model/               the teacher as a Hugging Face folder (LoRA merged)
  teacher/refusal_feature.npy, filter.json (layers, tau, direction, scorer, check)  the filter's directions and settings
  teacher/probe.npz            the filter's probe, when it ships one (filter.json's scorer = "probe")
  teacher/refusal_prompts.jsonl   the labelled prompts of each split (train, calibration, check)
  filter/scores.jsonl, report.json, kept.jsonl, flagged.jsonl   the Ref-Teacher filter on the user data
  filters/NAME/...                          the same for the other filters (saft, llama_guard)
  safety_aligned/model/        the base after SFT on the alignment data (sa_ft, lisa)
  DEFENCE_aligned/model/       the base after an alignment-stage defence (vaccine, repnoise, booster)
  student/model/               Ref-Teacher's student; every other method's in METHOD/model/
  student/adapter/             its LoRA adapter as a PEFT folder (model.lora.rank > 0); METHOD/adapter/ likewise
  eval/report.json, report.json, report.md and the plots
  attack/NAME/report.json      the GCG attack on a method's (or reference's) model
  seeds/SEED/                  with config `seeds`, each seed's after the first: its finetunings (student/, METHOD/),
                               alignment stages (safety_aligned/, DEFENCE_aligned/), eval/ and attack/ (the first
                               seed's are the folders above; the teacher and the filters serve every seed)

Every trained stage folder also holds metrics.jsonl and checkpoints/ (the loop), and every stage folder
cost.json (reft_jax.experiment.cost).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
COST = "cost.json"
MODEL = "model"
ADAPTER = "adapter"
FILTER_REPORT = "report.json"
FILTER_SETTINGS = "filter.json"  # the teacher stage's filter: layers, tau, direction, scorer, check figures
FILTER_SCORES = "scores.jsonl"
KEPT = "kept.jsonl"  # a filter's kept and flagged user rows, as read, with their scores
FLAGGED = "flagged.jsonl"
USER_DATA = "user_data.json"  # which user rows a finetuning trained on


def _under_root(*parts: str) -> property:
    return property(lambda self: self.root.joinpath(*parts))


def _under_seed_root(*parts: str) -> property:
    return property(lambda self: self.seed_root.joinpath(*parts))


@dataclasses.dataclass(frozen=True)
class Workdir:
    root: Path
    seed: int | None = None  # a training seed's view (config `seeds`): its trained runs under seeds/SEED/

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def seed_root(self) -> Path:
        """Where this view's finetunings, alignment stages, evaluation and attacks go: the root, or for a training
        seed of a run of several (config `seeds`, after the first) seeds/SEED/."""
        return self.root if self.seed is None else self.root / "seeds" / str(self.seed)

    def of_seed(self, seed: int | None) -> Workdir:
        """The workdir as the run of training seed `seed` sees it (None: the root's own, the first seed's)."""
        return dataclasses.replace(self, seed=seed)

    demo = _under_root("demo")
    base_model = _under_root("base_model")
    tokenizer = _under_root("tokenizer")
    lookalikes = _under_root("lookalikes.json")
    teacher = _under_root("teacher")
    safety_aligned = _under_seed_root("safety_aligned")
    eval = _under_seed_root("eval")
    report = _under_root("report.json")
    refusal_feature = _under_root("teacher", "refusal_feature.npy")
    filter_settings = _under_root("teacher", FILTER_SETTINGS)
    probe = _under_root("teacher", "probe.npz")
    refusal_prompts = _under_root("teacher", "refusal_prompts.jsonl")

    def attack(self, name: str) -> Path:
        """Where the GCG attack on method (or reference) `name` writes its report."""
        return self.seed_root / "attack" / name

    def plot(self, name: str) -> Path:
        return self.root / f"{name}.png"


def model_dir(stage_folder: Path) -> Path:
    """A stage's saved model (a Hugging Face folder)."""
    return Path(stage_folder) / MODEL


def adapter_dir(stage_folder: Path) -> Path:
    """A finetuned stage's LoRA adapter (a PEFT folder)."""
    return Path(stage_folder) / ADAPTER


def model_config(stage_folder: Path) -> Path:
    return model_dir(stage_folder) / "config.json"
