"""The stages of a run, one module each, and their registry.

A stage is a function of the run context (reft_jax.experiment.context.RunContext) that writes one folder of the
workdir and is done when that folder's marker (its last output) exists. The registry below says, for each stage,
its folder, its marker, what it needs before it and what it is made from: the config fields it reads and the
datasets it reads (`reads`, groups of RunContext's DATASETS), by content fingerprint. A stage can read no dataset
it does not declare (RunContext.reading), so its record cannot miss one. A method's stages and a run's plan are
derived from the registry. A stage records what it was made from in its folder (inputs.json) and is not reused
for other inputs (`check_inputs`). The teacher reads no customer data: one teacher serves every user file. A
`seeded` stage (the finetunings and the alignment stages) is trained once per training seed of config `seeds`
(reft_jax.pipeline), in its seed's folder (Workdir.seed_root); the teacher and the filters serve every seed.
Filters and alignment-stage defences register themselves in their modules (a `Filter` named FILTER, an entry of
defence_alignment.DEFENCES); a method (reft_jax.experiment.methods.METHODS) names them.

    teacher              stages/teacher.py            the Ref-Teacher and its refusal feature
    safety_alignment     stages/safety_alignment.py   the base model SFT-trained on the alignment data
    alignment:DEFENCE    stages/defence_alignment.py  Vaccine's, RepNoise's or Booster's alignment of the base
    filter               stages/ref_teacher_filter.py the teacher's scores of the user data
    filter:saft          stages/saft_filter.py        the SAFT baseline's filter
    filter:llama_guard   stages/llama_guard_filter.py a Llama-Guard judge as a filter
    finetune:METHOD      stages/finetune.py           each method's finetuning
(stages/evaluate.py evaluates the finetuned methods once their stages are done.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from typing import Callable

import jax

from reft_jax.config.typed import leaf_fields
from reft_jax.errors import ReftError
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS, Method
from reft_jax.runtime import atomic, parallel
from reft_jax.runtime.workdir import FILTER_REPORT, FILTER_SETTINGS, Workdir, model_config
from reft_jax.stages import (
    defence_alignment,
    finetune,
    llama_guard_filter,
    ref_teacher_filter,
    safety_alignment,
    saft_filter,
    teacher,
)
from reft_jax.stages.common import Filter
from reft_jax.stages.defence_alignment import DEFENCES

FILTERS: dict[str, Filter] = {f.name: f for f in (ref_teacher_filter.FILTER, saft_filter.FILTER,
                                                  llama_guard_filter.FILTER)}


INPUTS = "inputs.json"  # in a stage's folder: what it was made from
# The config fields every stage that trains or reads a model depends on (not how it is computed: attention,
# remat, mesh, logging and checkpoint settings may change between runs of one workdir).
MODEL_AND_DATA = ("seed", "model.path", "model.gguf_file", "model.init", "model.dtype", "model.param_dtype",
                  "model.lora", "data.demo", "data.tokenizer", "data.tokenizer_vocab_size", "data.template",
                  "data.buckets", "data.min_response", "data.batch_size", "optim")
# What a stage trained per training seed (Stage.seeded) depends on besides: the seed of its draws.
SEEDED = ("training_seed",)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RunContext], object]
    folder: Callable[[Workdir], Path]
    needs: tuple[str, ...] = ()  # stages whose outputs it reads
    done: Callable[[Path], Path] = model_config  # its folder -> the marker: its last output
    inputs: tuple[str, ...] = MODEL_AND_DATA  # config fields its result depends on (besides its needs')
    reads: tuple[str, ...] = ()  # the dataset groups it reads (RunContext DATASETS): their fingerprints are inputs
    # trained once per training seed (config `seeds`): its folder is under Workdir.seed_root, and its draws are
    # TRAINING streams (reft_jax.config.streams); the others (the teacher, the filters) serve every seed
    seeded: bool = False

    def path(self, wd: Workdir) -> Path:
        return self.folder(wd)

    def marker(self, wd: Workdir) -> Path:
        return self.done(self.folder(wd))


def _marker(name: str) -> Callable[[Path], Path]:
    return lambda folder: folder / name


def _finetune(method: Method, shared: dict[str, Stage]) -> Stage:
    screen = FILTERS[method.filter] if method.filter else None
    start = shared[method.start_stage] if method.start_stage else None
    needs = [screen.stage] if screen else []
    needs += ["teacher"] if method.distill else []
    needs += [start.name] if start else []
    run = functools.partial(finetune.run, method=method, screen=screen, start=start.folder if start else None)
    inputs = [*MODEL_AND_DATA, *SEEDED, "student.steps", "data.user.filtered"]
    inputs += ["data.alignment"] if method.uses_alignment else []
    inputs += ["distill"] if method.distill else []
    inputs += ["baselines.joint_weight"] if method.joint else []
    inputs += ["defences.lisa"] if method.lisa else []
    reads = ("user", "alignment") if method.uses_alignment else ("user",)
    return Stage(method.stage, run, method.path, tuple(needs), inputs=tuple(inputs), reads=reads, seeded=True)


def _registry() -> dict[str, Stage]:
    """Every stage, in the order a run takes them: what others need first."""
    shared = [
        Stage("teacher", teacher.run, lambda wd: wd.teacher, done=_marker(FILTER_SETTINGS),
              inputs=(*MODEL_AND_DATA, "data.alignment", "data.pool", "refusal", "teacher", "filter.tau",
                      "filter.calibrate_recall", "filter.calibrate_max_fpr", "filter.layer_span", "filter.scorer",
                      "filter.veto_recall", "data.veto"),
              reads=("alignment", "pool", "veto")),
        Stage("safety_alignment", safety_alignment.run, lambda wd: wd.safety_aligned,
              inputs=(*MODEL_AND_DATA, *SEEDED, "data.alignment", "baselines.sa_steps", "teacher.steps"),
              reads=("alignment",), seeded=True),
        *(Stage(d.stage, functools.partial(defence_alignment.run, defence=d), d.path,
                inputs=(*MODEL_AND_DATA, *SEEDED, "data.alignment", "baselines.sa_steps", "teacher.steps",
                        f"defences.{d.name}"),
                reads=("alignment", "harmful_pairs") if d.harmful_pairs else ("alignment",), seeded=True)
          for d in DEFENCES.values()),
        *(Stage(f.stage, f.run, f.path, f.needs, done=_marker(FILTER_REPORT), inputs=(*MODEL_AND_DATA, *f.inputs),
                reads=("user", *f.reads)) for f in FILTERS.values()),
    ]
    shared = {s.name: s for s in shared}
    return {**shared, **{m.stage: _finetune(m, shared) for m in METHODS.values()}}


STAGES = _registry()


def stages_of(method: Method) -> list[str]:
    """The stages that produce this method's model, in the order they run."""
    needed = set()

    def visit(name: str) -> None:
        needed.add(name)
        for need in STAGES[name].needs:
            visit(need)

    visit(method.stage)
    return [name for name in STAGES if name in needed]


def plan(methods: list[Method]) -> list[str]:
    """Every stage the methods need, once each, in registry order; the finetunings in the methods' order."""
    needed = {name for m in methods for name in stages_of(m)}
    finetunes = {m.stage for m in METHODS.values()}
    return [name for name in STAGES if name in needed and name not in finetunes] + [m.stage for m in methods]


def inputs_of(ctx: RunContext, name: str) -> dict:
    """What the stage `name` is made from: its config fields and its needs', and the content fingerprint of each
    dataset it reads ("user data", "alignment data", ...); paths inside the workdir are written relative to it (a
    moved workdir is the same)."""
    stage = STAGES[name]
    out = {}
    for need in _needs(ctx, name):
        out.update(inputs_of(ctx, need))
    dormant = _dormant(ctx.cfg)
    for field in stage.inputs:
        value = ctx.cfg
        for part in field.split("."):
            value = getattr(value, part)
        out.update({k: v for k, v in leaf_fields(value, field).items()  # a change is named by its field
                    if not any(k == d or k.startswith(d + ".") for d in dormant)})
    for group in stage.reads:
        out[f"{group.replace('_', ' ')} data"] = ctx.fingerprint(group)
    text = json.dumps(out, sort_keys=True, default=str).replace(str(ctx.workdir.root.absolute()), "WORKDIR")
    return json.loads(text)


def _dormant(cfg) -> set[str]:
    """Config fields that nothing reads under the run's other settings (a source of lookalikes while none are
    drawn): not inputs, so naming one in a config leaves the stages made without it valid."""
    a, p = cfg.data.alignment, cfg.data.pool
    return ({"data.alignment.lookalikes"} if a.n_lookalikes <= 0 else set()) | (
        {"data.alignment.concerns"} if a.n_concerns <= 0 else set()) | (
        {"data.pool.lookalikes"} if p.n_lookalikes <= 0 else set()) | (
        {"filter.adapt_fpr"} if cfg.filter.adapt_fpr <= 0 else set())


def _needs(ctx: RunContext, name: str) -> list[str]:
    """The stages `name` reads in this run: with data.user.filtered (a reviewed kept.jsonl) no filter's."""
    filters = {f.stage for f in FILTERS.values()} if ctx.cfg.data.user.filtered else set()
    return [need for need in STAGES[name].needs if need not in filters]


def check_inputs(ctx: RunContext, name: str) -> None:
    """Stops with one line when the stage's folder, or that of a stage it needs, was made (or begun) from other
    inputs than this run's; a folder without a record (an older workdir) is taken as it is, and so is an input its
    record predates (a field or dataset added by a later version), so an upgrade does not retrain a teacher."""
    for need in _needs(ctx, name):
        check_inputs(ctx, need)
    folder = STAGES[name].path(ctx.workdir)
    path = folder / INPUTS
    if not path.exists():
        return
    recorded, now = json.loads(path.read_text()), inputs_of(ctx, name)
    # An input the record does not name (an older version's record) or no longer needed is taken as it was.
    changed = [k for k in sorted(set(recorded) & set(now)) if recorded[k] != now[k]]
    if changed:
        first = changed[0]
        more = f", and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise ReftError(f"{folder}: made from other inputs than this run's ({first}: {_short(recorded.get(first))} -> "
                        f"{_short(now.get(first))}{more}); use a new --workdir, or --force to redo the stages (or "
                        f"remove {folder})")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def run_stage(name: str, ctx: RunContext, *, force: bool = False):
    """Runs the stage `name` of the registry; returns what it returns (its folder, or a filter's report).
    It must be made from this run's inputs (check_inputs); force: it starts over in an empty folder, its previous
    one kept aside whole until it ends, and put back if it fails (a rejected input, an error, Ctrl-C)."""
    folder = STAGES[name].path(ctx.workdir)
    primary = jax.process_index() == 0
    if force:  # what it reads must still be this run's; its own folder starts empty
        for need in _needs(ctx, name):
            check_inputs(ctx, need)
    else:
        check_inputs(ctx, name)
    parallel.sync(f"{name}: inputs checked")  # every process read the old record before process 0 moves or rewrites it
    with atomic.replacing(folder, primary) if force else contextlib.nullcontext():
        parallel.sync(f"{name}: folder set aside")
        if primary:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / INPUTS).write_text(json.dumps(inputs_of(ctx, name), indent=1, sort_keys=True) + "\n")
        with ctx.reading(name, STAGES[name].reads):
            result = STAGES[name].run(ctx)
        parallel.sync(f"{name}: done")  # process 0 writes the stage's files; no process reads them before it is done
    return result
