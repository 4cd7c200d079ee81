"""What the stages of one run share, built once: the resolved typed config, the workdir, the tokenizer, the
vocabulary size and the run's datasets (alignment data, the user data, the refusal-feature pool), each loaded
on first use, and the batching every stage uses.

    ctx = RunContext.create(config, "runs/mine")   # a ConfigDict or a RunConfig
    stages.run_stage("teacher", ctx)
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax

from reft_jax import data as rdata
from reft_jax.errors import ConfigError
from reft_jax.models.from_config import vocab_of
from reft_jax.resolve import resolve
from reft_jax.run_config import RunConfig
from reft_jax.workdir import Workdir


class RunContext:
    def __init__(self, cfg: RunConfig, workdir: Workdir):
        """cfg already resolved (see `create`)."""
        self.cfg, self.workdir = cfg, workdir

    @classmethod
    def create(cls, cfg, workdir: str | Path) -> RunContext:
        """The context of a run of `cfg` in `workdir`: the config typed and resolved (demo data generated, a GGUF
        checkpoint converted, ... once, under the workdir)."""
        workdir = Workdir(workdir)
        workdir.root.mkdir(parents=True, exist_ok=True)
        return cls(resolve(RunConfig.of(cfg), workdir), workdir)

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
        """The user data as text: the task data poisoned with harmful pairs, every example labelled."""
        d, kw = self.cfg.data, dict(template=self.cfg.data.template, tokenizer=self.tokenizer)
        return rdata.user_data(d.user.task, d.user.source or None, d.user.harmful_source or rdata.BEAVERTAILS,
                               n=d.user.n, p=d.user.p, seed=self.cfg.seed, **kw)

    @functools.cached_property
    def alignment(self) -> rdata.TokenizedDataset:
        """Harmful prompts -> refusals, harmless prompts -> helpful answers."""
        a = self.cfg.data.alignment
        examples = rdata.alignment_data(a.harmful, a.harmless, n_harmful=a.n_harmful, n_harmless=a.n_harmless,
                                        seed=self.cfg.seed, template=self.cfg.data.template, tokenizer=self.tokenizer)
        return self.tokenize(examples, "tokenizing alignment data")

    @functools.cached_property
    def user(self) -> rdata.TokenizedDataset:
        return self.tokenize(self.user_examples, "tokenizing user data")

    @functools.cached_property
    def pool(self) -> rdata.TokenizedDataset:
        """The fixed refusal-feature pool (prompts only, labelled)."""
        p = self.cfg.data.pool
        examples = rdata.refusal_pool(p.harmful, p.harmless, n_each=p.n_each, seed=self.cfg.seed + 1,
                                      template=self.cfg.data.template, tokenizer=self.tokenizer)
        return self.tokenize(examples, "tokenizing refusal pool")

    def batches(self, ds: rdata.TokenizedDataset, *, seed_offset: int = 0) -> rdata.Batches:
        """Shuffled training batches of `ds`, this process's rows of each."""
        d = self.cfg.data
        return rdata.Batches(ds, d.batch_size, list(d.buckets), seed=self.cfg.seed + seed_offset,
                             process_index=jax.process_index(), process_count=jax.process_count())

    def prompt_batches(self, ds: rdata.TokenizedDataset, batch_size: int | None = None) -> rdata.Batches:
        """`ds`'s prompts (responses dropped), in order, one epoch, whole batches on every process."""
        d = self.cfg.data
        return rdata.Batches(ds.prompts_only(), batch_size or d.batch_size, list(d.buckets), shuffle=False,
                             num_epochs=1)
