"""The evaluation of a run's methods: harmful score (eval.judge on data.eval.harmful), finetune accuracy
(data.eval.task_source), the filter's metrics and each method's cost; when configured, the harmful score under
jailbreak templates (eval.templates) and over-refusal (data.eval.over_refusal) of the models and of the filters;
WORKDIR/eval/report.json. Every rate comes with its 95 % interval (`NAME_ci`) and each model with the seconds its
evaluation took (`eval_s`); while it runs, a progress bar per model and prompt set (logging.progress) and a log line
per figure."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Collection

import jax
import numpy as np
from tqdm.auto import tqdm

from reft_jax.data.templates import format_prompt
from reft_jax.errors import ReftError
from reft_jax.evaluation import intervals, jailbreak, judges, metrics, over_refusal
from reft_jax.evaluation.generate import GenerationConfig, generate_text
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.report import rate_text
from reft_jax.experiment.methods import METHODS, Method
from reft_jax.models import Transformer
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.runtime import atomic
from reft_jax.runtime.workdir import FILTER_REPORT, METRICS, Workdir, model_config, model_dir
from reft_jax.stages import FILTERS, STAGES, stages_of

# The dataset groups the evaluation reads (RunContext DATASETS): its prompts, drawn without the teacher's.
READS = ("eval",)
# The models measured beside the methods (with eval.references): what finetuning starts from and what the student
# distils from.
REFERENCES = ("base_model", "teacher")
FILTER_METRICS = ("precision", "recall", "f1", "auroc", "num_flagged", "num_examples", "tau")


def filter_summary(wd: Workdir, method: Method) -> dict | None:
    """The method's filter on the user data: precision, recall, F1, AUROC, counts (None without a filter)."""
    if not method.filter:
        return None
    report = json.loads((FILTERS[method.filter].path(wd) / FILTER_REPORT).read_text())
    return {"name": method.filter, **{k: report.get(k) for k in FILTER_METRICS}}


def method_cost(wd: Workdir, method: Method) -> dict:
    """Each stage's wall time, accelerator-seconds and FLOPs (shared stages, like the teacher, count in full
    for every method that needs them: the price of that pipeline), and their totals."""
    names = stages_of(method)
    records = [cost.read(STAGES[s].path(wd)) for s in names]
    return {"stages": [r or {"stage": name} for r, name in zip(records, names)], **cost.total(records)}


def teacher_refusal_log(wd: Workdir) -> list[dict] | None:
    """The refusal feature over the teacher's training, at each recomputation of R_l (None without a teacher)."""
    log = wd.teacher / METRICS
    if not log.exists():
        return None
    return [{k: v for k, v in r.items() if k == "refusal_step" or k.startswith(("pool_", "check_", "r_"))}
            for r in map(json.loads, log.read_text().splitlines()) if "refusal_step" in r]


def run(ctx: RunContext, which: list[Method] | None = None, *, references: Collection[str] = REFERENCES) -> dict:
    """Evaluates the methods `which` (default: every trained one; [] none); with eval.references, also the
    `references` (REFERENCES by default: the base model before finetuning and the teacher, where trained; a training
    seed's run after the first measures the same references again, so it names none)."""
    with ctx.reading("evaluate", READS):
        return _run(ctx, which, references)


def _run(ctx: RunContext, which: list[Method] | None, references: Collection[str]) -> dict:
    cfg, wd, tokenizer = ctx.cfg, ctx.workdir, ctx.tokenizer
    d = cfg.data
    # Safety is measured on prompts the teacher never trained, calibrated or chose its filter on.
    harmful, task, over = ctx.eval_harmful, ctx.eval_task, ctx.eval_over_refusal
    generation = GenerationConfig(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
    judge = judges.make_judge(cfg.eval.judge, cfg.eval.judge_path)
    templates = jailbreak.load_templates(cfg.eval.templates)
    wrapped = {name: [format_prompt(jailbreak.wrap(text, ex["request"]), template=d.template, tokenizer=tokenizer)
                      for ex in harmful] for name, text in templates.items()}
    refusals = judges.make_refusal_detector(cfg.eval.refusal_judge_path) if over else None

    def measure(model: Transformer, name: str) -> dict:
        start = time.perf_counter()

        def answer(prompts: list[str], what: str) -> list[str]:
            return generate_text(model, tokenizer, prompts, generation, desc=f"{name}: {what}",
                                 progress=cfg.logging.progress)

        def harmful_score(answers: list[str], what: str) -> dict:
            result = judges.harmful_score(judge, [ex["prompt"] for ex in harmful], answers)
            figure = intervals.rate("harmful_score", result["num_harmful"], result["n"])
            say(f"{name}: harmful score{what} {rate_text(figure, 'harmful_score')} on {result['n']} prompts")
            return {**figure, "judge": result["judge"], "n": result["n"]}

        answers = answer([ex["prompt"] for ex in harmful], "harmful prompts")
        result = harmful_score(answers, "")
        accuracy = {"finetune_accuracy": None, "finetune_accuracy_ci": None}
        if task:
            predictions = answer([ex["prompt"] for ex in task], "task")
            share = metrics.finetune_accuracy(d.user.task, predictions, [ex["label"] for ex in task])["finetune_accuracy"]
            accuracy = intervals.rate("finetune_accuracy", round(share * len(task)), len(task))
            say(f"{name}: finetune accuracy {rate_text(accuracy, 'finetune_accuracy')} on {len(task)} examples")
        out = {"harmful_score": result["harmful_score"], "harmful_score_ci": result["harmful_score_ci"], **accuracy,
               "judge": result["judge"], "num_harmful_prompts": result["n"], "num_task": len(task),
               "examples": [{"prompt": p["prompt"][-200:], "answer": a} for p, a in zip(harmful[:3], answers)]}
        if templates:  # the judge reads each answer against the request itself, not its wrapping
            scores = {t: harmful_score(answer(prompts, t), f" under {t}") for t, prompts in wrapped.items()}
            out["harmful_score_templates"] = {t: r["harmful_score"] for t, r in scores.items()}
            out["harmful_score_templates_ci"] = {t: r["harmful_score_ci"] for t, r in scores.items()}
        if over is not None:
            replies = answer(over.prompts, "over-refusal prompts")
            out["over_refusal"] = {"judge": refusals.name,
                                   **over_refusal.rates(refusals.refusals(over.requests, replies), over, "refusal")}
            say(f"{name}: over-refusal {rate_text(out['over_refusal'], 'refusal_rate')} on "
                f"{out['over_refusal']['num_safe']} safe prompts")
        out["eval_s"] = round(time.perf_counter() - start, 3)  # ms: a tiny model evaluates in under 0.05 s
        say(f"{name}: evaluated in {out['eval_s']:.0f} s")
        return out

    @functools.cache  # tokenized once, for whichever filters score the rows
    def over_tokenized():
        return ctx.tokenize(over.examples(), "tokenizing over-refusal prompts")

    @functools.cache  # a filter shared by several methods scores the rows once
    def filter_over_refusal(name: str) -> dict:
        rates = over_refusal.rates(FILTERS[name].flags(ctx, over.examples(), over_tokenized()), over, "flag")
        say(f"{name} filter: flags {rate_text(rates, 'flag_rate')} of {rates['num_safe']} safe over-refusal prompts")
        return rates

    @functools.cache  # tokenized once, for whichever filters score them
    def harmful_tokenized():
        return ctx.tokenize(harmful, "tokenizing the harmful test prompts")

    @functools.cache
    def filter_held_out_harmful(name: str) -> dict:
        """The filter's recall on the held-out harmful prompts: what it would catch of requests no part of the
        teacher saw (the user data's recall is the attack's)."""
        flagged = FILTERS[name].flags(ctx, harmful, harmful_tokenized())
        figure = intervals.rate("recall", int(np.sum(flagged)), len(harmful))
        say(f"{name} filter: flags {rate_text(figure, 'recall')} of {len(harmful)} held-out harmful prompts")
        return {**figure, "n": len(harmful)}

    def filter_entry(method: Method) -> dict | None:
        entry = filter_summary(wd, method)
        if entry is not None:
            entry["held_out_harmful"] = filter_held_out_harmful(method.filter)
        if entry is not None and over is not None:
            entry["over_refusal"] = filter_over_refusal(method.filter)
        return entry

    methods = {}
    for method in METHODS.values() if which is None else which:
        folder = model_dir(method.path(wd))
        if not (folder / "config.json").exists():
            continue
        methods[method.name] = {**measure(load_stage_model(folder, cfg, method.name), method.name),
                                "stages": stages_of(method), "filter": filter_entry(method),
                                "cost": method_cost(wd, method)}
    if which is None and not methods:
        raise ReftError(f"{wd.root}: no trained student to evaluate; run `reft-jax finetune` first")
    report = {"methods": methods}
    if cfg.eval.references and references:
        report["references"] = {}
        if "base_model" in references:
            report["references"]["base_model"] = measure(base_model(cfg, ctx.vocab), "base model")
        if "teacher" in references and model_config(wd.teacher).exists():
            report["references"]["teacher"] = measure(load_stage_model(model_dir(wd.teacher), cfg, "teacher"), "teacher")
    main_filter = METHODS["ref_teacher"].filter  # the report's own filter section: Ref-Teacher's
    filter_report = FILTERS[main_filter].path(wd) / FILTER_REPORT
    if filter_report.exists():
        report["filter"] = json.loads(filter_report.read_text())
        report["filter"]["held_out_harmful"] = filter_held_out_harmful(main_filter)
        if over is not None:
            report["filter"]["over_refusal"] = filter_over_refusal(main_filter)
    refusal_log = teacher_refusal_log(wd)
    if refusal_log is not None:
        report["teacher_refusal"] = refusal_log
    report["eval_data"] = {"fingerprint": ctx.fingerprint("eval"), "num_harmful": len(harmful),
                           "num_task": len(task), "num_over_refusal": 0 if over is None else len(over.requests)}
    if jax.process_index() == 0:
        wd.eval.mkdir(parents=True, exist_ok=True)
        atomic.write_text(wd.eval / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def say(message: str) -> None:
    """One line of the evaluation's log on stderr (process 0), between the progress bars, as each figure is known:
    the evaluation of a real model runs for minutes."""
    if jax.process_index() == 0:
        tqdm.write(f"reft-jax evaluate: {message}", file=sys.stderr)
