"""The teacher's filter loaded once to score any number of prompts: what `reft-jax serve` answers with, and the
Python API `reft_jax.Filter`.

    filt = reft_jax.Filter.load("runs/mine")              # a trained teacher's workdir (configs/demo.py), or a bundle
    scores = filt.score(["How do I bake bread?"])         # float32 [N], the same as `reft-jax filter`
    flagged = scores > filt.tau

It reads the teacher stage's filter (`stages.ref_teacher_filter.teacher_settings`) and scores with the filter's own
jitted pass (`refusal.readout.make_score_fn`) on its static shapes: batches of 1, 2, 4, ... or filter.batch_size
rows (`row_sizes`, the fewest that hold the prompts) padded to a length of data.buckets, or, after the template's
opening run once, the tokens after it padded to a suffix bucket (TeacherFilter); one compiled program per row size
and bucket or suffix bucket (`warm` compiles them all), whatever rows share a batch.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from reft_jax import data as rdata
from reft_jax import stages
from reft_jax.config.files import DEMO_CONFIG, load_config
from reft_jax.config.schema import RunConfig
from reft_jax.experiment.context import RunContext
from reft_jax.models import Transformer
from reft_jax.refusal.scoring import scorer_params
from reft_jax.refusal.readout import make_score_fn
from reft_jax.runtime.state import FrozenModel
from reft_jax.serve import bundle
from reft_jax.stages.ref_teacher_filter import filter_model, teacher_settings

PAD_ROW = -1  # make_batch's padding row
# The shortest length the tokens after the template's opening are padded to: a short message (a served prompt,
# a one-line customer row) runs 32 tokens instead of a whole bucket.
SHORT_SUFFIX = 32


def row_sizes(batch_size: int) -> tuple[int, ...]:
    """The batch sizes a filter compiles: the powers of two below filter.batch_size, and it. A batch costs its rows
    whatever they hold, so a served request alone runs a batch of 1, not a full one; and clients that fall into two
    cohorts taking turns (one's batch runs while the other's requests wait) run half batches at half the cost."""
    return tuple(sorted({2 ** k for k in range(batch_size.bit_length()) if 2 ** k < batch_size} | {batch_size}))


def shortest_first(prompt_ids: Sequence[np.ndarray]) -> np.ndarray:
    """The prompts' positions by length, shortest first (ties in order): scored in this order, a file's prompts of
    like lengths share batches, and each batch is padded to its longest prompt's bucket."""
    return np.argsort([len(x) for x in prompt_ids], kind="stable")


@dataclasses.dataclass(frozen=True)
class Serving:
    """The run config's fields that scoring reads besides the filter's own settings: how prompts are templated and
    tokenized, the static shapes, the model's dtypes (a filter bundle's filter.json holds them as `serving`)."""

    template: str
    buckets: tuple[int, ...]
    batch_size: int
    min_response: int | None
    dtype: str
    param_dtype: str

    @classmethod
    def of(cls, cfg: RunConfig) -> Serving:
        d, m = cfg.data, cfg.model
        return cls(d.template, tuple(sorted(d.buckets)), cfg.filter.batch_size, d.min_response_tokens, m.dtype,
                   m.param_dtype)


class PromptBatches(abc.ABC):
    """A filter's path from text to scores, whatever scores a batch: prompts templated and tokenized as `reft-jax
    filter --data` does, in batches of filter.batch_size rows padded to a bucket's length. TeacherFilter scores them
    with JAX; the PyTorch peer of the serving benchmark (reft_jax.bench.filter_peer) is fed the very same batches."""

    def __init__(self, tokenizer, serving: Serving):
        self.tokenizer, self.serving = tokenizer, serving
        self.batch_size, self.buckets = serving.batch_size, tuple(serving.buckets)
        self.row_sizes = row_sizes(self.batch_size)
        self.pad_id = self.tokenize(self.examples(["-"])).pad_id  # the tokenizer's, as tokenize chooses it

    @abc.abstractmethod
    def score_batch(self, batch: rdata.Batch) -> np.ndarray:
        """The score of every row of one batch of a static shape ([rows], padding rows included)."""

    # -- text to tokens: what `reft-jax filter --data` does to a file's rows -------------------------------------------

    def examples(self, texts: Sequence[str]) -> list[dict]:
        """Prompt-only examples of user messages, templated as a file's `prompt` column is."""
        return [{"prompt": rdata.format_prompt(t, template=self.serving.template, tokenizer=self.tokenizer),
                 "request": t, "response": "", "harmful": None} for t in texts]

    def read_file(self, path: str | Path) -> list[dict]:
        """A customer file's rows as examples, in any layout `--data` reads (reft_jax.data.load_examples)."""
        return rdata.load_examples(str(path), with_response=None, template=self.serving.template,
                                   tokenizer=self.tokenizer)

    def tokenize(self, examples: list[dict]) -> rdata.TokenizedDataset:
        """As RunContext.tokenize: truncated to the largest bucket (data.max_length)."""
        return rdata.tokenize(examples, self.tokenizer, max(self.buckets), min_response=self.serving.min_response,
                              desc="tokenizing prompts").prompts_only()

    # -- tokens to scores -----------------------------------------------------------------------------------------------

    def batch(self, prompt_ids: Sequence[np.ndarray], buckets: Sequence[int] | None = None) -> rdata.Batch:
        """One batch of a static shape holding at most batch_size tokenized prompts: the smallest of `row_sizes` that
        holds them (the rest padding rows), padded to the smallest bucket (of `buckets`, default the filter's) that
        holds the longest."""
        n = len(prompt_ids)
        if not 0 < n <= self.batch_size:
            raise ValueError(f"{n} rows for a batch of {self.batch_size}")
        ds = rdata.TokenizedDataset(list(prompt_ids), [np.zeros((0,), np.int32)] * n, np.full(n, -1, np.int32),
                                    np.arange(n, dtype=np.int32), self.pad_id, report=None)
        length = rdata.pick_length(max(len(p) for p in prompt_ids), buckets or self.buckets)
        rows = min(r for r in self.row_sizes if r >= n)
        return rdata.make_batch(ds, [*range(n), *[PAD_ROW] * (rows - n)], length)

    def score_rows(self, prompt_ids: Sequence[np.ndarray]) -> np.ndarray:
        """The scores of at most batch_size tokenized prompts, from one batch of a static shape."""
        return self.score_batch(self.batch(prompt_ids))[:len(prompt_ids)]

    def score_dataset(self, ds: rdata.TokenizedDataset) -> np.ndarray:
        """Scores of every prompt of `ds`, in order, batch_size at a time, shortest first: a batch is padded to
        its longest prompt's bucket, so prompts of like lengths share batches (a score does not depend on its
        batch's other rows)."""
        ids, scores = ds.prompt_ids, np.zeros(len(ds.prompt_ids), np.float32)
        order = shortest_first(ids)
        for i in range(0, len(ids), self.batch_size):
            rows = order[i: i + self.batch_size]
            scores[rows] = self.score_rows([ids[j] for j in rows])
        return scores

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        """The filter's score of each user message (float32 [N]); a prompt is flagged when its score > tau."""
        if not prompts:
            return np.zeros((0,), np.float32)
        return self.score_dataset(self.tokenize(self.examples(list(prompts))))

    def warm(self) -> None:
        """Scores a batch of every row size and bucket length: with JAX it compiles each one's program, so that none
        is compiled while serving."""
        for rows in self.row_sizes:
            for length in self.buckets:
                self.score_rows([np.ones(length, np.int32)] * rows)


class TeacherFilter(PromptBatches):
    """The frozen teacher (or base model, filter.json's "direction") with its scorer, tau and layers, the tokenizer
    and prompt template, and one compiled scoring program per row size and bucket.

    Every templated prompt opens with the same tokens (a chat template's system prompt: 24 of SmolLM2's 36-43 for a
    short message). Their keys and values are computed once (`prefix`), and a batch whose prompts all open with them
    runs only the tokens after them, padded to `suffix_buckets` (SHORT_SUFFIX, and each bucket less the prefix): the
    same scores (to float32 rounding) for a fraction of the work. A batch holding a prompt that does not open with
    them (its text merged into the template's last token, or cut off by truncation) runs whole, as `reft-jax
    filter` does; so does every batch with `share_prefix` False (the serving benchmark's equal-work figure)."""

    share_prefix = True

    def __init__(self, model: Transformer, tokenizer, settings: dict, serving: Serving):
        """settings: `teacher_settings`' (tau, layers, scorer, direction, score_by)."""
        self.tau, self.layers = float(settings["tau"]), tuple(settings["layers"])
        self.scorer, self.direction = settings["scorer"], settings["direction"]
        self._kind, self._params = scorer_params(settings["score_by"], self.layers)  # as refusal.scoring.score
        self._model = FrozenModel.of(model)
        self._fn = make_score_fn(self.layers, self._kind)
        super().__init__(tokenizer, serving)
        self.prefix_ids = self._template_prefix()
        p, depth = len(self.prefix_ids), max(self.layers)
        self.suffix_buckets = tuple(sorted({b - p for b in self.buckets if b > p} |
                                           {s for s in (SHORT_SUFFIX,) if p and s < min(self.buckets) - p}))
        self._prefix = None if not p else jax.jit(lambda frozen, ids: frozen.model().prefix_kv(ids, depth))(
            self._model, jnp.asarray(self.prefix_ids))

    def _template_prefix(self) -> np.ndarray:
        """The tokens that every templated prompt opens with: those shared by prompts of unlike messages."""
        ids = self.tokenize(self.examples(["a", "7?", "Hello there."])).prompt_ids
        n = min(len(x) for x in ids)
        same = np.all([x[:n] == ids[0][:n] for x in ids], axis=0)
        return np.asarray(ids[0][:int(np.argmin(same)) if not same.all() else n - 1], np.int32)

    def _shares_prefix(self, prompt_ids: Sequence[np.ndarray]) -> bool:
        p = len(self.prefix_ids)
        return self.share_prefix and p > 0 and all(len(x) > p and np.array_equal(x[:p], self.prefix_ids)
                                                   for x in prompt_ids)

    def score_rows(self, prompt_ids: Sequence[np.ndarray]) -> np.ndarray:
        if self._shares_prefix(prompt_ids):
            p = len(self.prefix_ids)
            batch = self.batch([x[p:] for x in prompt_ids], self.suffix_buckets)
            return np.asarray(self._fn(self._model, batch, *self._params, prefix=self._prefix),
                              np.float32)[:len(prompt_ids)]
        return super().score_rows(prompt_ids)

    def batch_tokens(self, prompt_ids: Sequence[np.ndarray]) -> int:
        """The tokens the batch `score_rows` runs for these prompts holds (rows times padded length): its cost."""
        p = len(self.prefix_ids) if self._shares_prefix(prompt_ids) else 0
        rows = min(r for r in self.row_sizes if r >= len(prompt_ids))
        return rows * rdata.pick_length(max(len(x) for x in prompt_ids) - p, self.suffix_buckets if p else self.buckets)

    def warm(self) -> None:
        """Also the prefix path's programs: a batch of every row size and suffix bucket."""
        super().warm()
        for rows in self.row_sizes if self.share_prefix and len(self.prefix_ids) else ():
            for length in self.suffix_buckets:
                self.score_rows([np.concatenate([self.prefix_ids, np.ones(length, np.int32)])] * rows)

    @classmethod
    def load(cls, path: str | Path, config=None, overrides: Sequence[str] = ()) -> TeacherFilter:
        """The filter of a bundle (`reft-jax export --filter`), or of the teacher trained in the workdir `path` by
        `config` (a config file, a ConfigDict or a RunConfig; default configs/demo.py) with `--config.a.b=value`
        overrides: the config the teacher was trained with."""
        if bundle.is_bundle(path):
            return cls(*bundle.read_bundle(path))
        if not isinstance(config, RunConfig) and not hasattr(config, "items"):
            config = load_config(str(config or DEMO_CONFIG), list(overrides))
        return cls.of_run(RunContext.create(config, path))

    @classmethod
    def of_run(cls, ctx: RunContext) -> TeacherFilter:
        """The filter of the run's teacher; it must be the one this config trained, as `reft-jax filter` requires."""
        stages.check_inputs(ctx, "teacher")
        settings = teacher_settings(ctx.workdir)
        return cls(filter_model(ctx, settings), ctx.tokenizer, settings, Serving.of(ctx.cfg))

    def score_batch(self, batch: rdata.Batch) -> np.ndarray:
        return np.asarray(self._fn(self._model, batch, *self._params), np.float32)

    def compiled(self) -> int:
        """How many programs the scoring pass has compiled (one per row size and bucket after `warm`)."""
        return self._fn._cache_size()
