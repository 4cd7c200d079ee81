"""Stage 1: the Ref-Teacher, trained from the base model with the refusal-feature regulariser.

Writes the teacher (WORKDIR/teacher/model), the filter's directions (refusal_feature.npy: R_l at each layer of
filter.layer_span), the filter's settings (filter.json) and the labelled prompts of each split
(refusal_prompts.jsonl). The labelled prompts are split three ways (RunContext.refusal_prompts): R_l and the
regulariser train on one split, tau is calibrated on another (filter.calibrate_recall > 0), and the third, the
check split, is held out from both. On the check split the teacher's final directions are compared with the base
model's own (R_l of M0, before any training); the filter ships the better of the two, so training the teacher can
never leave the filter worse than the base model on prompts nobody trained or calibrated on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from reft_jax import refusal
from reft_jax.experiment import cost
from reft_jax.experiment.context import LabelledPrompts, RunContext
from reft_jax.models.from_config import base_model, trainable
from reft_jax.models.hf_io import save_model
from reft_jax.refusal import scoring
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import model_dir
from reft_jax.stages.common import prompt_flops
from reft_jax.train import runs


def check_report(scores: np.ndarray | None, prompts: LabelledPrompts | None) -> dict | None:
    """A direction's AUROC on a labelled split, overall and by prompt style (None without the split)."""
    if prompts is None:
        return None
    labels = prompts.ds.harmful == 1
    return {"auroc": refusal.auroc(scores, labels), "by_style": refusal.auroc_by_style(scores, labels, prompts.styles)}


def choose_direction(teacher: dict | None, base: dict | None) -> str:
    """"teacher" unless the base model's direction separates the check split better (no check split: "teacher")."""
    if teacher is None or base is None:
        return "teacher"
    return "base" if base["auroc"] > teacher["auroc"] else "teacher"


@dataclasses.dataclass
class Directions:
    """A model's filter: R_l at each filter layer over the train split, and the filter's scores of each split."""

    r: np.ndarray  # [len(layers), D]
    scores: dict[str, np.ndarray]  # split -> [N]
    check_at_layer: float | None  # the check split's AUROC at the regulariser's layer alone (the training log's)


def measure(frozen: FrozenModel, prompts: dict[str, LabelledPrompts], layers: tuple[int, ...], layer: int, *,
            batch_size: int, buckets: list[int]) -> Directions:
    """One forward pass over the labelled splits at the filter's layers and the regulariser's."""
    read = tuple(sorted({*layers, layer}))
    feats = {split: scoring.prompt_features(frozen, p.ds, read, batch_size=batch_size, buckets=buckets,
                                            progress=False) for split, p in prompts.items()}
    labels = prompts["train"].ds.harmful
    refusal.check_refusal_classes(labels)
    r_all = np.asarray(refusal.layer_directions(feats["train"], labels == 1))
    pick = [read.index(x) for x in layers]
    scores = {split: np.asarray(refusal.mean_cosine_scores(f[pick], r_all[pick]), np.float32)
              for split, f in feats.items()}
    at_layer = None
    if "check" in feats:
        i = read.index(layer)
        at_layer = refusal.auroc(np.asarray(refusal.cosine_scores(feats["check"][i], r_all[i])),
                                 prompts["check"].ds.harmful == 1)
    return Directions(r_all[pick], scores, at_layer)


def run(ctx: RunContext) -> Path:
    cfg, wd = ctx.cfg, ctx.workdir
    out = wd.teacher
    with cost.StageCost(out, "teacher") as stage:
        model = trainable(cfg, base_model(cfg, ctx.vocab), "teacher_adapters")  # fresh adapters: still M0's function
        layer = refusal.feature_layer(cfg.refusal.layer, model.cfg.num_layers)
        layers = refusal.filter_layers(cfg.filter.layer_span, cfg.refusal.layer, model.cfg.num_layers)
        prompts = ctx.refusal_prompts
        pool, check = (_prompt_batches(ctx, prompts.get(split)) for split in ("train", "check"))
        kw = dict(batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets))
        # Each measurement is a forward pass over every split (to the deepest layer read).
        pass_flops = sum(prompt_flops(model.cfg, ctx.prompt_batches(p.ds, cfg.filter.batch_size))
                         for p in prompts.values())

        # The base model's own directions, read before training (which donates the weights it starts from).
        base = measure(FrozenModel.of(model), prompts, layers, layer, **kw)
        base_check = check_report(base.scores.get("check"), prompts.get("check"))
        align = ctx.batches(ctx.alignment, "teacher_batches")
        trained_run = runs.train_teacher(cfg, model, out, align.batch, pool, check, base.check_at_layer)
        teacher = trained_run.model
        trained = measure(FrozenModel.of(teacher), prompts, layers, layer, **kw)
        teacher_check = check_report(trained.scores.get("check"), prompts.get("check"))
        direction = choose_direction(teacher_check, base_check)
        if base_check and jax.process_index() == 0:
            print(f"teacher: check split AUROC {teacher_check['auroc']:.3f} for the teacher's directions, "
                  f"{base_check['auroc']:.3f} for the base model's: the filter uses the {direction}'s", flush=True)
        chosen = trained if direction == "teacher" else base
        tau = cfg.filter.tau
        if cfg.filter.calibrate_recall > 0:
            calibrated, labels = chosen.scores["calibration"], prompts["calibration"].ds.harmful == 1
            tau = refusal.cap_false_positives(
                refusal.calibrate_threshold(calibrated, labels, cfg.filter.calibrate_recall), calibrated, labels,
                cfg.filter.calibrate_max_fpr)
        save_model(teacher, ctx.tokenizer, model_dir(out))
        if jax.process_index() == 0:
            np.save(wd.refusal_feature, chosen.r)
            write_prompts(prompts, wd.refusal_prompts)
            settings = {"layers": list(layers), "tau": tau, "direction": direction,
                        "check": {"teacher": teacher_check, "base": base_check}}
            wd.filter_settings.write_text(json.dumps(settings, indent=2) + "\n")
        stage.flops = trained_run.flops + 2 * pass_flops
    return out


def write_prompts(prompts: dict[str, LabelledPrompts], path: Path) -> None:
    """One line per labelled prompt: its split, request, harmful label and style (what each split held)."""
    with path.open("w") as f:
        for split, p in prompts.items():
            for request, harmful, style in zip(p.requests, p.ds.harmful, p.styles):
                f.write(json.dumps({"split": split, "request": request, "harmful": bool(harmful), "style": style}) + "\n")


def _prompt_batches(ctx: RunContext, prompts: LabelledPrompts | None) -> list:
    return [] if prompts is None else list(ctx.prompt_batches(prompts.ds))
