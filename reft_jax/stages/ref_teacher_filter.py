"""Stage 2: the Ref-Teacher filter. The frozen teacher (or the base model, when the teacher stage found its features
better on the check split) scores the user data by the teacher stage's scorer: the cosine of each prompt's features
with R_l, averaged over the filter's layers (the paper's), or its probe over those features; and flags what scores
above tau (WORKDIR/filter/: scores.jsonl, kept.jsonl, flagged.jsonl, report.json). With filter.adapt_fpr > 0 that
is the first pass: a probe fitted with the file's own rows it names for the task and the attack (reft_jax.refusal.adapt)
scores the file again and decides (filter/adapted_probe.npz; the report's "adapted" says what it chose and
"first_pass" what the first pass flagged)."""

from __future__ import annotations

import json

import jax
import numpy as np

from reft_jax.data import TokenizedDataset, prompt_style
from reft_jax.errors import ReftError
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models import Transformer
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.refusal import adapt, scoring
from reft_jax.refusal.probe import Probe, Veto
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import Workdir, model_dir
from reft_jax.stages.common import Filter, prompt_flops, write_filter
from reft_jax.stages.teacher import probe_split

ADAPTED = "adapted_probe.npz"  # in the filter's folder: the probe fitted to the user's file, its threshold folded in


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
    score_by, tau = settings["score_by"], settings["tau"]
    if cfg.filter.adapt_fpr > 0:  # the filter the user's file got: its adapted probe
        adapted = FILTER.path(ctx.workdir) / ADAPTED
        if not adapted.exists():
            raise ReftError(f"{adapted}: missing; run `{FILTER.command}` first (filter.adapt_fpr > 0)")
        score_by, tau = Probe.load(adapted), 0.0
    scores = scoring.score(FrozenModel.of(filter_model(ctx, settings)), ds, score_by, settings["layers"],
                           batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets),
                           progress=cfg.logging.progress)
    return scores > tau


def run(ctx: RunContext) -> dict:
    cfg, wd = ctx.cfg, ctx.workdir
    folder = FILTER.path(wd)
    with cost.StageCost(folder, FILTER.stage) as stage:
        settings = teacher_settings(wd)
        model = filter_model(ctx, settings)
        styles = np.array([prompt_style(ex["request"]) for ex in ctx.user_examples], dtype=object)
        frozen, kw = FrozenModel.of(model), dict(batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets),
                                                 progress=cfg.logging.progress)
        result = scoring.run_filter(frozen, ctx.user, settings["score_by"], settings["layers"], settings["tau"],
                                    style=styles, **kw)
        adapted, scorer, read = {}, settings["scorer"], [ctx.user]  # read: the datasets whose features were read
        if cfg.filter.adapt_fpr > 0:
            probe, info, labelled = adapt_to_file(ctx, frozen, result, settings["layers"], **kw)
            adapted = {"adapted": info, "first_pass": result.report()}
            result = scoring.run_filter(frozen, ctx.user, probe, settings["layers"], 0.0, style=styles, **kw)
            scorer, read = f"adapted ({scorer} first)", [*read, *labelled, ctx.user]
            if jax.process_index() == 0:
                probe.save(folder / ADAPTED)
                # Far more flags than the first pass's would say the task was not learned.
                print(f"filter: the adapted probe flags {int(result.flagged.sum())} of the {len(result.score)} rows "
                      f"(the first pass {adapted['first_pass']['num_flagged']})", flush=True)
        # Rows whose request the teacher trained, calibrated or chose its filter on: not held-out figures.
        seen = np.array([ctx.user_examples[int(i)]["request"] in ctx.teacher_requests for i in result.index], bool)
        probe_check = {"probe_check": settings["probe_check"]} if "probe_check" in settings else {}
        report = write_filter(ctx, result, folder, direction=settings["direction"], scorer=scorer,
                              check=settings.get("check"), **probe_check, **adapted, seen_by_teacher=int(seen.sum()),
                              held_out=result.select(~seen).report())
        stage.flops = sum(prompt_flops(model.cfg, ctx.prompt_batches(ds, cfg.filter.batch_size)) for ds in read)
    return report


def adapt_to_file(ctx: RunContext, frozen: FrozenModel, first: scoring.FilterResult, layers: tuple[int, ...],
                  **kw) -> tuple[Probe, dict, list]:
    """The probe adapted to the user's file (reft_jax.refusal.adapt.fit_to_file): fitted on the pool's train split,
    data.veto's fit part and half the file's rows that the first pass names for the task and the attack; C and the
    threshold on the pool's calibration split (the check split without one), data.veto's calibration part and the
    other half. Returns it, what it chose and measured, and the datasets whose features were read."""
    cfg, prompts = ctx.cfg, ctx.refusal_prompts
    rows = adapt.file_examples(first.score, first.tau)
    task = sum(len(rows[part][0]) for part in rows)
    adapt.require_task_rows(task, len(first.score))
    labelled = {"fit": [prompts["train"].ds], "calibration": [prompts[probe_split(prompts)].ds]}
    for part, ds in ctx.veto_prompts.items():
        labelled[part].append(ds)
    labelled_x, task_x, attack_x, read = {}, {}, {}, []
    for part, (task_rows, attack_rows) in rows.items():
        file_ds = ctx.user.select(np.r_[task_rows, attack_rows])
        sets = [*labelled[part], file_ds]
        feats = [scoring.prompt_features(frozen, ds, layers, desc=f"adapting the filter: {part} prompts", **kw)
                 for ds in sets]
        labelled_x[part] = (np.concatenate(feats[:-1], axis=1),
                            np.concatenate([ds.harmful == 1 for ds in labelled[part]]))
        task_x[part], attack_x[part] = feats[-1][:, :len(task_rows)], feats[-1][:, len(task_rows):]
        read += sets
    probe, info = adapt.fit_to_file(labelled_x, task_x, attack_x, recall=cfg.filter.calibrate_recall or 1.0,
                                    max_fpr=cfg.filter.adapt_fpr)
    info = {**info, "max_fpr": cfg.filter.adapt_fpr,
            **{f"file_{part}": {"task": len(t), "attack": len(a)} for part, (t, a) in rows.items()},
            **{part: {"harmful": int(y.sum()) + info["attack_kept"][part],
                      "harmless": len(y) - int(y.sum()) + len(rows[part][0])} for part, (_, y) in labelled_x.items()}}
    if jax.process_index() == 0:
        print(f"filter: adapted to the file (C {info['C']:g}, from {task} of its rows for its task and "
              f"{sum(info['attack_kept'].values())} of the {int(first.flagged.sum())} the first pass flagged, those "
              f"a probe of the task flags too): on its calibration recall {info['calibration_recall']:.3f}, "
              f"{info['calibration_fpr']:.3f} of the harmless flagged", flush=True)
    return probe, info, read


FILTER = Filter("ref_teacher", run, flags, folder="filter", stage="filter", needs=("teacher",),
                reads=("teacher_requests", "pool", "veto"), inputs=("filter.adapt_fpr",),
                command="reft-jax filter")
