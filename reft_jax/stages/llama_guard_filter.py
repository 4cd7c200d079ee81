"""The llamaguard_filter baseline's filter: a local Llama-Guard-style judge reads each user example (prompt and
response) and flags those it calls unsafe (baselines.llama_guard_path); WORKDIR/filters/llama_guard/."""

from __future__ import annotations

import numpy as np

from reft_jax.errors import ConfigError
from reft_jax.evaluation import judges
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.refusal import scoring
from reft_jax.stages.common import Filter, write_filter


def flags(ctx: RunContext, examples: list[dict], ds=None) -> np.ndarray:
    """The judge's verdicts on other prompts (prompt-only examples): it reads the user's message alone."""
    judge = judges.LlamaGuardJudge(ctx.cfg.baselines.llama_guard_path)
    return np.asarray(judge.judge_prompts([ex["request"] for ex in examples]))


def run(ctx: RunContext) -> dict:
    path = ctx.cfg.baselines.llama_guard_path
    if not path:
        raise ConfigError("baselines.llama_guard_path: the llamaguard_filter method needs a local checkpoint")
    folder = FILTER.path(ctx.workdir)
    with cost.StageCost(folder, FILTER.stage) as stage:
        examples, ds = ctx.user_examples, ctx.user  # the judge reads text; the tokenized rows say which were kept
        judge = judges.LlamaGuardJudge(path)
        pairs = [(examples[i]["prompt"], examples[i]["response"]) for i in ds.index]
        unsafe = judge.judge([p for p, _ in pairs], [r for _, r in pairs])
        result = scoring.FilterResult(index=np.asarray(ds.index), score=np.asarray(unsafe, np.float32),
                                      label=np.asarray(ds.harmful), tau=0.5, layers=())
        report = write_filter(ctx, result, folder, method="llama_guard", judge=judge.name)
        new = judge.generation.max_new_tokens
        lengths = (len(judge.tokenizer(judge.format(p, r)).input_ids) + new for p, r in pairs)
        stage.flops = cost.forward_passes_of(judge.model.cfg, ((1, n) for n in lengths))
    return report


def unavailable(cfg) -> str | None:
    return None if cfg.baselines.llama_guard_path else "no Llama-Guard checkpoint configured (baselines.llama_guard_path)"


FILTER = Filter("llama_guard", run, flags, unavailable=unavailable, inputs=("baselines.llama_guard_path",))
