"""Stage 3, one per method: a method's starting model finetuned on its (filtered) user data, with what it adds
from the alignment data. For ref_teacher (the `finetune` command): the base model on the Ref-Teacher-filtered
data, distilling the teacher; its model is WORKDIR/student/model, every other method's WORKDIR/METHOD/model, and
user_data.json says which user rows it trained on. With data.user.filtered (a reviewed kept.jsonl as the user
data) no filter is applied again."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import jax

from reft_jax.errors import ReftError
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import Method
from reft_jax.models import save_adapter
from reft_jax.models.from_config import base_model, load_stage_model, trainable
from reft_jax.models.hf_io import save_model
from reft_jax.runtime.workdir import FILTER_REPORT, FILTER_SCORES, USER_DATA, Workdir, adapter_dir, model_dir
from reft_jax.stages.common import Filter, row_digest
from reft_jax.train import runs

log = logging.getLogger(__name__)


def flagged_indices(wd: Workdir, screen: Filter, fingerprint: str | None = None) -> set[int]:
    """Indices of the user examples a filter flagged (from its scores of the user data); with `fingerprint`
    (RunContext.user_fingerprint), only if the scores are of that user data."""
    folder = screen.path(wd)
    path, report_path = folder / FILTER_SCORES, folder / FILTER_REPORT
    if not path.exists() or not report_path.exists():
        raise ReftError(f"{path}: missing; run `{screen.command}` first")
    report = json.loads(report_path.read_text())
    scored = report.get("user_data", {})
    if report.get("data") != "user" or (fingerprint and scored.get("fingerprint") != fingerprint):
        raise ReftError(f"{report_path}: holds the scores of other data ({scored.get('source', report.get('data'))}), "
                        f"not of this user data; run `{screen.command}` on it (the same --data) first")
    return {r["index"] for r in map(json.loads, path.read_text().splitlines()) if r["flagged"]}


def kept_check(ctx: RunContext, screen: Filter) -> dict[str, list[str]]:
    """A reviewed file (data.user.filtered: `finetune --kept FILE`) checked against the filter's last scores: the
    rows ("file:line") that are not in the user data it scored ("not_scored") and those it scored above tau
    ("scored_above_tau"). One warning names them, or with data.user.strict an error; user_data.json keeps them."""
    path = screen.path(ctx.workdir) / FILTER_SCORES
    lines = map(json.loads, path.read_text().splitlines()) if path.exists() else ()
    flagged = {r["digest"]: r["flagged"] for r in lines if "digest" in r}  # a file of an older version has none
    verdicts = [(ex["source"], flagged.get(row_digest(ex))) for ex in ctx.user_examples]
    found = {"not_scored": [s for s, v in verdicts if v is None], "scored_above_tau": [s for s, v in verdicts if v]}
    if found["not_scored"] or found["scored_above_tau"]:
        what = "; ".join(f"{len(rows)} row(s) {text} (first: {rows[0]})" for rows, text in (
            (found["not_scored"], f"not in the user data {path} scored"),
            (found["scored_above_tau"], "the filter scored above tau")) if rows)
        if ctx.cfg.data.user.strict:
            raise ReftError(f"{ctx.cfg.data.user.source}: {what}; remove them, or drop --strict to finetune on them")
        if jax.process_index() == 0:
            log.warning("%s: %s; finetuning on them as given (--strict refuses them)", ctx.cfg.data.user.source, what)
    return found


def run(ctx: RunContext, method: Method, screen: Filter | None = None,
        start: Callable[[Workdir], Path] | None = None) -> Path:
    """Finetunes `method` (the registry passes its filter and the folder of the stage its model starts from)."""
    cfg, wd = ctx.cfg, ctx.workdir
    out = method.path(wd)
    with cost.StageCost(out, method.stage) as stage:
        user = ctx.user
        reviewed = kept_check(ctx, screen) if screen and cfg.data.user.filtered else {}
        if screen and not cfg.data.user.filtered:
            flagged = flagged_indices(wd, screen, ctx.user_fingerprint)
            user = user.select([i for i, index in enumerate(user.index) if int(index) not in flagged])
            if len(user) == 0:
                raise ReftError(f"{screen.path(wd)}: the filter flagged every user example; nothing to finetune on")
        ctx.require_responses(user.index)
        if jax.process_index() == 0:  # which user rows this method trained on
            out.mkdir(parents=True, exist_ok=True)
            (out / USER_DATA).write_text(json.dumps({"num_examples": len(user), "index": user.index.tolist(),
                                                     **reviewed}) + "\n")
        teacher = load_stage_model(model_dir(wd.teacher), cfg, "teacher") if method.distill else None
        if start:
            model_from = load_stage_model(model_dir(start(wd)), cfg, f"{method.start_stage} model")
        else:
            model_from = base_model(cfg, ctx.vocab)
        model = trainable(cfg, model_from, "student_adapters")
        user_at = ctx.batches(user, "user_batches").batch
        align_at = None
        if method.uses_alignment:
            align_rows = cfg.distill.align_batch_size if method.distill else 0  # the distillation's share of a step
            align_at = ctx.batches(ctx.alignment, "distillation_batches", batch_size=align_rows).batch
        spec = method.finetune(cfg, teacher, user_at, align_at, data_id=ctx.user_fingerprint)
        trained = runs.train(cfg, model, out, spec)
        save_model(trained.model, ctx.tokenizer, model_dir(out))
        if trained.model.opts.lora is not None:  # the adapter alone too, for PEFT users (`reft-jax export --adapter`)
            save_adapter(trained.model, adapter_dir(out), base_model=ctx.base_model_id)
        stage.flops = trained.flops
    return out
