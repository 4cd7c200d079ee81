"""What the stages of one run share, built once: the resolved typed config, the workdir, the tokenizer, the
vocabulary size and the run's datasets (alignment data, the user data, the refusal-feature pool), each loaded
on first use, and the batching every stage uses.

    ctx = RunContext.create(config, "runs/mine")   # a ConfigDict or a RunConfig
    stages.run_stage("teacher", ctx)
"""

from __future__ import annotations

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
from reft_jax.config.typed import leaf_fields
from reft_jax.errors import ConfigError, DataError
from reft_jax.evaluation import over_refusal
from reft_jax.evaluation.generate import GenerationConfig, generate_text
from reft_jax.experiment.resolve import resolve
from reft_jax.models import hub
from reft_jax.models.from_config import base_model, vocab_of
from reft_jax.runtime import compile_cache, malloc, parallel
from reft_jax.runtime.workdir import Workdir

log = logging.getLogger(__name__)

# The most tokens of the base model's answer to a lookalike prompt: alignment rows are cut to data.max_length
# anyway, and a prompt with a chat template leaves about this much of a 128-token row for the answer.
LOOKALIKE_ANSWER_TOKENS = 64


@dataclasses.dataclass(frozen=True)
class LabelledPrompts:
    """Tokenized labelled prompts, with each one's request (the user's message) and style (`rdata.prompt_style`)."""

    ds: rdata.TokenizedDataset
    requests: tuple[str, ...]
    styles: np.ndarray  # str [N]


class RunContext:
    def __init__(self, cfg: RunConfig, workdir: Workdir, model_source: str = ""):
        """cfg already resolved (see `create`); model_source: model.path as the user gave it."""
        self.cfg, self.workdir, self.model_source = cfg, workdir, model_source

    @classmethod
    def create(cls, cfg, workdir: str | Path) -> RunContext:
        """The context of a run of `cfg` in `workdir`: the config typed and resolved (demo data generated, a GGUF
        checkpoint converted, ... once, under the workdir)."""
        workdir, cfg = Workdir(workdir), RunConfig.of(cfg)
        compile_cache.enable(cfg.compile_cache)  # before the run's first compilation
        if jax.process_index() == 0:
            malloc.report(jax.default_backend())
        fields = leaf_fields(cfg)
        del fields["distributed.process_id"]  # the one field each process sets for itself
        parallel.check_same({"--workdir": str(workdir.root.absolute()), **fields},
                            "a multi-process run's tasks must run one config")
        workdir.root.mkdir(parents=True, exist_ok=True)
        return cls(resolve(cfg, workdir), workdir, model_source=cfg.model.path)

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

    def load_examples(self, source, **kw) -> list[dict]:
        """A source's examples, formatted with the run's prompt template."""
        return rdata.load_examples(source, template=self.cfg.data.template, tokenizer=self.tokenizer, **kw)

    def tokenize(self, examples: list[dict], desc: str, vocab_size: int | None = None) -> rdata.TokenizedDataset:
        d = self.cfg.data
        return rdata.tokenize(examples, self.tokenizer, d.max_length, min_response=d.min_response_tokens,
                              vocab_size=vocab_size or self.vocab, desc=desc)

    @functools.cached_property
    def user_examples(self) -> list[dict]:
        """The user data as text. With data.user.mix "none", the user's own file, every row as it is (labelled
        where it has a harmful column; responses where it has them); with "poison", the task data poisoned with
        harmful pairs, every example labelled."""
        u, kw = self.cfg.data.user, dict(template=self.cfg.data.template, tokenizer=self.tokenizer)
        if u.mix == "none":
            if not u.source:
                raise ConfigError("data.user.source: data.user.mix 'none' reads the user's own file; name it "
                                  "(or pass --data FILE)")
            return rdata.load_examples(u.source, with_response=None, **kw)
        return rdata.user_data(u.task, u.source or None, u.harmful_source or rdata.BEAVERTAILS, n=u.n, p=u.p,
                               seed=self.cfg.seed, **kw)

    def require_responses(self, indices=None) -> None:
        """Every user example at `indices` (default: all) has a response: finetuning trains on it (a file of
        prompts alone can be filtered, not finetuned on)."""
        examples = self.user_examples
        empty = [examples[int(i)]["source"] for i in (range(len(examples)) if indices is None else indices)
                 if not examples[int(i)]["response"]]
        if empty:
            raise DataError(f"{empty[0]}: no response to finetune on ({len(empty)} such row(s); a chat row needs "
                            "an assistant message)")

    @functools.cached_property
    def user_fingerprint(self) -> str:
        """Identifies the user data (its prompts and responses): a filter's scores apply to this data only."""
        digest = hashlib.sha256()
        for ex in self.user_examples:
            digest.update(json.dumps([ex["prompt"], ex["response"]]).encode())
        return digest.hexdigest()[:16]

    @functools.cached_property
    def alignment_examples(self) -> list[dict]:
        """Harmful prompts -> refusals, harmless prompts -> helpful answers (with the lookalikes), as text."""
        a = self.cfg.data.alignment
        examples = rdata.alignment_data(a.harmful, a.harmless, n_harmful=a.n_harmful, n_harmless=a.n_harmless,
                                        seed=self.cfg.seed, template=self.cfg.data.template, tokenizer=self.tokenizer,
                                        refusal=a.refusal)
        if not self.lookalike_examples:
            return examples
        mixed = examples + self.lookalike_examples
        return [mixed[i] for i in np.random.default_rng(self.cfg.seed).permutation(len(mixed))]

    @functools.cached_property
    def held_out_requests(self) -> set[str]:
        """Requests that no training or calibration data may hold: the user data's, the attack source's and the
        evaluation's (harmful prompts, over-refusal prompts)."""
        d = self.cfg.data
        held_out = {ex["request"] for ex in self.user_examples}
        for source in (d.user.harmful_source if d.user.mix == "poison" else "", d.eval.harmful):
            if source:
                held_out |= {ex["request"] for ex in self.load_examples(source, with_response=False)}
        if d.eval.over_refusal:
            held_out |= set(over_refusal.load(d.eval, template=d.template, tokenizer=self.tokenizer).requests)
        return held_out

    @functools.cached_property
    def lookalike_examples(self) -> list[dict]:
        """data.alignment.n_lookalikes safe prompts that look harmful (`rdata.lookalike_prompts`), each answered by
        the base model itself (greedy, LOOKALIKE_ANSWER_TOKENS at most): harmless alignment examples that keep the
        refusals of the alignment data from spreading to them. The answers are generated once into
        WORKDIR/lookalikes.json and reused while the prompts and the model are the same."""
        a, d = self.cfg.data.alignment, self.cfg.data
        if a.n_lookalikes <= 0:
            return []
        prompts = rdata.lookalike_prompts(a.lookalikes or d.pool.harmless, a.n_lookalikes,
                                          exclude=self.held_out_requests, seed=self.cfg.seed + 5,
                                          template=d.template, tokenizer=self.tokenizer)
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
        # An empty answer has nothing to train on (the model ended at once): that prompt is left out. Unlabelled
        # (None), a row is answered but outside the regulariser.
        harmful = False if self.cfg.refusal.reg_lookalikes else None
        return [{**ex, "response": answer, "harmful": harmful}
                for ex, answer in zip(prompts, cached["answers"]) if answer.strip()]

    @functools.cached_property
    def alignment(self) -> rdata.TokenizedDataset:
        return self.tokenize(self.alignment_examples, "tokenizing alignment data")

    @functools.cached_property
    def harmful_pairs(self) -> rdata.TokenizedDataset:
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
        rng = np.random.default_rng(self.cfg.seed + 7)
        if a.n_harmful_pairs is not None and a.n_harmful_pairs < len(pairs):
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), a.n_harmful_pairs, replace=False))]
        return self.tokenize(pairs, "tokenizing harmful pairs")

    @functools.cached_property
    def user(self) -> rdata.TokenizedDataset:
        return self.tokenize(self.user_examples, "tokenizing user data")

    @functools.cached_property
    def refusal_prompts(self) -> dict[str, LabelledPrompts]:
        """The refusal feature's labelled prompts, split three ways (data.pool; `rdata.refusal_splits`): "train"
        (R_l and the regulariser), "calibration" (tau; only with filter.calibrate_recall > 0) and "check"
        (held out from both; absent with data.pool.n_check = 0). No split holds a prompt of the user data, of the
        attack's source or of the evaluation; only the train split may hold alignment prompts."""
        cfg, p = self.cfg, self.cfg.data.pool
        exclude = self.held_out_requests
        unseen = {ex["request"] for ex in self.alignment_examples}
        calibrate = cfg.filter.calibrate_recall > 0
        if calibrate and p.n_calibration <= 0:
            raise ConfigError("data.pool.n_calibration: no prompts to calibrate tau on (filter.calibrate_recall > 0)")
        sizes = {"train": p.n_each, "calibration": p.n_calibration if calibrate else 0, "check": p.n_check}
        splits = rdata.refusal_splits(p.harmful, p.harmless, sizes=sizes, exclude=exclude, unseen=unseen,
                                      seed=cfg.seed + 1, template=cfg.data.template, tokenizer=self.tokenizer)
        return {name: LabelledPrompts(self.tokenize(examples, f"tokenizing the {name} prompts"),
                                      tuple(ex["request"] for ex in examples),
                                      np.array([rdata.prompt_style(ex["request"]) for ex in examples], dtype=object))
                for name, examples in splits.items() if examples}

    @property
    def pool(self) -> rdata.TokenizedDataset:
        """The refusal pool: the prompts R_l is computed over (the train split of `refusal_prompts`)."""
        return self.refusal_prompts["train"].ds

    def batches(self, ds: rdata.TokenizedDataset, *, seed_offset: int = 0, batch_size: int = 0) -> rdata.Batches:
        """Shuffled training batches of `ds` (of data.batch_size rows unless batch_size > 0), this process's rows
        of each."""
        d = self.cfg.data
        return rdata.Batches(ds, batch_size or d.batch_size, list(d.buckets), seed=self.cfg.seed + seed_offset,
                             process_index=jax.process_index(), process_count=jax.process_count())

    def prompt_batches(self, ds: rdata.TokenizedDataset, batch_size: int | None = None) -> rdata.Batches:
        """`ds`'s prompts (responses dropped), in order, one epoch, whole batches on every process."""
        d = self.cfg.data
        return rdata.Batches(ds.prompts_only(), batch_size or d.batch_size, list(d.buckets), shuffle=False,
                             num_epochs=1)

