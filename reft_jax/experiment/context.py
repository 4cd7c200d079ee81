"""What the stages of one run share, built once: the resolved typed config, the workdir, the tokenizer, the
vocabulary size and the run's datasets (alignment data, the user data, the refusal-feature pool, ...), each built
on first use, in groups (DATASETS) that a stage declares it reads, with their content fingerprints, and the
batching every stage uses. Reading the alignment data's tokens answers its lookalike prompts with the base model
(once per workdir); `alignment_sources` reads what it is made of without running a model.

    ctx = RunContext.create(config, "runs/mine")   # a ConfigDict or a RunConfig
    stages.run_stage("teacher", ctx)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path

import jax
import numpy as np

from reft_jax import data as rdata
from reft_jax.config.schema import RunConfig
from reft_jax.config.streams import seed_of, stream_seed
from reft_jax.config.typed import leaf_fields, replace
from reft_jax.errors import ConfigError, DataError, ReftError
from reft_jax.evaluation import over_refusal
from reft_jax.evaluation.generate import GenerationConfig, generate_text
from reft_jax.evaluation.judges import make_refusal_detector
from reft_jax.experiment.resolve import resolve
from reft_jax.models import hub
from reft_jax.models.from_config import base_model, vocab_of
from reft_jax.runtime import atomic, compile_cache, lock, malloc, parallel
from reft_jax.runtime.workdir import Workdir

log = logging.getLogger(__name__)

# The most tokens of the base model's answer to a lookalike prompt: alignment rows are cut to data.max_length
# anyway, and a prompt with a chat template leaves about this much of a 128-token row for the answer.
LOOKALIKE_ANSWER_TOKENS = 64


def dataset(name: str):
    """A RunContext dataset of the group `name` (DATASETS), built once on first use. While a stage runs it may read
    only the groups it declares (reft_jax.stages.Stage.reads, whose content fingerprints are its inputs): a read of
    another group is an error, so what a stage depends on cannot drift from what it reads. A dataset built from
    another (the user data drawn without the teacher's prompts) is not a read of the other: its fingerprint,
    over its own content, already changes with it."""

    def wrap(build):
        key = build.__name__

        def get(self):
            if self._reads is not None and not self._building and name not in self._reads:
                raise ReftError(f"{self._stage}: reads the {name} data without declaring it (reft_jax.stages)")
            if key not in self._datasets:
                self._building += 1
                try:
                    self._datasets[key] = build(self)
                finally:
                    self._building -= 1
            return self._datasets[key]

        get.__doc__ = build.__doc__
        return property(get)

    return wrap


# The dataset groups a stage can declare it reads; each has a content fingerprint (RunContext.fingerprint).
DATASETS = ("alignment", "pool", "veto", "teacher_requests", "user", "harmful_pairs", "eval")


@dataclasses.dataclass(frozen=True)
class LabelledPrompts:
    """Tokenized labelled prompts, with each one's request (the user's message) and style (its phrasing,
    `rdata.prompt_style`, or "lookalike": `rdata.STYLES`)."""

    ds: rdata.TokenizedDataset
    requests: tuple[str, ...]
    styles: np.ndarray  # str [N]


class RunContext:
    def __init__(self, cfg: RunConfig, workdir: Workdir, model_source: str = ""):
        """cfg already resolved (see `create`); model_source: model.path as the user gave it."""
        self.cfg, self.workdir, self.model_source = cfg, workdir, model_source
        self._datasets: dict[str, object] = {}
        self._reads: tuple[str, ...] | None = None  # while a stage runs: the dataset groups it declared
        self._stage, self._building = "", 0

    @contextlib.contextmanager
    def reading(self, stage: str, groups: tuple[str, ...]):
        """While the stage runs, only the dataset groups it declares can be read (see `dataset`)."""
        unknown = set(groups) - set(DATASETS)
        if unknown:
            raise ValueError(f"{stage}: unknown dataset group(s) {sorted(unknown)} (DATASETS: {DATASETS})")
        previous, self._reads, self._stage = (self._reads, self._stage), tuple(groups), stage
        try:
            yield
        finally:
            self._reads, self._stage = previous

    def fingerprint(self, name: str) -> str:
        """A content fingerprint of the dataset group `name`: what a stage that reads it is made from (hashed once:
        every stage's inputs, and their needs', ask for it)."""
        key = f"fingerprint:{name}"
        if key not in self._datasets:
            self._datasets[key] = self._fingerprint(name)
        return self._datasets[key]

    def _fingerprint(self, name: str) -> str:
        if name == "user":
            rows = [[ex["prompt"], ex["response"]] for ex in self.user_examples]
        elif name == "alignment":  # the lookalikes' answers follow from their prompts and the base model (inputs)
            rows = [[ex["prompt"], ex["response"], ex["harmful"]] for ex in self.alignment_sources]
        elif name == "pool":
            rows = [[split, ex["prompt"], ex["harmful"]] for split, exs in self.refusal_splits.items() for ex in exs]
        elif name == "veto":
            rows = [[part, ex["prompt"], ex["harmful"]] for part, exs in self.veto_examples.items() for ex in exs]
        elif name == "teacher_requests":
            rows = sorted(self.teacher_requests)
        elif name == "harmful_pairs":
            rows = [[ex["prompt"], ex["response"]] for ex in self.harmful_pair_examples]
        elif name == "eval":
            over = self.eval_over_refusal
            rows = [[ex["prompt"] for ex in self.eval_harmful], [[ex["prompt"], ex["label"]] for ex in self.eval_task],
                    [] if over is None else [over.prompts, over.safe.tolist(), over.types]]
        else:
            raise ValueError(f"no dataset group {name!r} (DATASETS: {DATASETS})")
        return _digest(rows)

    @classmethod
    def create(cls, cfg, workdir: str | Path) -> RunContext:
        """The context of a run of `cfg` in `workdir`: the config typed and resolved (demo data generated, a GGUF
        checkpoint converted, ... once, under the workdir). The workdir is this process's from here on
        (runtime.lock: another process in it stops), and a stage a killed process was redoing is put back."""
        workdir, cfg = Workdir(workdir), RunConfig.of(cfg)
        compile_cache.enable(cfg.compile_cache)  # before the run's first compilation
        if jax.process_index() == 0:
            malloc.report(jax.default_backend())
        fields = leaf_fields(cfg)
        del fields["distributed.process_id"]  # the one field each process sets for itself
        parallel.check_same({"--workdir": str(workdir.root.absolute()), **fields},
                            "a multi-process run's tasks must run one config")
        if workdir.root.exists() and not workdir.root.is_dir():
            raise ReftError(f"{workdir.root}: not a folder (--workdir names the folder of a run's outputs)")
        workdir.root.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:  # one process (one job) per workdir, before anything in it is read or written
            lock.hold(workdir.root)
            atomic.recover(workdir.root)  # a stage that a killed run was redoing: its previous folder back
        return cls(resolve(cfg, workdir), workdir, model_source=cfg.model.path)

    def for_seed(self, seed: int) -> RunContext:
        """This run's context for the training seed `seed` of its config's `seeds` (not the first: that one is this
        context itself): its run config's `seeds` is (seed,), so its training draws follow it, and its seeded stages
        (reft_jax.stages.Stage.seeded) and evaluation write under WORKDIR/seeds/SEED/. Everything else is this
        context's: the tokenizer, the datasets already built (one copy; none depends on a training seed), the
        teacher's and the filters' folders."""
        other = copy.copy(self)  # the cached tokenizer and vocabulary, and the one dict of datasets, shared
        other.cfg = replace(self.cfg, "seeds", (seed,))
        other.workdir = self.workdir.of_seed(seed)
        return other

    @property
    def base_model_id(self) -> str:
        """What an adapter of this run is for: the hub id the user named (org/name[@revision]), else the
        resolved local folder (absolute), "" for a random init."""
        if hub.is_hub_id(self.model_source):
            return self.model_source
        return str(Path(self.cfg.model.path).expanduser().absolute()) if self.cfg.model.path else ""

    @functools.cached_property
    def tokenizer(self):
        path = self.cfg.data.tokenizer or self.cfg.model.path
        if not path:
            raise ConfigError("data.tokenizer: no tokenizer folder (set data.tokenizer or model.path)")
        return rdata.load_tokenizer(path)

    @functools.cached_property
    def vocab(self) -> int:
        return vocab_of(self.cfg, self.tokenizer)

    def load_examples(self, sources, **kw) -> list[dict]:
        """The examples of a source (or of a list of them, in order), formatted with the run's prompt template."""
        return [ex for source in rdata.as_sources(sources)
                for ex in rdata.load_examples(source, template=self.cfg.data.template, tokenizer=self.tokenizer, **kw)]

    def tokenize(self, examples: list[dict], desc: str, vocab_size: int | None = None) -> rdata.TokenizedDataset:
        d = self.cfg.data
        return rdata.tokenize(examples, self.tokenizer, d.max_length, min_response=d.min_response_tokens,
                              vocab_size=vocab_size or self.vocab, desc=desc)

    @dataset("user")
    def user_examples(self) -> list[dict]:
        """The user data as text. With data.user.mix "none", the user's own file, every row as it is (labelled
        where it has a harmful column; responses where it has them); with "poison", the task data poisoned with
        harmful pairs, every example labelled, drawn without any request of the teacher's data
        (`teacher_requests`), so that the filter's figures on it are held-out figures."""
        u, kw = self.cfg.data.user, dict(template=self.cfg.data.template, tokenizer=self.tokenizer)
        if u.mix == "none":
            if not u.source:
                raise ConfigError("data.user.source: data.user.mix 'none' reads the user's own file; name it "
                                  "(or pass --data FILE)")
            return rdata.load_examples(u.source, with_response=None, **kw)
        return rdata.user_data(u.task, u.source or None, u.harmful_source or rdata.BEAVERTAILS, n=u.n, p=u.p,
                               seed=seed_of(self.cfg.seed, "user_data"), exclude=self.teacher_requests, **kw)

    def require_responses(self, indices=None) -> None:
        """Every user example at `indices` (default: all) has a response: finetuning trains on it (a file of
        prompts alone can be filtered, not finetuned on)."""
        examples = self.user_examples
        empty = [examples[int(i)]["source"] for i in (range(len(examples)) if indices is None else indices)
                 if not examples[int(i)]["response"]]
        if empty:
            raise DataError(f"{empty[0]}: no response to finetune on ({len(empty)} such row(s); a chat row needs "
                            "an assistant message)")

    @property
    def user_fingerprint(self) -> str:
        """Identifies the user data (its prompts and responses): a filter's scores apply to this data only."""
        return self.fingerprint("user")

    @functools.cached_property
    def _base_alignment(self) -> list[dict]:
        """The alignment files' examples: harmful prompts -> refusals, harmless prompts -> helpful answers; with
        data.alignment.n_concerns, harmful requests of the kinds lookalikes mimic, refused, among them."""
        a, d = self.cfg.data.alignment, self.cfg.data
        files = rdata.alignment_data(a.harmful, a.harmless, n_harmful=a.n_harmful, n_harmless=a.n_harmless,
                                     seed=seed_of(self.cfg.seed, "alignment_data"), template=d.template,
                                     tokenizer=self.tokenizer, refusal=a.refusal)
        if a.n_concerns <= 0:
            return files
        if not a.concerns:
            raise ConfigError(f"data.alignment.concerns: no source of harmful requests for data.alignment.n_concerns "
                              f"= {a.n_concerns}")
        mixed = files + rdata.refused_requests(a.concerns, a.n_concerns, refusal=a.refusal,
                                               exclude={ex["request"] for ex in files},
                                               seed=seed_of(self.cfg.seed, "concerns"), template=d.template,
                                               tokenizer=self.tokenizer)
        return [mixed[i] for i in np.random.default_rng(seed_of(self.cfg.seed, "concern_mix")).permutation(len(mixed))]

    @functools.cached_property
    def _lookalike_prompts(self) -> list[dict]:
        """data.alignment.n_lookalikes safe prompts that look harmful (`rdata.lookalike_prompts`): from
        data.alignment.lookalikes, a labelled set taken whole, with the answers its rows hold; by default the pool's
        harmless prompts that hold a word of harmful requests, unanswered."""
        a, d = self.cfg.data.alignment, self.cfg.data
        if a.n_lookalikes <= 0:
            return []
        return rdata.lookalike_prompts(a.lookalikes or d.pool.harmless, a.n_lookalikes, by_words=not a.lookalikes,
                                       seed=seed_of(self.cfg.seed, "lookalikes"), template=d.template,
                                       tokenizer=self.tokenizer)

    @dataset("alignment")
    def alignment_sources(self) -> list[dict]:
        """What the alignment data is made of, read without running a model: the alignment files' examples and the
        lookalike prompts (those without an answer of their own are answered by the base model:
        `alignment_examples`)."""
        return self._base_alignment + self._lookalike_prompts

    @dataset("alignment")
    def alignment_examples(self) -> list[dict]:
        """Harmful prompts -> refusals, harmless prompts -> helpful answers (with the lookalikes), as text."""
        if not self.lookalike_examples:
            return self._base_alignment
        mixed = self._base_alignment + self.lookalike_examples
        return [mixed[i] for i in np.random.default_rng(seed_of(self.cfg.seed, "lookalike_mix")).permutation(len(mixed))]

    @dataset("alignment")
    def lookalike_examples(self) -> list[dict]:
        """The lookalike prompts with compliant answers: harmless alignment examples that keep the refusals of the
        alignment data from spreading to them. A prompt without an answer of its own is answered by the base model
        (greedy, LOOKALIKE_ANSWER_TOKENS at most; generated once into WORKDIR/lookalikes.json and reused while the
        prompts and the model are the same). An answer that is empty or that the refusal judge (eval.refusal_judge_path)
        reads as a refusal leaves its prompt out: it would teach the refusal the lookalikes are there to undo."""
        prompts = self._lookalike_prompts
        if not prompts:
            return []
        generated = iter(self._base_model_answers([ex for ex in prompts if not ex["response"]]))  # in their order
        answered = [{**ex, "response": ex["response"] or next(generated)} for ex in prompts]
        refused = make_refusal_detector(self.cfg.eval.refusal_judge_path).refusals(
            [ex["request"] for ex in answered], [ex["response"] for ex in answered])
        kept = [ex for ex, r in zip(answered, refused) if ex["response"].strip() and not r]
        if len(kept) < len(prompts):
            log.info("lookalikes: %d of %d answers left out (empty, or read as refusals)",
                     len(prompts) - len(kept), len(prompts))
        # Unlabelled (None), a row is answered but outside the regulariser.
        harmful = False if self.cfg.refusal.reg_lookalikes else None
        return [{**ex, "harmful": harmful} for ex in kept]

    def _base_model_answers(self, prompts: list[dict]) -> list[str]:
        """The base model's greedy answers to `prompts`, generated once into WORKDIR/lookalikes.json."""
        if not prompts:
            return []
        key = {"model": self.base_model_id, "max_new_tokens": LOOKALIKE_ANSWER_TOKENS,
               "prompts": [ex["prompt"] for ex in prompts]}
        path = self.workdir.lookalikes
        cached = json.loads(path.read_text()) if path.exists() else {}
        if {k: cached.get(k) for k in key} != key:
            log.info("answering %d lookalike prompts with the base model (once, into %s)", len(prompts), path)
            generation = GenerationConfig(max_new_tokens=LOOKALIKE_ANSWER_TOKENS, batch_size=self.cfg.eval.batch_size)
            answers = generate_text(base_model(self.cfg, self.vocab), self.tokenizer, key["prompts"], generation,
                                    desc="answering the lookalike prompts")
            cached = {**key, "answers": answers}
            if jax.process_index() == 0:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cached, indent=1) + "\n")
                tmp.rename(path)
        parallel.sync("lookalike answers")
        return cached["answers"]

    @dataset("alignment")
    def alignment(self) -> rdata.TokenizedDataset:
        return self.tokenize(self.alignment_examples, "tokenizing alignment data")

    @dataset("pool")
    def refusal_splits(self) -> dict[str, list[dict]]:
        """The refusal feature's labelled prompts as text, split three ways (data.pool; `rdata.refusal_splits`):
        "train" (R_l and the regulariser), "calibration" (tau; only with filter.calibrate_recall > 0) and "check"
        (held out from both; absent with data.pool.n_check = 0). Only the train split may hold alignment prompts.
        Each split's harmless side holds data.pool.n_lookalikes lookalikes besides. The splits read no customer
        data: one teacher serves every user file (the research protocol's user data and evaluation prompts are drawn
        without these prompts instead: `teacher_requests`)."""
        cfg, p = self.cfg, self.cfg.data.pool
        calibrate = cfg.filter.calibrate_recall > 0
        if calibrate and p.n_calibration <= 0:
            raise ConfigError("data.pool.n_calibration: no prompts to calibrate tau on (filter.calibrate_recall > 0)")
        if p.n_lookalikes < 0:
            raise ConfigError(f"data.pool.n_lookalikes: {p.n_lookalikes} should be 0 (none) or more")
        if p.n_lookalikes > 0 and not p.lookalikes:
            raise ConfigError(f"data.pool.lookalikes: no source of lookalike prompts for data.pool.n_lookalikes = "
                              f"{p.n_lookalikes}")
        sizes = {"train": p.n_each, "calibration": p.n_calibration if calibrate else 0, "check": p.n_check}
        unseen = {ex["request"] for ex in self.alignment_sources}
        splits = rdata.refusal_splits(p.harmful, p.harmless, sizes=sizes, lookalike_sources=p.lookalikes,
                                      n_lookalikes=p.n_lookalikes, unseen=unseen,
                                      seed=seed_of(cfg.seed, "refusal_splits"), template=cfg.data.template,
                                      tokenizer=self.tokenizer)
        return {name: examples for name, examples in splits.items() if examples}

    @dataset("pool")
    def refusal_prompts(self) -> dict[str, LabelledPrompts]:
        """`refusal_splits`, tokenized, with each prompt's request and style (a lookalike's is "lookalike")."""
        return {name: LabelledPrompts(self.tokenize(examples, f"tokenizing the {name} prompts"),
                                      tuple(ex["request"] for ex in examples),
                                      np.array([ex["style"] for ex in examples], dtype=object))
                for name, examples in self.refusal_splits.items()}

    @property
    def pool(self) -> rdata.TokenizedDataset:
        """The refusal pool: the prompts R_l is computed over (the train split of `refusal_prompts`)."""
        return self.refusal_prompts["train"].ds

    @dataset("veto")
    def veto_examples(self) -> dict[str, list[dict]]:
        """The lookalike veto's prompts as text (data.veto; only with filter.scorer = "veto", else empty), in two
        parts: "fit" (data.veto.safe and .harmful, and with data.veto.alignment_harmful the alignment data's harmful
        requests outside the pool's splits) and "calibration" (data.veto.safe_calibration and .harmful_calibration, and
        data.veto.n_attack_kind requests of data.alignment.harmful that the alignment data does not hold). None is a
        prompt of the pool's splits, none but those of the fit part is in the alignment data, none is in both parts."""
        cfg, v = self.cfg, self.cfg.data.veto
        if cfg.filter.scorer != "veto":
            return {}
        for field in ("safe", "harmful", "safe_calibration", "harmful_calibration"):
            if not getattr(v, field):
                raise ConfigError(f"data.veto.{field}: no source (filter.scorer = \"veto\" fits and calibrates its "
                                  "probe on data.veto's four sets)")
        taken = {ex["request"] for ex in self.alignment_sources} | {
            ex["request"] for exs in self.refusal_splits.values() for ex in exs}
        kw = dict(template=cfg.data.template, tokenizer=self.tokenizer)
        out, rng = {}, np.random.default_rng(seed_of(cfg.seed, "veto_sets"))
        for part, (safe, harmful) in {"fit": (v.safe, v.harmful),
                                      "calibration": (v.safe_calibration, v.harmful_calibration)}.items():
            examples = []
            for sources, is_harmful in ((harmful, True), (safe, False)):
                drawn = rdata.unique_prompts(sources, harmful=is_harmful, exclude=taken, **kw)
                if v.n_each is not None and len(drawn) > v.n_each:
                    drawn = [drawn[i] for i in sorted(rng.choice(len(drawn), v.n_each, replace=False))]
                taken |= {ex["request"] for ex in drawn}
                examples += drawn
            out[part] = examples
        if v.alignment_harmful:  # prompts only (the veto reads the last prompt token); the train split's are in already
            pooled = {ex["request"] for exs in self.refusal_splits.values() for ex in exs}
            out["fit"] += [{**ex, "response": ""} for ex in self._base_alignment
                           if ex["harmful"] and ex["request"] not in pooled]
        if v.n_attack_kind > 0:
            attack_kind = rdata.unique_prompts(cfg.data.alignment.harmful, harmful=True, exclude=taken, **kw)
            if len(attack_kind) < v.n_attack_kind:
                raise DataError(f"data.veto.n_attack_kind: {len(attack_kind)} requests of data.alignment.harmful are "
                                f"outside the alignment data and the pool, {v.n_attack_kind} needed")
            rng = np.random.default_rng(seed_of(cfg.seed, "veto_attack_kind"))
            out["calibration"] += [attack_kind[i] for i in sorted(rng.choice(len(attack_kind), v.n_attack_kind,
                                                                             replace=False))]
        for part, examples in out.items():
            labels = {ex["harmful"] for ex in examples}
            if labels != {True, False}:
                raise DataError(f"data.veto: its {part} part holds {'no' if True not in labels else 'only'} harmful "
                                "requests; it needs both kinds")
        return out

    @dataset("veto")
    def veto_prompts(self) -> dict[str, rdata.TokenizedDataset]:
        """`veto_examples`, tokenized."""
        return {part: self.tokenize(examples, f"tokenizing the veto's {part} prompts")
                for part, examples in self.veto_examples.items()}

    @dataset("teacher_requests")
    def teacher_requests(self) -> frozenset[str]:
        """Every request the teacher trains, calibrates or chooses its filter on: the alignment data's, every
        split's of the refusal pool and the lookalike veto's. The research protocol's user data and evaluation
        prompts are drawn without them; a customer's own file is scored as it is, and the filter's report counts its
        rows among them (`seen_by_teacher`)."""
        return frozenset({ex["request"] for ex in self.alignment_sources}
                         | {ex["request"] for exs in self.refusal_splits.values() for ex in exs}
                         | {ex["request"] for exs in self.veto_examples.values() for ex in exs})

    def held_out(self, examples: list[dict]) -> list[dict]:
        """`examples` without those whose request the teacher saw (`teacher_requests`): evaluation prompts."""
        seen = self.teacher_requests
        return [ex for ex in examples if ex["request"] not in seen]

    @dataset("eval")
    def eval_harmful(self) -> list[dict]:
        """The harmful test prompts: the first data.eval.n_harmful of data.eval.harmful's that the teacher never
        trained, calibrated or chose its filter on (`held_out`)."""
        d = self.cfg.data.eval
        if not d.harmful:
            raise ConfigError("data.eval.harmful: no harmful test prompts configured")
        prompts = self.held_out(self.load_examples(d.harmful, with_response=False))[: d.n_harmful]
        if not prompts:
            raise DataError("data.eval.harmful: no prompt left once the teacher's own prompts are left out")
        return prompts

    @dataset("eval")
    def eval_task(self) -> list[dict]:
        """The first data.eval.n_task labelled task examples of data.eval.task_source (none without one)."""
        d = self.cfg.data
        return self.load_examples(d.eval.task_source, task=d.user.task)[: d.eval.n_task] if d.eval.task_source else []

    @dataset("eval")
    def eval_over_refusal(self) -> over_refusal.OverRefusalSet | None:
        """data.eval.over_refusal's rows without the teacher's prompts (None when not configured)."""
        d = self.cfg.data
        if not d.eval.over_refusal:
            return None
        return over_refusal.load(d.eval, template=d.template, tokenizer=self.tokenizer, exclude=self.teacher_requests)

    @dataset("harmful_pairs")
    def harmful_pair_examples(self) -> list[dict]:
        """Harmful prompts -> harmful answers for the alignment-stage defences that train against them (RepNoise,
        Booster): data.alignment.harmful_pairs, else the user data's harmful source, without any pair whose
        prompt is in the user data (a defence must not have seen the attack it is measured against)."""
        a, u = self.cfg.data.alignment, self.cfg.data.user
        source = a.harmful_pairs or u.harmful_source or rdata.BEAVERTAILS
        user_prompts = {ex["prompt"] for ex in self.user_examples}
        pairs = [ex for ex in self.load_examples(source, harmful=True) if ex["prompt"] not in user_prompts]
        if not pairs:
            raise DataError(f"data.alignment.harmful_pairs: no harmful pair of {source} is left once the user "
                            "data's prompts are taken out; name another source")
        rng = np.random.default_rng(seed_of(self.cfg.seed, "harmful_pairs"))
        if a.n_harmful_pairs is not None and a.n_harmful_pairs < len(pairs):
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), a.n_harmful_pairs, replace=False))]
        return pairs

    @dataset("harmful_pairs")
    def harmful_pairs(self) -> rdata.TokenizedDataset:
        return self.tokenize(self.harmful_pair_examples, "tokenizing harmful pairs")

    @dataset("user")
    def user(self) -> rdata.TokenizedDataset:
        return self.tokenize(self.user_examples, "tokenizing user data")

    def batches(self, ds: rdata.TokenizedDataset, stream: str, *, batch_size: int = 0) -> rdata.Batches:
        """Shuffled training batches of `ds` (of data.batch_size rows unless batch_size > 0), this process's rows
        of each, in the order of the random stream `stream` (reft_jax.config.streams)."""
        d = self.cfg.data
        return rdata.Batches(ds, batch_size or d.batch_size, list(d.buckets), seed=stream_seed(self.cfg, stream),
                             process_index=jax.process_index(), process_count=jax.process_count())

    def prompt_batches(self, ds: rdata.TokenizedDataset, batch_size: int | None = None) -> rdata.Batches:
        """`ds`'s prompts (responses dropped), in order, one epoch, whole batches on every process."""
        d = self.cfg.data
        return rdata.Batches(ds.prompts_only(), batch_size or d.batch_size, list(d.buckets), shuffle=False,
                             num_epochs=1)


def _digest(rows) -> str:
    """A short content hash of JSON-able rows, row by row."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:16]
