"""The host-side filter pass: the frozen teacher scores every user prompt, scores become a keep mask.

score(x) = the mean over the filter's layers l of cos(f_l^teacher(prompt x), R_l) (the paper's), or a fitted probe's
sum_l w_l . f_l(x) / |f_l(x)| + b (reft_jax.refusal.probe); x is flagged harmful when score > tau. Flagged examples are
removed before batching (`kept_dataset`), so the student's batches are packed densely with kept examples and
only the padding rows of the last batch carry weight 0: a flagged example never reaches a loss or a gradient.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from reft_jax import refusal
from reft_jax.data import Batches, TokenizedDataset
from reft_jax.refusal.probe import Probe, Veto
from reft_jax.refusal.readout import make_feature_fn, make_score_fn
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import FILTER_REPORT, FILTER_SCORES, FLAGGED, KEPT


@dataclasses.dataclass
class FilterResult:
    """Scores of a dataset, one entry per example in dataset order."""

    index: np.ndarray  # int [N]: the example's position in its source list
    score: np.ndarray  # float32 [N]
    label: np.ndarray  # int [N]: 1 harmful, 0 harmless, -1 unknown
    tau: float
    layers: tuple[int, ...]  # the hidden_states indices the score was read at (none for a judge's)
    style: np.ndarray | None = None  # str [N]: each prompt's style (reft_jax.data.prompt_style), when known

    @property
    def flagged(self) -> np.ndarray:
        return self.score > self.tau

    def report(self) -> dict:
        """Counts, and precision / recall / F1 / AUROC against the labels when every example has one."""
        flagged = self.flagged
        out = {"num_examples": int(len(self.score)), "num_flagged": int(flagged.sum()),
               "num_kept": int((~flagged).sum()), "flag_rate": float(flagged.mean()) if len(flagged) else 0.0,
               "tau": float(self.tau), "layers": [int(x) for x in self.layers]}
        labelled = self.label >= 0
        if labelled.any() and labelled.all():
            out.update(refusal.filter_metrics(flagged, self.label, self.score))
            if self.style is not None:
                out["by_style"] = refusal.auroc_by_style(self.score, self.label, self.style)
        return out

    def select(self, rows: np.ndarray) -> FilterResult:
        """The entries at `rows` (a boolean mask or positions), with the same threshold."""
        def pick(x):
            return None if x is None else np.asarray(x)[rows]

        return dataclasses.replace(self, index=pick(self.index), score=pick(self.score), label=pick(self.label),
                                   style=pick(self.style))

    def write(self, out_dir: str | Path, digests: Sequence[str] = (), **fields) -> dict:
        """Writes scores.jsonl (index, score, flagged[, label][, digest: digests[index], what identifies the row])
        and report.json (the report, plus `fields`: what was scored, the filter's own settings); returns the report."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        flagged = self.flagged
        with (out_dir / FILTER_SCORES).open("w") as f:
            for i in range(len(self.score)):
                line = {"index": int(self.index[i]), "score": float(self.score[i]), "flagged": bool(flagged[i])}
                if self.label[i] >= 0:
                    line["label"] = bool(self.label[i])
                if digests:
                    line["digest"] = digests[int(self.index[i])]
                f.write(json.dumps(line) + "\n")
        report = {**self.report(), **fields}
        (out_dir / FILTER_REPORT).write_text(json.dumps(report, indent=2) + "\n")
        return report

    def write_rows(self, out_dir: str | Path, rows: Sequence[dict]) -> None:
        """kept.jsonl and flagged.jsonl: the scored rows as they were read (rows[index]), each with its score,
        in dataset order; a person can review the flags, edit kept.jsonl and finetune on it."""
        out_dir = Path(out_dir)
        for name, chosen in ((KEPT, ~self.flagged), (FLAGGED, self.flagged)):
            with (out_dir / name).open("w") as f:
                for i in np.flatnonzero(chosen):
                    f.write(json.dumps({**rows[int(self.index[i])], "score": float(self.score[i])}) + "\n")

    def top_scored(self, rows: Sequence[dict], k: int = 10) -> list[dict]:
        """The k highest-scoring rows, with their index and score: what to read first without labels."""
        order = np.argsort(-self.score, kind="stable")[:k]
        return [{"index": int(self.index[i]), "score": float(self.score[i]), "row": rows[int(self.index[i])]}
                for i in order]


def _per_example(fn, ds: TokenizedDataset, *, batch_size: int, buckets: Sequence[int], progress: bool,
                 desc: str) -> np.ndarray:
    """fn(batch) -> [B, ...] for every example of ds's prompts, in dataset order: [N, ...] float32."""
    batches = Batches(ds.prompts_only(), batch_size, buckets, shuffle=False, num_epochs=1)
    out = None
    for step in tqdm(range(batches.num_steps), desc=desc, disable=not progress):
        values = np.asarray(fn(batches.batch(step)))
        if out is None:
            out = np.full((len(ds), *values.shape[1:]), np.nan, np.float32)
        for j, row in enumerate(batches.global_rows(step)):
            if row:
                out[row[0]] = values[j]
    return out


def prompt_features(model: FrozenModel, ds: TokenizedDataset, layers: tuple[int, ...], *, batch_size: int,
                    buckets: Sequence[int], progress: bool = True, desc: str = "filter") -> np.ndarray:
    """Last-prompt-token hidden states at `layers` of every example, in dataset order: [len(layers), N, D]."""
    features = make_feature_fn(tuple(layers))
    rows_first = _per_example(lambda b: np.moveaxis(np.asarray(features(model, b)), 0, 1), ds,
                              batch_size=batch_size, buckets=buckets, progress=progress, desc=desc)
    return np.moveaxis(rows_first, 0, 1)


def scorer_params(scorer: np.ndarray | Probe | Veto, layers: tuple[int, ...]) -> tuple[str, tuple]:
    """The scorer's name in feature.SCORERS and its parameters: R [len(layers), D] scores by the cosine; a Probe or a
    Veto by its own."""
    if isinstance(scorer, (Probe, Veto)):
        return scorer.kind, scorer.params
    return "cosine", (np.asarray(scorer, np.float32).reshape(len(layers), -1),)


def score(teacher: FrozenModel, ds: TokenizedDataset, scorer: np.ndarray | Probe | Veto, layers: tuple[int, ...], *,
          batch_size: int, buckets: Sequence[int], progress: bool = True) -> np.ndarray:
    """The filter's score of each example, in dataset order (float32), at each of `layers`: with `scorer` R
    [len(layers), D], the cosine with R_l averaged over the layers (refusal.mean_cosine_scores, the paper's); with a
    Probe, the probe's (refusal.probe_scores); with a Veto, the cosine lowered where its probe vetoes."""
    kind, params = scorer_params(scorer, layers)
    fn = make_score_fn(tuple(layers), kind)
    return _per_example(lambda b: fn(teacher, b, *params), ds, batch_size=batch_size, buckets=buckets,
                        progress=progress, desc="filter")


def run_filter(teacher: FrozenModel, ds: TokenizedDataset, scorer: np.ndarray | Probe | Veto, layers: tuple[int, ...],
               tau: float, *, batch_size: int, buckets: Sequence[int], progress: bool = True,
               style: np.ndarray | None = None) -> FilterResult:
    s = score(teacher, ds, scorer, layers, batch_size=batch_size, buckets=buckets, progress=progress)
    return FilterResult(index=np.asarray(ds.index), score=s, label=np.asarray(ds.harmful), tau=float(tau),
                        layers=tuple(layers), style=style)


def kept_dataset(ds: TokenizedDataset, result: FilterResult) -> TokenizedDataset:
    """The examples the filter keeps, in order: what the student trains on."""
    return ds.select(np.flatnonzero(~result.flagged))
