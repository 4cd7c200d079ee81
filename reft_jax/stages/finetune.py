"""Stage 3, one per method: a method's starting model finetuned on its (filtered) user data, with what it adds
from the alignment data. For ref_teacher (the `finetune` command): the base model on the Ref-Teacher-filtered
data, distilling the teacher; its model is WORKDIR/student/model, every other method's WORKDIR/METHOD/model, and
user_data.json says which user rows it trained on. With data.user.filtered (a reviewed kept.jsonl as the user
data) no filter is applied again."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from reft_jax.errors import ReftError
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import Method
from reft_jax.models import save_adapter
from reft_jax.models.from_config import base_model, load_stage_model, lora_config, trainable
from reft_jax.models.hf_io import save_model
from reft_jax.runtime.workdir import FILTER_REPORT, FILTER_SCORES, USER_DATA, Workdir, adapter_dir, model_dir
from reft_jax.train import defences, runs


def flagged_indices(wd: Workdir, filter_name: str = "ref_teacher", fingerprint: str | None = None) -> set[int]:
    """Indices of the user examples a filter flagged (from its scores of the user data); with `fingerprint`
    (RunContext.user_fingerprint), only if the scores are of that user data."""
    folder = wd.filter(filter_name)
    path, report_path = folder / FILTER_SCORES, folder / FILTER_REPORT
    command = "reft-jax filter" if filter_name == "ref_teacher" else f"reft-jax run with the {filter_name} filter"
    if not path.exists() or not report_path.exists():
        raise ReftError(f"{path}: missing; run `{command}` first")
    report = json.loads(report_path.read_text())
    scored = report.get("user_data", {})
    if report.get("data") != "user" or (fingerprint and scored.get("fingerprint") != fingerprint):
        raise ReftError(f"{report_path}: holds the scores of other data ({scored.get('source', report.get('data'))}), "
                        f"not of this user data; run `{command}` on it (the same --data) first")
    return {r["index"] for r in map(json.loads, path.read_text().splitlines()) if r["flagged"]}


def run(ctx: RunContext, method: Method) -> Path:
    cfg, wd = ctx.cfg, ctx.workdir
    out = wd.method(method.name)
    with cost.StageCost(out, f"finetune:{method.name}") as stage:
        user = ctx.user
        if method.filter and not cfg.data.user.filtered:
            flagged = flagged_indices(wd, method.filter, ctx.user_fingerprint)
            user = user.select([i for i, index in enumerate(user.index) if int(index) not in flagged])
            if len(user) == 0:
                raise ReftError(f"{wd.filter(method.filter)}: the filter flagged every user example; "
                                "nothing to finetune on")
        ctx.require_responses(user.index)
        if jax.process_index() == 0:  # which user rows this method trained on
            out.mkdir(parents=True, exist_ok=True)
            (out / USER_DATA).write_text(json.dumps({"num_examples": len(user), "index": user.index.tolist()}) + "\n")
        teacher = load_stage_model(model_dir(wd.teacher), cfg, "teacher") if method.distill else None
        if method.start_stage:
            start = load_stage_model(model_dir(wd.stage(method.start_stage)), cfg, f"{method.start_stage} model")
        else:
            start = base_model(cfg, ctx.vocab)
        model = trainable(cfg, start, salt=2)
        user_batches = ctx.batches(user, seed_offset=2)
        align_batches = ctx.batches(ctx.alignment, seed_offset=3)
        steps, lora = cfg.student.steps, lora_config(cfg)
        if method.lisa:
            student = runs.train_lisa(cfg, model, out, user_batches.batch, align_batches.batch, steps=steps,
                                      data_id=ctx.user_fingerprint)
            lisa = cfg.defences.lisa

            def batch_at(i):  # the batch each Lisa step trained on
                alignment = defences.lisa_phase(i, lisa.align_steps, lisa.user_steps)
                return (align_batches if alignment else user_batches).batch(i)

            stage.flops = cost.train_passes(model.cfg, lora, batch_at, steps)
        else:
            student = runs.train_student(cfg, model, teacher, out, user_batches.batch, align_batches.batch,
                                         steps=steps, beta=cfg.distill.beta if method.distill else 0.0,
                                         alpha=cfg.baselines.joint_weight if method.joint else 0.0,
                                         data_id=ctx.user_fingerprint)
            stage.flops = cost.train_passes(model.cfg, lora, user_batches.batch, steps)
        save_model(student, ctx.tokenizer, model_dir(out))
        if student.opts.lora is not None:  # the adapter alone too, for PEFT users (`reft-jax export --adapter`)
            save_adapter(student, adapter_dir(out), base_model=ctx.base_model_id)
        if method.distill or method.joint:
            stage.flops += cost.train_passes(model.cfg, lora, align_batches.batch, steps)
        if method.distill:
            stage.flops += cost.forward_passes(model.cfg, align_batches.batch, steps)
    return out
