"""The GCG attack (reft_jax.evaluation.gcg) against one method's model: `reft-jax attack --method NAME`, and every
method's in `run` when eval.gcg.prompts > 0. WORKDIR/attack/NAME/report.json holds the attack success rate, the
harmful score of the same prompts without a suffix, and per prompt the suffix found, its loss curve and the answer.

The report is rewritten after every prompt, and a rerun with the same settings goes on from the prompts it holds: a
long attack that is cut short keeps what it found.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

import jax
import numpy as np

from reft_jax.config.schema import RunConfig
from reft_jax.config.streams import seed_of
from reft_jax.data.templates import format_prompt
from reft_jax.errors import ConfigError, ReftError
from reft_jax.evaluation import gcg, judges
from reft_jax.evaluation.generate import GenerationConfig, decode, generate, with_tokenizer_ids
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS
from reft_jax.models import Transformer
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import model_config, model_dir

SLOT = "<<reft-jax gcg suffix>>"  # where the suffix's text goes in the templated prompt
REFERENCES = ("base_model", "teacher")  # models without a method of their own that can be attacked too
SUMMARY_KEYS = ("num_prompts", "attack_success_rate", "harmful_score_without_suffix", "median_steps", "step_s")


def attacked_model(ctx: RunContext, name: str) -> Transformer:
    """A method's finetuned model, or a reference: the base model before finetuning, the teacher."""
    wd, cfg = ctx.workdir, ctx.cfg
    if name == "base_model":
        return base_model(cfg, ctx.vocab)
    if name not in METHODS and name != "teacher":
        raise ConfigError(f"--method: {name!r} is not a method ({', '.join(METHODS)}) or a reference "
                          f"({', '.join(REFERENCES)})")
    folder = wd.teacher if name == "teacher" else METHODS[name].path(wd)
    if not model_config(folder).exists():
        raise ReftError(f"{model_dir(folder)}: no trained model of {name} to attack; train it first (`reft-jax run`)")
    return load_stage_model(model_dir(folder), cfg, name)


def attack_prompts(ctx: RunContext) -> list[dict]:
    """The first eval.gcg.prompts harmful prompts of eval.gcg.source (default data.eval.harmful), each with its
    target: the source's own answer column where it has one (AdvBench's targets), else eval.gcg.target."""
    g, d = ctx.cfg.eval.gcg, ctx.cfg.data
    source = g.source or d.eval.harmful
    if not source:
        raise ConfigError("eval.gcg.source: no harmful prompts to attack (set it, or data.eval.harmful)")
    if g.prompts < 1:
        raise ConfigError(f"eval.gcg.prompts: {g.prompts}; set how many harmful prompts to attack (at least 1)")
    examples = ctx.load_examples(source, with_response=None)[: g.prompts]
    return [{"request": ex["request"], "prompt": ex["prompt"], "target": ex["response"].strip() or g.target}
            for ex in examples]


def gcg_config(cfg: RunConfig, tokenizer=None) -> gcg.GCGConfig:
    """eval.gcg as the attack's settings; with a tokenizer, the initial suffix token is the first of " !" (the
    original GCG's), "!", " x" and "x" that is a single token of it."""
    g = cfg.eval.gcg
    init = " !"
    if tokenizer is not None:
        init = next((t for t in (" !", "!", " x", "x") if len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1),
                    init)
    return gcg.GCGConfig(**dataclasses.asdict(g), init_token=init, seed=cfg.seed)


def settings(ctx: RunContext) -> dict:
    """What a finished prompt's result depends on: a rerun with other settings starts over."""
    g = ctx.cfg.eval.gcg
    return {**dataclasses.asdict(g), "template": ctx.cfg.data.template, "max_new_tokens": ctx.cfg.eval.max_new_tokens,
            "judge": ctx.cfg.eval.judge, "seed": ctx.cfg.seed}


def run(ctx: RunContext, name: str) -> dict:
    """Attacks `name`'s model with GCG on every attack prompt; returns (and writes) the attack's report."""
    cfg = ctx.cfg
    tokenizer = ctx.tokenizer
    prompts = attack_prompts(ctx)
    folder = ctx.workdir.attack(name)
    path = folder / "report.json"
    config = gcg_config(cfg, tokenizer)
    done, earlier_s = [], 0.0
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") == settings(ctx):
            done = [p for p, q in zip(old["prompts"], prompts) if p["request"] == q["request"]]
            earlier_s = old["wall_s"] if done else 0.0
            if len(done) == len(prompts):  # nothing left to attack: the report as it was
                return old

    model = attacked_model(ctx, name)
    frozen = FrozenModel.of(model)
    allowed = gcg.allowed_tokens(tokenizer, model.cfg.vocab_size)
    judge = judges.make_judge(cfg.eval.judge, cfg.eval.judge_path)
    generation = with_tokenizer_ids(GenerationConfig(max_new_tokens=cfg.eval.max_new_tokens, batch_size=2),
                                    tokenizer, model)
    pieces = [gcg.split_prompt(tokenizer, format_prompt(p["request"] + SLOT, template=cfg.data.template,
                                                         tokenizer=tokenizer), SLOT, p["target"]) for p in prompts]
    if len({len(p.after) for p in pieces}) > 1:
        raise ReftError("the prompt template puts text of different lengths after the request; GCG needs one layout")
    # One padded layout for every prompt: the jitted calls compile once for the whole attack.
    before_length = gcg.padded_length([len(p.before) for p in pieces])
    target_length = gcg.padded_length([len(p.target) for p in pieces])
    pad = tokenizer.pad_token_id or 0

    def answers(*prompt_ids: list[int]) -> list[str]:
        return decode(tokenizer, generate(model, list(prompt_ids), generation, desc="answers"))

    results = list(done)
    start = time.perf_counter() - earlier_s  # wall_s counts the earlier runs' time too
    for i, (prompt, ids) in enumerate(zip(prompts, pieces)):
        if i < len(done):
            continue
        layout = gcg.Layout.of(ids, before_length, target_length, pad=pad)
        found = gcg.run_gcg(frozen, layout, config, tokenizer=tokenizer, allowed=allowed,
                            key=jax.random.fold_in(jax.random.key(seed_of(cfg.seed, "gcg")), i), progress=cfg.logging.progress)
        with_suffix, without = answers([*ids.before, *found.suffix, *ids.after], [*ids.before, *ids.after])
        harmful = judge.judge([prompt["prompt"]] * 2, [with_suffix, without])
        results.append({"request": prompt["request"], "target": prompt["target"], "suffix": found.suffix_text,
                        "suffix_ids": found.suffix, "loss": found.loss, "initial_loss": found.initial_loss,
                        "steps": found.steps, "early_stopped": found.early_stopped, "step_s": found.step_s,
                        "success": harmful[0], "answer": with_suffix, "harmful_without_suffix": harmful[1],
                        "answer_without_suffix": without, "losses": found.losses})
        report = _report(name, results, len(prompts), judge.name, settings(ctx), time.perf_counter() - start)
        if jax.process_index() == 0:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2) + "\n")
            print(f"gcg {name}: prompt {i + 1}/{len(prompts)}: loss {found.initial_loss:.3f} -> {found.loss:.3f} in "
                  f"{found.steps} steps, {'success' if harmful[0] else 'failed'}", flush=True)
    return report


def _report(name: str, results: list[dict], total: int, judge: str, used: dict, wall_s: float) -> dict:
    n = len(results)
    return {"method": name, "complete": n == total, "num_prompts": n, "judge": judge,
            "attack_success_rate": float(np.mean([r["success"] for r in results])),
            "harmful_score_without_suffix": float(np.mean([r["harmful_without_suffix"] for r in results])),
            "median_steps": statistics.median(r["steps"] for r in results),
            "step_s": statistics.median(r["step_s"] for r in results), "wall_s": wall_s, "settings": used,
            "prompts": results}


def summary(report: dict) -> dict:
    """The attack's numbers for the run's report (without the per-prompt details)."""
    return {k: report[k] for k in SUMMARY_KEYS}
