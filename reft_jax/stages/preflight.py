"""Checks before a run's first step: every file and field a later stage will need, so that a run fails in
seconds, not after an hour of training. Every problem found is listed, in one message."""

from __future__ import annotations

from pathlib import Path

import jax

from reft_jax.errors import ConfigError, ReftError
from reft_jax.evaluation import over_refusal
from reft_jax.evaluation.jailbreak import load_templates
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS
from reft_jax.refusal import adapt
from reft_jax.stages import STAGES
from reft_jax.stages.attack import attack_prompts, gcg_config


def check(ctx: RunContext, plan: list[str]) -> None:
    """Raises ConfigError listing every problem of the run `plan` (stage names) would meet."""
    cfg = ctx.cfg
    problems: list[str] = []

    def attempt(fn) -> bool:
        try:
            fn()
            return True
        except ReftError as e:
            problems.append(str(e))
            return False

    model_ok = not cfg.model.path or (Path(cfg.model.path).expanduser() / "config.json").exists()
    if not model_ok:
        problems.append(f"model.path: {cfg.model.path} is not a model folder (no config.json)")
    if attempt(lambda: ctx.tokenizer):  # the data is read through the tokenizer (its chat template)
        if model_ok:  # tokenized for the model's vocabulary, and kept for the stages
            # With lookalikes, tokenizing would answer them with the base model: preflight reads, never runs a model.
            attempt(lambda: ctx.alignment_sources if cfg.data.alignment.n_lookalikes else ctx.alignment)
            attempt(lambda: ctx.pool)
        finetunes = [m for m in METHODS.values() if m.stage in plan]
        if attempt(ctx.require_responses if finetunes else lambda: ctx.user_examples) and (
                cfg.filter.adapt_fpr > 0 and "filter" in plan):  # at most the lower half can stand for the task
            attempt(lambda: adapt.require_task_rows(len(ctx.user_examples) // 2, len(ctx.user_examples)))
        if model_ok and any("harmful_pairs" in STAGES[name].reads for name in plan):
            attempt(lambda: ctx.harmful_pairs)
        attempt(lambda: _eval_data(ctx))
        if cfg.data.eval.over_refusal:
            attempt(lambda: over_refusal.load(cfg.data.eval, template=cfg.data.template, tokenizer=ctx.tokenizer))
        if cfg.eval.gcg.prompts > 0:
            attempt(lambda: attack_prompts(ctx))
            attempt(lambda: gcg_config(cfg))
    attempt(lambda: load_templates(cfg.eval.templates))
    if cfg.eval.refusal_judge_path and not (Path(cfg.eval.refusal_judge_path).expanduser() / "config.json").exists():
        problems.append(f"eval.refusal_judge_path: {cfg.eval.refusal_judge_path} is not a model folder (no config.json)")
    rows, processes = cfg.distill.align_batch_size, jax.process_count()
    if rows < 0 or rows % processes:
        problems.append(f"distill.align_batch_size: {rows} is neither 0 (data.batch_size) nor a positive multiple "
                        f"of the {processes} processes")
    if cfg.data.alignment.n_lookalikes < 0:
        problems.append(f"data.alignment.n_lookalikes: {cfg.data.alignment.n_lookalikes} should be 0 (none) or more")
    for method in (m for m in METHODS.values() if m.stage in plan):
        attempt(lambda: method.check(cfg))
    if cfg.eval.judge != "keyword" and not (Path(cfg.eval.judge_path).expanduser() / "config.json").exists():
        problems.append(f"eval.judge_path: the {cfg.eval.judge} judge needs a local checkpoint folder "
                        f"({cfg.eval.judge_path or 'not set'})")
    problems = list(dict.fromkeys(problems))  # one problem met twice (the user data is drawn without the pool's)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))


def _eval_data(ctx: RunContext) -> None:
    d = ctx.cfg.data
    if not d.eval.harmful:
        raise ConfigError("data.eval.harmful: no harmful test prompts configured")
    ctx.load_examples(d.eval.harmful, with_response=False)
    if d.eval.task_source:
        ctx.load_examples(d.eval.task_source, task=d.user.task)
