"""The pipeline as stages over a workdir: teacher -> filter -> student, and the baselines' stages.

Each stage reads what the previous one wrote (the layout is reft_jax.workdir's), so the CLI can run them one
at a time or chained."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reft_jax import data as rdata
from reft_jax import filter as rfilter
from reft_jax import cost, parallel, refusal
from reft_jax.config import with_fields
from reft_jax.errors import ConfigError, ReftError
from reft_jax.methods import METHODS, Method
from reft_jax.models import Transformer, gguf, save_pretrained
from reft_jax.models.from_config import base_model, load_stage_model, lora_config, trainable, vocab_of
from reft_jax.train import runs
from reft_jax.workdir import FILTER_REPORT, FILTER_SCORES, METRICS, Workdir, model_config, model_dir
from reft_jax.state import FrozenModel

logger = logging.getLogger(__name__)

DEMO_SPLITS = {
    "data.alignment.harmful": "alignment_harmful", "data.alignment.harmless": "alignment_harmless",
    "data.user.source": "task_train", "data.user.harmful_source": "attack",
    "data.pool.harmful": "alignment_harmful", "data.pool.harmless": "alignment_harmless",
    "data.eval.harmful": "harmful_eval", "data.eval.task_source": "task_test",
}


# -- data ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunData:
    tokenizer: Any
    alignment: rdata.TokenizedDataset  # harmful prompts -> refusals, harmless prompts -> helpful answers
    user: rdata.TokenizedDataset  # the poisoned user data, every example labelled
    pool: rdata.TokenizedDataset  # the fixed refusal-feature pool (prompts only)


def resolve_demo(cfg: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
    """With data.demo, generates the demo data (once) under WORKDIR/demo and points the sources at it."""
    if not cfg.data.demo:
        return cfg
    folder = Workdir(workdir).demo
    if jax.process_index() == 0 and not (folder / "tokenizer" / "tokenizer.json").exists():
        rdata.demo.write(str(folder), seed=int(cfg.seed))
    parallel.sync("demo data")
    fields = {key: str(folder / f"{split}.jsonl") for key, split in DEMO_SPLITS.items()}
    return with_fields(cfg, {**fields, "data.tokenizer": str(folder / "tokenizer")})


def resolve_local_data(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """With data.local_dir, points every source named in data.local_files at its file under that folder."""
    if not cfg.data.local_dir:
        return cfg
    root = Path(cfg.data.local_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.local_dir: {root} is not a folder")

    def flat(tree, prefix):
        for key, value in tree.items():
            yield from flat(value, f"{prefix}{key}.") if hasattr(value, "items") else [(prefix + key, value)]

    return with_fields(cfg, {key: str(root / rel) for key, rel in flat(cfg.data.local_files, "data.")})


def resolve_model(cfg: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
    """A GGUF model.path (or model.path + model.gguf_file) is converted once into WORKDIR/base_model, a
    Hugging Face folder with the tokenizer, which every stage then reads."""
    path = Path(cfg.model.path).expanduser() / cfg.model.gguf_file if cfg.model.gguf_file else Path(cfg.model.path)
    if not cfg.model.path or not gguf.is_gguf(path):
        return cfg
    folder = Workdir(workdir).base_model
    if jax.process_index() == 0:
        gguf.convert(path, folder, dtype=jnp.dtype(cfg.model.param_dtype).name)
    parallel.sync("GGUF conversion")
    return with_fields(cfg, {"model.path": str(folder), "model.gguf_file": ""})


def resolve_tokenizer(cfg: ml_collections.ConfigDict, workdir: Path) -> ml_collections.ConfigDict:
    """With data.tokenizer = "train", trains (once) a byte-level BPE on the configured sources' text."""
    if cfg.data.tokenizer != "train":
        return cfg
    folder = Workdir(workdir).tokenizer
    if jax.process_index() == 0 and not (folder / "tokenizer.json").exists():
        d = cfg.data
        texts = []
        for source in (d.alignment.harmful, d.alignment.harmless):
            texts += [t for ex in rdata.load_examples(source) for t in (ex["prompt"], ex["response"])]
        for source in (d.pool.harmful, d.pool.harmless):
            texts += [ex["prompt"] for ex in rdata.load_examples(source, with_response=False)]
        texts += [t for ex in rdata.load_examples(d.user.source or None, task=d.user.task)
                  for t in (ex["prompt"], ex["response"])]
        if d.user.harmful_source:
            texts += [t for ex in rdata.load_examples(d.user.harmful_source) for t in (ex["prompt"], ex["response"])]
        rdata.demo.train_tokenizer(texts, str(folder), vocab_size=int(d.tokenizer_vocab_size))
    parallel.sync("tokenizer")
    return with_fields(cfg, {"data.tokenizer": str(folder)})


def _max_length(cfg) -> int:
    return int(max(cfg.data.buckets))


def _min_response(cfg) -> int | None:
    return None if int(cfg.data.min_response) < 0 else int(cfg.data.min_response)


def load_tokenizer(cfg):
    path = cfg.data.tokenizer or cfg.model.path
    if not path:
        raise ConfigError("data.tokenizer: no tokenizer folder (set data.tokenizer or model.path)")
    return rdata.load_tokenizer(path)


def tokenize(cfg, examples, tokenizer, vocab_size: int, desc: str) -> rdata.TokenizedDataset:
    return rdata.tokenize(examples, tokenizer, _max_length(cfg), min_response=_min_response(cfg),
                          vocab_size=vocab_size, desc=desc)


def load_data(cfg, vocab_size: int, tokenizer=None) -> RunData:
    tokenizer = tokenizer or load_tokenizer(cfg)
    d, seed, template = cfg.data, int(cfg.seed), cfg.data.template
    kw = dict(template=template, tokenizer=tokenizer)
    alignment = rdata.alignment_data(d.alignment.harmful, d.alignment.harmless, n_harmful=d.alignment.n_harmful,
                                     n_harmless=d.alignment.n_harmless, seed=seed, **kw)
    harmful_pairs = d.user.harmful_source or rdata.BEAVERTAILS
    user = rdata.user_data(d.user.task, d.user.source or None, harmful_pairs, n=int(d.user.n), p=float(d.user.p),
                           seed=seed, **kw)
    pool = rdata.refusal_pool(d.pool.harmful, d.pool.harmless, n_each=int(d.pool.n_each), seed=seed + 1, **kw)
    return RunData(tokenizer=tokenizer,
                   alignment=tokenize(cfg, alignment, tokenizer, vocab_size, "tokenizing alignment data"),
                   user=tokenize(cfg, user, tokenizer, vocab_size, "tokenizing user data"),
                   pool=tokenize(cfg, pool, tokenizer, vocab_size, "tokenizing refusal pool"))


class RunContext:
    """What the stages of one run read, each loaded on first use and then shared: the tokenizer, the vocabulary
    size and the tokenized datasets. `run` hands one to every stage; a stage called on its own makes its own."""

    def __init__(self, cfg):
        self.cfg = cfg

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.cfg)

    @functools.cached_property
    def vocab(self) -> int:
        return vocab_of(self.cfg, self.tokenizer)

    @functools.cached_property
    def data(self) -> RunData:
        return load_data(self.cfg, self.vocab, self.tokenizer)


def batches(cfg, ds: rdata.TokenizedDataset, *, seed_offset: int = 0) -> rdata.Batches:
    return rdata.Batches(ds, int(cfg.data.batch_size), list(cfg.data.buckets), seed=int(cfg.seed) + seed_offset,
                         process_index=jax.process_index(), process_count=jax.process_count())


def pool_batches(cfg, ds: rdata.TokenizedDataset) -> list[dict]:
    fixed = rdata.Batches(rfilter.prompts_only(ds), int(cfg.data.batch_size), list(cfg.data.buckets), shuffle=False,
                          num_epochs=1)
    return [fixed.batch(i) for i in range(fixed.num_steps)]


# -- stages -------------------------------------------------------------------------------------------

def _save_model(model: Transformer, tokenizer, folder: Path) -> None:
    save_pretrained(model, folder)  # every process takes part (gathers); process 0 writes
    if jax.process_index() == 0:
        tokenizer.save_pretrained(str(folder))


def _held_out_prompts(cfg, data: RunData, tokenizer, vocab: int) -> list[dict]:
    """Batches of prompts the teacher never trains on, whose separation is logged at each R_l refresh: the eval
    harmful prompts and as many harmless ones from the pool's source that neither the pool nor the alignment
    data holds. Empty (with a warning) when they are not configured or cannot be read."""
    d = cfg.data
    if not (d.eval.harmful and d.pool.harmless):
        return []
    try:
        kw = dict(with_response=False, template=d.template, tokenizer=tokenizer)
        harmful = rdata.load_examples(d.eval.harmful, harmful=True, **kw)[: int(d.eval.n_harmful)]
        seen = {tuple(ids) for ids in data.pool.prompt_ids + data.alignment.prompt_ids}
        candidates = rdata.load_examples(d.pool.harmless, harmful=False, **kw)[: len(harmful) + len(seen)]
        ds = tokenize(cfg, harmful + candidates, tokenizer, vocab, "tokenizing held-out prompts")
    except (ReftError, OSError) as e:
        logger.warning("teacher: no held-out refusal metrics (%s)", e)
        return []
    unseen = [i for i in range(len(harmful), len(ds)) if tuple(ds.prompt_ids[i]) not in seen]
    return pool_batches(cfg, ds.select(list(range(len(harmful))) + unseen[: len(harmful)]))


def train_teacher(cfg, workdir: Path, ctx: RunContext | None = None) -> Path:
    wd, ctx = Workdir(workdir), ctx or RunContext(cfg)
    out = wd.teacher
    with cost.Stage(out, "teacher") as stage:
        tokenizer, vocab, data = ctx.tokenizer, ctx.vocab, ctx.data
        model = trainable(cfg, base_model(cfg, vocab), salt=1)
        align = batches(cfg, data.alignment)
        pool = pool_batches(cfg, data.pool)
        held_out = _held_out_prompts(cfg, data, tokenizer, vocab)
        teacher, r = runs.train_teacher(cfg, model, out, align.batch, pool, held_out)
        layer = refusal.feature_layer(int(cfg.refusal.layer), teacher.cfg.num_layers)
        tau = float(cfg.filter.tau)
        if float(cfg.filter.calibrate_recall) > 0:
            pool_scores = rfilter.score(FrozenModel.of(teacher), data.pool, r, layer,
                                        batch_size=int(cfg.data.batch_size), buckets=list(cfg.data.buckets),
                                        progress=bool(cfg.logging.progress))
            tau = refusal.calibrate_threshold(pool_scores, data.pool.harmful, float(cfg.filter.calibrate_recall))
        _save_model(teacher, tokenizer, model_dir(out))
        if jax.process_index() == 0:
            np.save(wd.refusal_feature, np.asarray(r))
            wd.filter_settings.write_text(json.dumps({"layer": layer, "tau": tau}, indent=2) + "\n")
        steps = int(cfg.teacher.steps)
        refreshes = -(-steps // int(cfg.refusal.update_every)) + 1  # R_l every update_every steps, and at the end
        scored = pool + held_out  # what each refresh runs forward
        stage.flops = (cost.train_flops(model.cfg, lora_config(cfg), align.batch, steps)
                       + refreshes * cost.forward_flops(model.cfg, scored.__getitem__, len(scored)))
        if bool(cfg.refusal.reg_pool):  # a pool batch per step through blocks <= layer: that share of a train step
            stage.flops += layer * cost.train_flops(model.cfg, lora_config(cfg), lambda i: pool[i % len(pool)],
                                                    steps) // model.cfg.num_layers
    return out


def safety_align(cfg, workdir: Path, ctx: RunContext | None = None) -> Path:
    """The conventional first stage of sa_ft: the base model SFT-trained on the alignment data."""
    out, ctx = Workdir(workdir).safety_aligned, ctx or RunContext(cfg)
    steps = int(cfg.baselines.sa_steps) or int(cfg.teacher.steps)
    with cost.Stage(out, "safety_alignment") as stage:
        tokenizer, vocab, data = ctx.tokenizer, ctx.vocab, ctx.data
        sa_cfg = with_fields(cfg, {"distill.beta": 0.0, "student.steps": steps})
        model = trainable(sa_cfg, base_model(sa_cfg, vocab), salt=4)
        align = batches(sa_cfg, data.alignment, seed_offset=5)
        aligned = runs.train_student(sa_cfg, model, None, out, align.batch, align.batch)
        _save_model(aligned, tokenizer, model_dir(out))
        stage.flops = cost.train_flops(model.cfg, lora_config(cfg), align.batch, steps)
    return out


def _teacher_filter_settings(wd: Workdir) -> tuple[np.ndarray, int, float]:
    try:
        r = np.load(wd.refusal_feature)
        settings = json.loads(wd.filter_settings.read_text())
    except FileNotFoundError as e:
        raise ReftError(f"{e.filename}: missing; run `reft-jax train-teacher` first") from None
    return r, int(settings["layer"]), float(settings["tau"])


def _prompt_flops(model_cfg, ds, batch_size: int, buckets) -> int:
    fixed = rdata.Batches(rfilter.prompts_only(ds), batch_size, list(buckets), shuffle=False, num_epochs=1)
    return cost.forward_flops(model_cfg, fixed.batch, fixed.num_steps)


def run_filter(cfg, workdir: Path, data_file: str | None = None, ctx: RunContext | None = None) -> dict:
    """Scores the user data (or a JSONL file of prompts with optional `harmful`) with the teacher."""
    wd, ctx = Workdir(workdir), ctx or RunContext(cfg)
    with cost.Stage(wd.filter(), "filter") as stage:
        teacher = load_stage_model(model_dir(wd.teacher), cfg, "teacher")
        r, layer, tau = _teacher_filter_settings(wd)
        tokenizer = ctx.tokenizer
        if data_file:
            examples = rdata.load_examples(rdata.SourceSpec(data_file), with_response=False,
                                           template=cfg.data.template, tokenizer=tokenizer)
            ds = tokenize(cfg, examples, tokenizer, teacher.cfg.vocab_size, f"tokenizing {data_file}")
        else:
            ds = ctx.data.user
        result = rfilter.run_filter(FrozenModel.of(teacher), ds, r, layer, tau, batch_size=int(cfg.filter.batch_size),
                                    buckets=list(cfg.data.buckets), progress=bool(cfg.logging.progress))
        report = _write_filter(result, wd.filter(), data=data_file or "user")
        stage.flops = _prompt_flops(teacher.cfg, ds, int(cfg.filter.batch_size), cfg.data.buckets)
    return report


def _write_filter(result: rfilter.FilterResult, folder: Path, data: str = "user", **extra) -> dict:
    """scores.jsonl and report.json (the metrics, what was scored, and the filter's own settings)."""
    report = {**result.report(), "data": data, **extra}
    if jax.process_index() == 0:
        result.write(folder)
        (folder / FILTER_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def saft_layers(cfg, num_layers: int) -> tuple[int, ...]:
    """saft.layers, or by default the blocks at a quarter, half and three quarters of the depth."""
    layers = tuple(int(x) for x in cfg.saft.layers)
    bad = [x for x in layers if not 0 < x <= num_layers]
    if bad:
        raise ConfigError(f"saft.layers: {bad[0]} is not a hidden_states index in 1..{num_layers}")
    default = (max(num_layers // 4, 1), max(num_layers // 2, 1), max(3 * num_layers // 4, 1))
    return tuple(dict.fromkeys(layers or default))


def _labelled_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of n // 2 harmful and n - n // 2 harmless examples (fewer if a class has fewer), seeded."""
    rng = np.random.default_rng(seed + 7)
    harmful, harmless = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    k = min(n // 2, len(harmful))
    picks = [rng.choice(harmful, k, replace=False), rng.choice(harmless, min(n - k, len(harmless)), replace=False)]
    return np.sort(np.concatenate(picks))


def run_saft_filter(cfg, workdir: Path, ctx: RunContext | None = None) -> dict:
    """The SAFT baseline's filter (reft_jax.saft) on the base model's features, its layer, k and sign chosen on
    a labelled validation pool (saft.val_source)."""
    from reft_jax import saft

    if cfg.saft.val_source not in ("user", "pool"):
        raise ConfigError(f"saft.val_source: {cfg.saft.val_source!r} is not 'user' or 'pool'")
    folder, ctx = Workdir(workdir).filter("saft"), ctx or RunContext(cfg)
    with cost.Stage(folder, "filter:saft") as stage:
        vocab, data = ctx.vocab, ctx.data
        model = base_model(cfg, vocab)
        layers = saft_layers(cfg, model.cfg.num_layers)
        kw = dict(batch_size=int(cfg.filter.batch_size), buckets=list(cfg.data.buckets),
                  progress=bool(cfg.logging.progress))
        frozen = FrozenModel.of(model)
        user = rfilter.prompt_features(frozen, data.user, layers, desc="saft: user prompts", **kw)
        if cfg.saft.val_source == "user":
            pick = _labelled_sample(data.user.harmful, int(cfg.saft.n_val), int(cfg.seed))
            val, val_labels = user[:, pick], data.user.harmful[pick]
        else:
            val = rfilter.prompt_features(frozen, data.pool, layers, desc="saft: validation pool", **kw)
            val_labels = data.pool.harmful
        result, choice = saft.run_filter(user, data.user.index, data.user.harmful, val, val_labels, layers,
                                         ks=[int(k) for k in cfg.saft.ks], weighted=bool(cfg.saft.weighted),
                                         percentile=float(cfg.saft.percentile))
        report = _write_filter(result, folder, method="saft", k=choice.k, sign=choice.sign,
                               val_auroc=choice.val_auroc, val_source=cfg.saft.val_source, num_val=len(val_labels),
                               percentile=float(cfg.saft.percentile))
        scored = (data.user, data.pool) if cfg.saft.val_source == "pool" else (data.user,)
        stage.flops = sum(_prompt_flops(model.cfg, ds, kw["batch_size"], kw["buckets"]) for ds in scored)
    return report


def run_llama_guard_filter(cfg, workdir: Path, ctx: RunContext | None = None) -> dict:
    """Drops the user samples (prompt and response) that a local Llama-Guard-style judge calls unsafe."""
    from reft_jax.evaluation import judges

    path = cfg.baselines.llama_guard_path
    if not path:
        raise ConfigError("baselines.llama_guard_path: the llamaguard_filter method needs a local checkpoint")
    folder, ctx = Workdir(workdir).filter("llama_guard"), ctx or RunContext(cfg)
    with cost.Stage(folder, "filter:llama_guard") as stage:
        tokenizer = ctx.tokenizer
        d = cfg.data
        # The same deterministic mixture as load_data's, as text: the judge reads prompts and responses.
        examples = rdata.user_data(d.user.task, d.user.source or None, d.user.harmful_source or rdata.BEAVERTAILS,
                                   n=int(d.user.n), p=float(d.user.p), seed=int(cfg.seed), template=d.template,
                                   tokenizer=tokenizer)
        ds = ctx.data.user
        judge = judges.LlamaGuardJudge(path)
        pairs = [(examples[i]["prompt"], examples[i]["response"]) for i in ds.index]
        unsafe = judge.judge([p for p, _ in pairs], [r for _, r in pairs])
        result = rfilter.FilterResult(index=np.asarray(ds.index), score=np.asarray(unsafe, np.float32),
                                      label=np.asarray(ds.harmful), tau=0.5, layer=-1)
        report = _write_filter(result, folder, method="llama_guard", judge=judge.name)
        new = judge.generation.max_new_tokens
        stage.flops = cost.forward_flops_of(judge.model.cfg, ((1, len(judge.tokenizer(judge.format(p, r)).input_ids)
                                                               + new) for p, r in pairs))
    return report


def flagged_indices(workdir: Path, filter_name: str = "ref_teacher") -> set[int]:
    """Indices of the user examples a filter flagged (from its scores of the user data)."""
    folder = Workdir(workdir).filter(filter_name)
    path, report = folder / FILTER_SCORES, folder / FILTER_REPORT
    if not path.exists() or not report.exists():
        command = "reft-jax filter" if filter_name == "ref_teacher" else f"reft-jax run with the {filter_name} filter"
        raise ReftError(f"{path}: missing; run `{command}` first")
    scored = json.loads(report.read_text()).get("data")
    if scored != "user":
        raise ReftError(f"{report}: holds the scores of {scored}, not of the user data; run `reft-jax filter` "
                        "without --data first")
    return {r["index"] for r in map(json.loads, path.read_text().splitlines()) if r["flagged"]}


def finetune(cfg, workdir: Path, method: str | Method = "ref_teacher", ctx: RunContext | None = None) -> Path:
    """Finetunes a method's starting model on its (filtered) user data, with what it adds from the alignment data.

    ref_teacher (the `finetune` command): the base on the Ref-Teacher-filtered data, distilling the teacher."""
    method = METHODS[method] if isinstance(method, str) else method
    wd, ctx = Workdir(workdir), ctx or RunContext(cfg)
    out = wd.method(method.name)
    with cost.Stage(out, f"finetune:{method.name}") as stage:
        tokenizer, vocab, data = ctx.tokenizer, ctx.vocab, ctx.data
        user = data.user
        if method.filter:
            flagged = flagged_indices(workdir, method.filter)
            user = user.select([i for i, index in enumerate(user.index) if int(index) not in flagged])
            if len(user) == 0:
                raise ReftError(f"{wd.filter(method.filter)}: the filter flagged every user example; "
                                "nothing to finetune on")
        teacher = load_stage_model(model_dir(wd.teacher), cfg, "teacher") if method.distill else None
        if not method.distill:
            cfg = with_fields(cfg, {"distill.beta": 0.0})
        if method.start == "sa":
            start = load_stage_model(model_dir(wd.safety_aligned), cfg, "safety-aligned model")
        else:
            start = base_model(cfg, vocab)
        model = trainable(cfg, start, salt=2)
        user_batches = batches(cfg, user, seed_offset=2)
        align_batches = batches(cfg, data.alignment, seed_offset=3)
        alpha = float(cfg.baselines.joint_weight) if method.joint else 0.0
        student = runs.train_student(cfg, model, teacher, out, user_batches.batch, align_batches.batch, alpha=alpha)
        _save_model(student, tokenizer, model_dir(out))
        steps, lora = int(cfg.student.steps), lora_config(cfg)
        stage.flops = cost.train_flops(model.cfg, lora, user_batches.batch, steps)
        if method.distill or method.joint:
            stage.flops += cost.train_flops(model.cfg, lora, align_batches.batch, steps)
        if method.distill:
            stage.flops += cost.forward_flops(model.cfg, align_batches.batch, steps)
    return out


def export(cfg, workdir: Path, out: Path) -> Path:
    student = load_stage_model(model_dir(Workdir(workdir).method("ref_teacher")), cfg, "student")
    save_pretrained(student, out)
    load_tokenizer(cfg).save_pretrained(str(out))
    return out


# -- evaluation ---------------------------------------------------------------------------------------

FILTER_METRICS = ("precision", "recall", "f1", "auroc", "num_flagged", "num_examples", "tau")


def _filter_metrics(workdir: Path, method: Method) -> dict | None:
    """The method's filter on the user data: precision, recall, F1, AUROC, counts (None without a filter)."""
    if not method.filter:
        return None
    report = json.loads((Workdir(workdir).filter(method.filter) / FILTER_REPORT).read_text())
    return {"name": method.filter, **{k: report.get(k) for k in FILTER_METRICS}}


def method_cost(workdir: Path, method: Method) -> dict:
    """Each stage's wall time, accelerator-seconds and FLOPs (shared stages, like the teacher, count in full
    for every method that needs them: the price of that pipeline), and their totals."""
    stages = [cost.read(Workdir(workdir).stage(s)) for s in method.stages()]
    return {"stages": [s or {"stage": name} for s, name in zip(stages, method.stages())], **cost.total(stages)}


def make_judge(cfg):
    from reft_jax.evaluation import judges

    kind, path = cfg.eval.judge, cfg.eval.judge_path
    if kind == "keyword":
        return judges.KeywordJudge()
    if not path:
        raise ConfigError(f"eval.judge_path: the {kind} judge needs a local checkpoint folder")
    if kind == "llama_guard":
        return judges.LlamaGuardJudge(path)
    if kind == "beavertails":
        return judges.BeaverTailsJudge(path)
    raise ConfigError(f"eval.judge: {kind!r} is not keyword, llama_guard or beavertails")


def _first(examples, n: int):
    return examples[: int(n)]


def evaluate(cfg, workdir: Path, which: list[Method] | None = None, ctx: RunContext | None = None) -> dict:
    """Harmful score, finetune accuracy, filter metrics and cost of the methods `which` (default: every
    trained one); with eval.references, also of the base model before finetuning and of the teacher."""
    from reft_jax.evaluation import judges, metrics
    from reft_jax.evaluation.generate import GenerationConfig, generate_text

    ctx = ctx or RunContext(cfg)
    tokenizer = ctx.tokenizer
    d = cfg.data
    if not d.eval.harmful:
        raise ConfigError("data.eval.harmful: no harmful test prompts configured")
    harmful = _first(rdata.load_examples(d.eval.harmful, with_response=False, template=d.template,
                                         tokenizer=tokenizer), d.eval.n_harmful)
    task = _first(rdata.load_examples(d.eval.task_source, task=d.user.task, template=d.template,
                                      tokenizer=tokenizer), d.eval.n_task) if d.eval.task_source else []
    generation = GenerationConfig(max_new_tokens=int(cfg.eval.max_new_tokens), batch_size=int(cfg.eval.batch_size))
    judge = make_judge(cfg)

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

    wd = Workdir(workdir)
    methods = {}
    for method in METHODS.values() if which is None else which:
        folder = model_dir(wd.method(method.name))
        if not (folder / "config.json").exists():
            continue
        methods[method.name] = {**measure(load_stage_model(folder, cfg, method.name), method.name),
                                "stages": method.stages(), "filter": _filter_metrics(workdir, method),
                                "cost": method_cost(workdir, method)}
    if not methods:
        raise ReftError(f"{workdir}: no trained student to evaluate; run `reft-jax finetune` first")
    report = {"methods": methods}
    if cfg.eval.references:  # what finetuning starts from and what the student distils from
        report["references"] = {"base_model": measure(base_model(cfg, ctx.vocab), "base model")}
        if model_config(wd.teacher).exists():
            report["references"]["teacher"] = measure(load_stage_model(model_dir(wd.teacher), cfg, "teacher"), "teacher")
    filter_report = wd.filter() / FILTER_REPORT
    if filter_report.exists():
        report["filter"] = json.loads(filter_report.read_text())
    teacher_log = wd.teacher / METRICS
    if teacher_log.exists():  # the refusal feature over the teacher's training, at each recomputation of R_l
        report["teacher_refusal"] = [{k: v for k, v in r.items() if k == "refusal_step" or k.startswith(
            ("pool_", "heldout_", "r_"))} for r in map(json.loads, teacher_log.read_text().splitlines())
            if "refusal_step" in r]
    if jax.process_index() == 0:
        wd.eval.mkdir(parents=True, exist_ok=True)
        (wd.eval / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def stage_plan(selected: list[Method]) -> list[str]:
    """Every stage the selected methods need, once each: teacher and safety alignment first, then the
    filters, then one finetuning per method."""
    needed = list(dict.fromkeys(s for m in selected for s in m.stages()))
    rank = {"teacher": 0, "safety_alignment": 1}
    return sorted(needed, key=lambda s: rank.get(s, 2 if s.startswith("filter") else 3))


def _stage_runner(stage: str):
    """run(cfg, workdir, ctx=...) of a stage (its outputs: Workdir.stage, done when Workdir.done exists)."""
    runners = {"teacher": train_teacher, "safety_alignment": safety_align, "filter": run_filter,
               "filter:saft": run_saft_filter, "filter:llama_guard": run_llama_guard_filter}
    if stage in runners:
        return runners[stage]
    method = METHODS[stage.split(":", 1)[1]]
    return lambda cfg, workdir, ctx: finetune(cfg, workdir, method, ctx=ctx)


def run(cfg, workdir: Path, *, force: bool = False) -> dict:
    """The selected methods' stages (a stage whose outputs exist is skipped unless force), then evaluation.
    Writes report.json/.md and plots."""
    from reft_jax import report as rreport
    from reft_jax.methods import selected as select_methods

    requested = select_methods(cfg.methods)
    if cfg.expected_time and jax.process_index() == 0:
        print(f"reft-jax run: {cfg.expected_time}", flush=True)
    skipped = {}
    if not cfg.baselines.llama_guard_path:
        skipped = {m.name: "skipped: no Llama-Guard checkpoint configured (baselines.llama_guard_path)"
                   for m in requested if m.filter == "llama_guard"}
    chosen = [m for m in requested if m.name not in skipped]
    wd, ctx = Workdir(workdir), RunContext(cfg)  # the data is read and tokenized once for every stage
    for stage in stage_plan(chosen):
        if force or not wd.done(stage).exists():
            _stage_runner(stage)(cfg, workdir, ctx=ctx)
    report = evaluate(cfg, workdir, chosen, ctx=ctx)
    report["methods"] = {m.name: {"skipped": skipped[m.name]} if m.name in skipped else report["methods"][m.name]
                         for m in requested}
    if jax.process_index() == 0:
        wd.report.write_text(json.dumps(report, indent=2) + "\n")
        rreport.write_markdown(report, wd.root / "report.md")
        tau = json.loads(wd.filter_settings.read_text())["tau"]
        rreport.plot_filter_scores(wd.filter() / FILTER_SCORES, tau, wd.plot("filter_scores"))
        curves = {"teacher": wd.teacher / METRICS}
        curves.update({m.name: wd.method(m.name) / METRICS for m in chosen})
        rreport.plot_losses(curves, wd.plot("loss_curves"))
        rreport.plot_teacher_refusal(wd.teacher / METRICS, wd.plot("teacher_refusal"))
    return report
