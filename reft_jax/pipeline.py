"""A whole run: the stages the selected methods need (reft_jax.stages), then their evaluation, the report and
the plots. The entry point of `reft-jax run`, and of a Python user (also as `reft_jax.run`):

    from reft_jax import pipeline
    report = pipeline.run(config, "runs/mine")   # config: a ConfigDict (e.g. configs/demo.py's) or a RunConfig
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from reft_jax import stages
from reft_jax.experiment import report as rreport
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS, selected
from reft_jax.runtime import atomic
from reft_jax.runtime.workdir import FILTER_SCORES, METRICS
from reft_jax.stages import attack, evaluate, preflight


def run(cfg, workdir: str | Path | None = None, *, force: bool = False) -> dict:
    """The selected methods' stages (a stage whose outputs exist is skipped unless force), then evaluation.
    Writes report.json/.md and plots. cfg: a config, with workdir; or a RunContext."""
    ctx = cfg if isinstance(cfg, RunContext) else RunContext.create(cfg, workdir)
    cfg, wd = ctx.cfg, ctx.workdir
    requested = selected(cfg.methods)
    if cfg.expected_time and jax.process_index() == 0:
        print(f"reft-jax run: {cfg.expected_time}", flush=True)
    unavailable = {m.name: m.filter and stages.FILTERS[m.filter].unavailable(cfg) for m in requested}
    skipped = {name: f"skipped: {why}" for name, why in unavailable.items() if why}
    chosen = [m for m in requested if m.name not in skipped]
    plan = stages.plan(chosen)
    # With `seeds`, the first seed's runs are this context's; each other seed trains the seeded stages (every
    # finetuning, the alignment stages) again in WORKDIR/seeds/SEED/, on the same teacher, filters and data.
    runs = [ctx, *(ctx.for_seed(seed) for seed in (cfg.seeds or ())[1:])]
    todo = []
    for i, r in enumerate(runs):
        names = plan if i == 0 else [s for s in plan if stages.STAGES[s].seeded]
        todo.append([s for s in names if force or not stages.STAGES[s].marker(r.workdir).exists()])
        if not force:  # a stage done (or begun) from other inputs is never reused: one line, before any work
            for stage in names:
                stages.check_inputs(r, stage)
    preflight.check(ctx, list(dict.fromkeys(s for names in todo for s in names)))
    for r, names in zip(runs, todo):
        for stage in names:
            stages.run_stage(stage, r, force=force)
    reports = []
    for i, r in enumerate(runs):
        one = evaluate.run(r, chosen, references=evaluate.REFERENCES if i == 0 else ())
        if cfg.eval.gcg.prompts > 0:  # GCG against every method's model
            for m in chosen:
                one["methods"][m.name]["gcg"] = attack.summary(attack.run(r, m.name))
        one["methods"] = {m.name: {"skipped": skipped[m.name]} if m.name in skipped else one["methods"][m.name]
                          for m in requested}
        reports.append(one)
    report = reports[0]
    if cfg.seeds:  # each seed's figures, their mean and spread
        report = rreport.over_seeds({seed: (r.workdir.eval / "report.json", one)
                                     for seed, r, one in zip(cfg.seeds, runs, reports)}, wd.root)
    if jax.process_index() == 0:
        atomic.write_text(wd.report, json.dumps(report, indent=2) + "\n")
        tau = json.loads(wd.filter_settings.read_text())["tau"]
        screen = stages.FILTERS[METHODS["ref_teacher"].filter]
        curves = {"teacher (stage 1)": wd.teacher / METRICS}
        curves.update({f"{m.name} finetuning": m.path(wd) / METRICS for m in chosen})
        written = {name for name, done in (
            ("filter_scores", rreport.plot_filter_scores(screen.path(wd) / FILTER_SCORES, tau, wd.plot("filter_scores"))),
            ("loss_curves", rreport.plot_losses(curves, wd.plot("loss_curves"))),
            ("teacher_refusal", rreport.plot_teacher_refusal(wd.teacher / METRICS, wd.plot("teacher_refusal"))),
            ("tradeoff", rreport.plot_tradeoff(report, wd.plot("tradeoff")))) if done}
        for name in {"filter_scores", "loss_curves", "teacher_refusal", "tradeoff"} - written:
            wd.plot(name).unlink(missing_ok=True)  # an older run's plot would show other results
        rreport.write_markdown(report, wd.root / "report.md", plots=written)
    return report
