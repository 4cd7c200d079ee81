"""Stage 2: the Ref-Teacher filter. The frozen teacher (or the base model, when the teacher stage found its features
better on the check split) scores the user data by the teacher stage's scorer: the cosine of each prompt's features
with R_l, averaged over the filter's layers (the paper's), or its probe over those features; and flags what scores
above tau (WORKDIR/filter/: scores.jsonl, kept.jsonl, flagged.jsonl, report.json)."""

from __future__ import annotations

import json

import numpy as np

from reft_jax.data import TokenizedDataset, prompt_style
from reft_jax.errors import ReftError
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models import Transformer
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.refusal import scoring
from reft_jax.refusal.probe import Probe, Veto
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import Workdir, model_dir
from reft_jax.stages.common import Filter, prompt_flops, write_filter


def teacher_settings(wd: Workdir) -> dict:
    """The teacher stage's filter: its R_l at each of its layers ("r", [len(layers), D]), filter.json's layers, tau,
    direction, scorer and check figures, and what scores ("score_by": R for the cosine, the Probe for the probe, a
    Veto of both for the veto). A workdir of a single-layer filter ("layer") reads as one layer, and one without a
    scorer as the cosine."""
    try:
        r = np.load(wd.refusal_feature)
        settings = {"direction": "teacher", "scorer": "cosine", **json.loads(wd.filter_settings.read_text())}
        layers = tuple(settings.pop("layers", None) or [settings.pop("layer")])
        r = r.reshape(len(layers), -1)
        score_by = r
        if settings["scorer"] != "cosine":  # the probe, or the veto's probe beside R
            probe = Probe.load(wd.probe)
            score_by = Veto(r, probe, float(settings["tau"])) if settings["scorer"] == "veto" else probe
    except FileNotFoundError as e:
        raise ReftError(f"{e.filename}: missing; run `reft-jax train-teacher` first") from None
    return {**settings, "layers": layers, "r": r, "score_by": score_by}


def filter_model(ctx: RunContext, settings: dict) -> Transformer:
    """The model the filter reads features from: the teacher, or the base model when its direction separated the
    teacher stage's check split better (filter.json's "direction")."""
    if settings["direction"] == "base":
        return base_model(ctx.cfg, ctx.vocab)
    return load_stage_model(model_dir(ctx.workdir.teacher), ctx.cfg, "teacher")


def flags(ctx: RunContext, examples: list[dict], ds: TokenizedDataset) -> np.ndarray:
    """The Ref-Teacher filter's verdicts on other prompts (prompt-only examples, and tokenized): score > tau."""
    cfg, settings = ctx.cfg, teacher_settings(ctx.workdir)
    scores = scoring.score(FrozenModel.of(filter_model(ctx, settings)), ds, settings["score_by"], settings["layers"],
                           batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets),
                           progress=cfg.logging.progress)
    return scores > settings["tau"]


def run(ctx: RunContext) -> dict:
    cfg, wd = ctx.cfg, ctx.workdir
    folder = FILTER.path(wd)
    with cost.StageCost(folder, FILTER.stage) as stage:
        settings = teacher_settings(wd)
        model = filter_model(ctx, settings)
        styles = np.array([prompt_style(ex["request"]) for ex in ctx.user_examples], dtype=object)
        result = scoring.run_filter(FrozenModel.of(model), ctx.user, settings["score_by"], settings["layers"],
                                    settings["tau"], batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets),
                                    progress=cfg.logging.progress, style=styles)
        # Rows whose request the teacher trained, calibrated or chose its filter on: not held-out figures.
        seen = np.array([ctx.user_examples[int(i)]["request"] in ctx.teacher_requests for i in result.index], bool)
        probe_check = {"probe_check": settings["probe_check"]} if "probe_check" in settings else {}
        report = write_filter(ctx, result, folder, direction=settings["direction"], scorer=settings["scorer"],
                              check=settings.get("check"), **probe_check, seen_by_teacher=int(seen.sum()),
                              held_out=result.select(~seen).report())
        stage.flops = prompt_flops(model.cfg, ctx.prompt_batches(ctx.user, cfg.filter.batch_size))
    return report


FILTER = Filter("ref_teacher", run, flags, folder="filter", stage="filter", needs=("teacher",),
                reads=("teacher_requests",),
                command="reft-jax filter")
