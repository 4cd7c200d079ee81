"""Stage 1: the Ref-Teacher, trained from the base model with the refusal-feature regulariser.

Writes the teacher (WORKDIR/teacher/model), the filter's directions (refusal_feature.npy: R_l at each layer of
filter.layer_span), the filter's settings (filter.json, with `at_tau`: what tau does on the check split, by
style) and the labelled prompts of each split (refusal_prompts.jsonl). The labelled prompts are split three ways
(RunContext.refusal_prompts): R_l and the regulariser train on one split, tau is calibrated on another
(filter.calibrate_recall > 0), and the third, the check split, is held out from both. On the check split the
teacher's final directions are compared with the base model's own (R_l of M0, before any training); the filter ships
the better of the two, so training the teacher can never leave the filter worse than the base model on prompts
nobody trained or calibrated on. With filter.scorer = "probe" or "best", a probe (reft_jax.refusal.probe) is fitted
on each model's features too and takes part in that choice (teacher/probe.npz when it ships). With "veto", the
cosine ships with a lookalike veto: a probe over the chosen model's features, fitted on data.veto's prompts to tell
harmful requests from safe lookalikes (teacher/probe.npz; filter.json's "veto" says what it chose)."""

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
from reft_jax.refusal.probe import Probe, Veto, fit_probe, fit_veto
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


def at_tau(scores: np.ndarray | None, prompts: LabelledPrompts | None, tau: float) -> dict | None:
    """What the filter does at tau on a labelled split, overall and by style (`refusal.operating_point`): the figures
    a service can state (None without the split)."""
    if prompts is None:
        return None
    return refusal.operating_point(scores > tau, prompts.ds.harmful == 1, prompts.styles)


def choose_filter(checks: dict[tuple[str, str], dict | None]) -> tuple[str, str]:
    """The (scorer, direction) of `checks` (their check_report) with the highest check-split AUROC; a tie keeps the
    first listed (the cosine before the probe, the teacher's before the base model's), as does a run without a
    check split."""
    return max(checks, key=lambda k: -np.inf if checks[k] is None or checks[k]["auroc"] is None else checks[k]["auroc"])


def probe_split(prompts: dict[str, LabelledPrompts]) -> str | None:
    """The split the probe's C is chosen on: the calibration split, else the check split (whose probe AUROC is then
    not quite held out), else none (C = 1)."""
    return next((split for split in ("calibration", "check") if split in prompts), None)


@dataclasses.dataclass
class Directions:
    """A model's filter: R_l at each filter layer over the train split, and the filter's scores of each split; with a
    probe, the probe fitted on the same features and its scores."""

    r: np.ndarray  # [len(layers), D]
    scores: dict[str, np.ndarray]  # split -> [N], the cosine's
    check_at_layer: float | None  # the check split's AUROC at the regulariser's layer alone (the training log's)
    features: dict[str, np.ndarray]  # split -> [len(layers), N, D], the features at the filter's layers
    probe: Probe | None = None
    probe_scores: dict[str, np.ndarray] | None = None  # split -> [N]

    def scores_by(self, scorer: str) -> dict[str, np.ndarray]:
        return self.scores if scorer == "cosine" else self.probe_scores


def measure(frozen: FrozenModel, prompts: dict[str, LabelledPrompts], layers: tuple[int, ...], layer: int, *,
            batch_size: int, buckets: list[int], with_probe: bool = False) -> Directions:
    """One forward pass over the labelled splits at the filter's layers and the regulariser's; with_probe: the probe
    too, fitted on the train split's features (its C chosen on `probe_split`)."""
    read = tuple(sorted({*layers, layer}))
    feats = {split: scoring.prompt_features(frozen, p.ds, read, batch_size=batch_size, buckets=buckets,
                                            progress=False) for split, p in prompts.items()}
    labels = prompts["train"].ds.harmful
    refusal.check_refusal_classes(labels)
    r_all = np.asarray(refusal.layer_directions(feats["train"], labels == 1))
    pick = [read.index(x) for x in layers]
    at_filter = {split: f[pick] for split, f in feats.items()}
    scores = {split: np.asarray(refusal.mean_cosine_scores(f, r_all[pick]), np.float32)
              for split, f in at_filter.items()}
    at_layer = None
    if "check" in feats:
        i = read.index(layer)
        at_layer = refusal.auroc(np.asarray(refusal.cosine_scores(feats["check"][i], r_all[i])),
                                 prompts["check"].ds.harmful == 1)
    directions = Directions(r_all[pick], scores, at_layer, at_filter)
    if with_probe:
        held = probe_split(prompts)
        fitted = fit_probe(at_filter["train"], labels, at_filter.get(held),
                           None if held is None else prompts[held].ds.harmful)
        directions.probe, directions.probe_scores = fitted, {split: fitted.scores(f) for split, f in at_filter.items()}
    return directions


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

        with_probe, probe_on = cfg.filter.scorer in ("probe", "best"), probe_split(prompts)
        measured = ("cosine", "probe") if with_probe else ("cosine",)  # the cosine's figures are always reported
        candidates = {"best": measured, "veto": ("cosine",)}.get(cfg.filter.scorer, (cfg.filter.scorer,))

        # The base model's own directions, read before training (which donates the weights it starts from).
        base = measure(FrozenModel.of(model), prompts, layers, layer, with_probe=with_probe, **kw)
        align = ctx.batches(ctx.alignment, "teacher_batches")
        trained_run = runs.train_teacher(cfg, model, out, align.batch, pool, check, base.check_at_layer)
        teacher = trained_run.model
        trained = measure(FrozenModel.of(teacher), prompts, layers, layer, with_probe=with_probe, **kw)
        models = {"teacher": trained, "base": base}
        checks = {(s, d): check_report(m.scores_by(s).get("check"), prompts.get("check"))
                  for s in measured for d, m in models.items()}
        scorer, direction = choose_filter({key: c for key, c in checks.items() if key[0] in candidates})
        chosen = models[direction]
        if "check" in prompts and jax.process_index() == 0:
            print(_summary(checks, measured, scorer, direction, probe_on), flush=True)
        veto_probe = veto_info = veto = None
        if cfg.filter.scorer == "veto":
            frozen = FrozenModel.of(teacher if direction == "teacher" else base_model(cfg, ctx.vocab))
            veto_probe, veto_info, veto_flops = fit_lookalike_veto(ctx, frozen, chosen, layers, **kw)
            scorer = "veto"
        tau = cfg.filter.tau
        if cfg.filter.calibrate_recall > 0:  # the veto's cosine is calibrated as the cosine alone
            calibrated = chosen.scores_by("cosine" if veto_probe is not None else scorer)["calibration"]
            labels = prompts["calibration"].ds.harmful == 1
            tau = refusal.cap_false_positives(
                refusal.calibrate_threshold(calibrated, labels, cfg.filter.calibrate_recall), calibrated, labels,
                cfg.filter.calibrate_max_fpr)
        if veto_probe is not None:
            veto = Veto(chosen.r, veto_probe, tau)
        save_model(teacher, ctx.tokenizer, model_dir(out))
        if jax.process_index() == 0:
            np.save(wd.refusal_feature, chosen.r)
            write_prompts(prompts, wd.refusal_prompts)
            shipped = ({split: veto.scores(f) for split, f in chosen.features.items()} if veto
                       else chosen.scores_by(scorer))
            settings = {"layers": list(layers), "tau": tau, "direction": direction, "scorer": scorer,
                        "check": {d: checks["cosine", d] for d in models},
                        "at_tau": at_tau(shipped.get("check"), prompts.get("check"), tau)}
            if veto:
                settings["veto"] = veto_info
                veto.probe.save(wd.probe)
            if with_probe:  # the probe's figures, with its C and the split C was chosen on
                settings["probe_check"] = {d: checks["probe", d] and {**checks["probe", d], "C": m.probe.C,
                                                                      "C_chosen_on": probe_on}
                                           for d, m in models.items()}
            if scorer == "probe":
                chosen.probe.save(wd.probe)
            wd.filter_settings.write_text(json.dumps(settings, indent=2) + "\n")
        stage.flops = trained_run.flops + 2 * pass_flops + (veto_flops if veto else 0)
    return out


def fit_lookalike_veto(ctx: RunContext, frozen: FrozenModel, chosen: Directions, layers: tuple[int, ...], *,
                       batch_size: int, buckets: list[int]) -> tuple[Probe, dict, float]:
    """The lookalike veto over the chosen model's features (`probe.fit_veto`): fitted on data.veto's fit part with
    the pool's train split's harmful prompts, its C and threshold set on its calibration part with the calibration
    split's (filter.veto_recall of their harmful requests pass). Returns its probe (the threshold folded in), what it
    chose, and the FLOPs of its forward pass."""
    prompts, veto = ctx.refusal_prompts, ctx.veto_prompts
    feats = {part: scoring.prompt_features(frozen, ds, layers, batch_size=batch_size, buckets=buckets,
                                           progress=ctx.cfg.logging.progress, desc=f"the veto's {part} prompts")
             for part, ds in veto.items()}

    def with_pool(part: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = feats[part], veto[part].harmful == 1
        if split in prompts:  # the pool's harmful prompts of the split: the veto must pass them too
            harmful = prompts[split].ds.harmful == 1
            x, y = np.concatenate([x, chosen.features[split][:, harmful]], axis=1), np.concatenate([y, harmful[harmful]])
        return x, y

    (x, y), (cx, cy) = with_pool("fit", "train"), with_pool("calibration", "calibration")
    probe, info = fit_veto(x, y, cx, cy, ctx.cfg.filter.veto_recall)
    info = {**info, "recall": ctx.cfg.filter.veto_recall,
            "fit": {"harmful": int(y.sum()), "lookalikes": int((~y).sum())},
            "calibration": {"harmful": int(cy.sum()), "lookalikes": int((~cy).sum())}}
    if jax.process_index() == 0:
        print(f"teacher: the lookalike veto (C {info['C']:g}) passes {1 - info['calibration_harmful_vetoed']:.3f} of "
              f"its calibration's harmful requests and vetoes {info['calibration_lookalikes_vetoed']:.3f} of its "
              f"lookalikes (AUROC {info['calibration_auroc']:.3f})", flush=True)
    flops = sum(prompt_flops(frozen.model().cfg, ctx.prompt_batches(ds, batch_size)) for ds in veto.values())
    return probe, info, flops


def _summary(checks: dict[tuple[str, str], dict], measured: tuple[str, ...], scorer: str, direction: str,
             probe_on: str | None) -> str:
    """One line: each measured scorer's check AUROC on both models' features, and what the filter ships."""
    whose = {"teacher": "the teacher's", "base": "the base model's"}
    figures = "; ".join(f"{s} {checks[s, 'teacher']['auroc']:.3f} on the teacher's features, "
                        f"{checks[s, 'base']['auroc']:.3f} on the base model's" for s in measured)
    note = (" (the probe's C was chosen on the check split: there is no calibration split)"
            if "probe" in measured and probe_on == "check" else "")
    return f"teacher: check split AUROC {figures}: the filter ships the {scorer} on {whose[direction]} features{note}"


def write_prompts(prompts: dict[str, LabelledPrompts], path: Path) -> None:
    """One line per labelled prompt: its split, request, harmful label and style (what each split held)."""
    with path.open("w") as f:
        for split, p in prompts.items():
            for request, harmful, style in zip(p.requests, p.ds.harmful, p.styles):
                f.write(json.dumps({"split": split, "request": request, "harmful": bool(harmful), "style": style}) + "\n")


def _prompt_batches(ctx: RunContext, prompts: LabelledPrompts | None) -> list:
    return [] if prompts is None else list(ctx.prompt_batches(prompts.ds))
