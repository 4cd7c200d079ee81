"""Over-refusal: how often a model (or a filter) turns away safe requests that only look harmful ("How do I kill a
Python process?"). A defence that refuses everything scores a perfect harmful score; this is the other side.

The data (data.eval.over_refusal) is one source or several, read in order. A file of prompts with a safe/unsafe label
and optionally a type, like XSTest's CSV (columns prompt, type, label with values safe / unsafe), loads as it is; a
source mapping whose fields map no label is a set of safe prompts only (OR-Bench-Hard's, CoCoNot's contrast set), its
rows typed by the source's name. The headline rate is over the safe rows; the unsafe rows are the contrast (a model
should refuse them), and each type gets its own rate. Every rate comes with its 95 % Wilson interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from reft_jax.config.schema import EvalData
from reft_jax.data.examples import as_sources
from reft_jax.data.sources import SourceSpec, load_records
from reft_jax.data.templates import format_prompt
from reft_jax.errors import DataError
from reft_jax.evaluation import intervals


@dataclasses.dataclass(frozen=True)
class OverRefusalSet:
    requests: list[str]  # the user messages, as read
    prompts: list[str]  # the same, in the run's prompt template
    safe: np.ndarray  # bool [N]
    types: list[str] | None  # one per row (a type column's value, or the source's name); None: untyped

    def examples(self) -> list[dict]:
        """As prompt-only examples (harmful = the unsafe rows), for the filters' tokenized scoring."""
        return [{"prompt": p, "request": r, "response": "", "harmful": not s, "label": None, "source": f"row {i + 1}"}
                for i, (p, r, s) in enumerate(zip(self.prompts, self.requests, self.safe))]


def load(d: EvalData, *, template: str, tokenizer, exclude: Collection[str] = frozenset()) -> OverRefusalSet:
    """data.eval.over_refusal's rows, source after source (the first n_over_refusal of those whose prompt is not in
    `exclude`: the teacher's prompts). A labelled source's label value over_refusal_safe marks a safe row, any other
    value an unsafe one; its type is its over_refusal_columns.type column. A source without a label mapped is safe
    throughout, of the type of its name; so is a labelled one without a type column when there are several."""
    sources = as_sources(d.over_refusal)
    rows = [row for source in sources for row in _rows(SourceSpec.from_config(source), d)]
    rows = [row for row in rows if row[0] not in exclude][: d.n_over_refusal]
    if not rows:
        raise DataError("data.eval.over_refusal: no row left once the teacher's own prompts are left out")
    requests, labels, types, names = zip(*rows)
    safe = np.array([label is None or label.strip().lower() == d.over_refusal_safe.strip().lower()
                     for label in labels])
    if not safe.any():
        shown = ", ".join(sorted(set(labels)))
        raise DataError(f"data.eval.over_refusal: no row is labelled {d.over_refusal_safe!r} (labels: {shown}); "
                        "set data.eval.over_refusal_safe")
    typed = any(t is not None for t in types) or len(sources) > 1  # several sources: each its rows' type at least
    return OverRefusalSet(
        requests=list(requests),
        prompts=[format_prompt(q, template=template, tokenizer=tokenizer) for q in requests],
        safe=safe,
        types=[n if t is None else t for t, n in zip(types, names)] if typed else None)


def _rows(spec: SourceSpec, d: EvalData) -> list[tuple[str, str | None, str | None, str]]:
    """One source's rows: (request, label (None: a source of safe prompts only), type or None, the source's name)."""
    columns = d.over_refusal_columns
    if not spec.fields:
        spec = dataclasses.replace(spec, fields={"instruction": columns.prompt, "label": columns.label})
    if "label" not in spec.fields:  # safe prompts only
        return [(r["instruction"], None, spec.title, spec.title) for r in load_records(spec)]
    records = load_records(spec, required=("instruction", "label"))
    if columns.type and columns.type not in records[0]["row"]:
        raise DataError(f"{spec.display}: missing type column '{columns.type}' (fields: "
                        f"{', '.join(records[0]['row'])}); set data.eval.over_refusal_columns.type, or '' for none")
    return [(r["instruction"], r["label"], str(r["row"][columns.type]) if columns.type else None, spec.title)
            for r in records]


def rates(flags: Sequence[bool], data: OverRefusalSet, what: str) -> dict:
    """The share of safe rows flagged (`{what}_rate`, the over-refusal), of unsafe rows (`unsafe_{what}_rate`, the
    contrast; None without unsafe rows), each with its 95 % interval (`..._ci`), their counts, and per type its rate,
    interval, count and label(s)."""
    flags = np.asarray(flags, bool)
    if flags.shape != data.safe.shape:
        raise ValueError(f"{len(flags)} verdicts for {len(data.safe)} over-refusal rows")
    unsafe = ~data.safe
    out = {**intervals.rate(f"{what}_rate", int(flags[data.safe].sum()), int(data.safe.sum())),
           "num_safe": int(data.safe.sum()),
           **intervals.rate(f"unsafe_{what}_rate", int(flags[unsafe].sum()), int(unsafe.sum())),
           "num_unsafe": int(unsafe.sum())}
    if data.types is not None:
        types = np.asarray(data.types)
        out["by_type"] = {}
        for t in dict.fromkeys(data.types):
            rows = types == t
            kinds = sorted({"safe" if s else "unsafe" for s in data.safe[rows]})
            out["by_type"][t] = {**intervals.rate(f"{what}_rate", int(flags[rows].sum()), int(rows.sum())),
                                 "n": int(rows.sum()), "label": "/".join(kinds)}
    return out
