"""Checks before a run's first step: every file and field a later stage will need, so that a run fails in
seconds, not after an hour of training. Every problem found is listed, in one message."""

from __future__ import annotations

from pathlib import Path

from reft_jax.context import RunContext
from reft_jax.errors import ConfigError, ReftError


def check(ctx: RunContext, plan: list[str]) -> None:
    """Raises ConfigError listing every problem of the run `plan` (stage names) would meet."""
    cfg = ctx.cfg
    problems: list[str] = []

    def attempt(fn) -> None:
        try:
            fn()
        except ReftError as e:
            problems.append(str(e))

    if cfg.model.path and not (Path(cfg.model.path).expanduser() / "config.json").exists():
        problems.append(f"model.path: {cfg.model.path} is not a model folder (no config.json)")
    attempt(lambda: ctx.tokenizer)
    if not problems:  # the data needs the tokenizer
        attempt(lambda: ctx.alignment)
        attempt(lambda: ctx.pool)
        if any(s.startswith("finetune:") for s in plan):
            attempt(ctx.require_responses)
        else:
            attempt(lambda: ctx.user_examples)
        attempt(lambda: _eval_data(ctx))
    if cfg.eval.judge != "keyword" and not (Path(cfg.eval.judge_path).expanduser() / "config.json").exists():
        problems.append(f"eval.judge_path: the {cfg.eval.judge} judge needs a local checkpoint folder "
                        f"({cfg.eval.judge_path or 'not set'})")
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
