"""The evaluation of a run's methods: harmful score (eval.judge on data.eval.harmful), finetune accuracy
(data.eval.task_source), the filter's metrics and each method's cost; WORKDIR/eval/report.json."""

from __future__ import annotations

import json

import jax

from reft_jax import cost
from reft_jax.context import RunContext
from reft_jax.errors import ConfigError, ReftError
from reft_jax.evaluation import judges, metrics
from reft_jax.evaluation.generate import GenerationConfig, generate_text
from reft_jax.methods import METHODS, Method
from reft_jax.models import Transformer
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.stages import stages_of
from reft_jax.workdir import FILTER_REPORT, METRICS, Workdir, model_config, model_dir

FILTER_METRICS = ("precision", "recall", "f1", "auroc", "num_flagged", "num_examples", "tau")


def filter_metrics(wd: Workdir, method: Method) -> dict | None:
    """The method's filter on the user data: precision, recall, F1, AUROC, counts (None without a filter)."""
    if not method.filter:
        return None
    report = json.loads((wd.filter(method.filter) / FILTER_REPORT).read_text())
    return {"name": method.filter, **{k: report.get(k) for k in FILTER_METRICS}}


def method_cost(wd: Workdir, method: Method) -> dict:
    """Each stage's wall time, accelerator-seconds and FLOPs (shared stages, like the teacher, count in full
    for every method that needs them: the price of that pipeline), and their totals."""
    names = stages_of(method)
    records = [cost.read(wd.stage(s)) for s in names]
    return {"stages": [r or {"stage": name} for r, name in zip(records, names)], **cost.total(records)}


def teacher_refusal_log(wd: Workdir) -> list[dict] | None:
    """The refusal feature over the teacher's training, at each recomputation of R_l (None without a teacher)."""
    log = wd.teacher / METRICS
    if not log.exists():
        return None
    return [{k: v for k, v in r.items() if k == "refusal_step" or k.startswith(("pool_", "heldout_", "r_"))}
            for r in map(json.loads, log.read_text().splitlines()) if "refusal_step" in r]


def run(ctx: RunContext, which: list[Method] | None = None) -> dict:
    """Evaluates the methods `which` (default: every trained one); with eval.references, also the base model
    before finetuning and the teacher."""
    cfg, wd, tokenizer = ctx.cfg, ctx.workdir, ctx.tokenizer
    d = cfg.data
    if not d.eval.harmful:
        raise ConfigError("data.eval.harmful: no harmful test prompts configured")
    harmful = ctx.load_examples(d.eval.harmful, with_response=False)[: d.eval.n_harmful]
    task = ctx.load_examples(d.eval.task_source, task=d.user.task)[: d.eval.n_task] if d.eval.task_source else []
    generation = GenerationConfig(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
    judge = judges.make_judge(cfg.eval.judge, cfg.eval.judge_path)

    def measure(model: Transformer, name: str) -> dict:
        answers = generate_text(model, tokenizer, [ex["prompt"] for ex in harmful], generation,
                                desc=f"{name}: harmful prompts")
        result = judges.harmful_score(judge, [ex["prompt"] for ex in harmful], answers)
        accuracy = None
        if task:
            predictions = generate_text(model, tokenizer, [ex["prompt"] for ex in task], generation,
                                        desc=f"{name}: task")
            accuracy = metrics.finetune_accuracy(d.user.task, predictions, [ex["label"] for ex in task])["finetune_accuracy"]
        return {"harmful_score": result["harmful_score"], "finetune_accuracy": accuracy, "judge": result["judge"],
                "num_harmful_prompts": result["n"], "num_task": len(task),
                "examples": [{"prompt": p["prompt"][-200:], "answer": a} for p, a in zip(harmful[:3], answers)]}

    methods = {}
    for method in METHODS.values() if which is None else which:
        folder = model_dir(wd.method(method.name))
        if not (folder / "config.json").exists():
            continue
        methods[method.name] = {**measure(load_stage_model(folder, cfg, method.name), method.name),
                                "stages": stages_of(method), "filter": filter_metrics(wd, method),
                                "cost": method_cost(wd, method)}
    if not methods:
        raise ReftError(f"{wd.root}: no trained student to evaluate; run `reft-jax finetune` first")
    report = {"methods": methods}
    if cfg.eval.references:  # what finetuning starts from and what the student distils from
        report["references"] = {"base_model": measure(base_model(cfg, ctx.vocab), "base model")}
        if model_config(wd.teacher).exists():
            report["references"]["teacher"] = measure(load_stage_model(model_dir(wd.teacher), cfg, "teacher"), "teacher")
    filter_report = wd.filter() / FILTER_REPORT
    if filter_report.exists():
        report["filter"] = json.loads(filter_report.read_text())
    refusal_log = teacher_refusal_log(wd)
    if refusal_log is not None:
        report["teacher_refusal"] = refusal_log
    if jax.process_index() == 0:
        wd.eval.mkdir(parents=True, exist_ok=True)
        (wd.eval / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
