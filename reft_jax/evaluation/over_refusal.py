"""Over-refusal: how often a model (or a filter) turns away safe requests that only look harmful ("How do I kill a
Python process?"). A defence that refuses everything scores a perfect harmful score; this is the other side.

The data (data.eval.over_refusal) is a file of prompts with a safe/unsafe label and optionally a type, like XSTest's
CSV (columns prompt, type, label with values safe / unsafe), which loads as it is. The headline rate is over the safe
rows; the unsafe rows are the contrast (a model should refuse them), and each type gets its own rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from reft_jax.config.schema import EvalData
from reft_jax.data.sources import SourceSpec, load_records
from reft_jax.data.templates import format_prompt
from reft_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class OverRefusalSet:
    requests: list[str]  # the user messages, as read
    prompts: list[str]  # the same, in the run's prompt template
    safe: np.ndarray  # bool [N]
    types: list[str] | None  # one per row, when a type column is configured

    def examples(self) -> list[dict]:
        """As prompt-only examples (harmful = the unsafe rows), for the filters' tokenized scoring."""
        return [{"prompt": p, "request": r, "response": "", "harmful": not s, "label": None, "source": f"row {i + 1}"}
                for i, (p, r, s) in enumerate(zip(self.prompts, self.requests, self.safe))]


def load(d: EvalData, *, template: str, tokenizer, exclude: Collection[str] = frozenset()) -> OverRefusalSet:
    """data.eval.over_refusal's rows (the first n_over_refusal of those whose prompt is not in `exclude`: the
    teacher's prompts), with the columns over_refusal_columns names; the label column's value over_refusal_safe
    marks a safe row, any other value an unsafe one."""
    columns = d.over_refusal_columns
    spec = SourceSpec.from_config(d.over_refusal)
    if not spec.fields:
        spec = dataclasses.replace(spec, fields={"instruction": columns.prompt, "label": columns.label})
    records = [r for r in load_records(spec, required=("instruction", "label"))
               if r["instruction"] not in exclude][: d.n_over_refusal]
    if not records:
        raise DataError(f"{spec.display}: no row left once the teacher's own prompts are left out")
    if columns.type and columns.type not in records[0]["row"]:
        raise DataError(f"{spec.display}: missing type column '{columns.type}' (fields: "
                        f"{', '.join(records[0]['row'])}); set data.eval.over_refusal_columns.type, or '' for none")
    safe = np.array([r["label"].strip().lower() == d.over_refusal_safe.strip().lower() for r in records])
    if not safe.any():
        labels = sorted({r["label"] for r in records})
        raise DataError(f"{spec.display}: no row is labelled {d.over_refusal_safe!r} (labels: {', '.join(labels)}); "
                        "set data.eval.over_refusal_safe")
    requests = [r["instruction"] for r in records]
    return OverRefusalSet(
        requests=requests,
        prompts=[format_prompt(q, template=template, tokenizer=tokenizer) for q in requests],
        safe=safe,
        types=[str(r["row"][columns.type]) for r in records] if columns.type else None)


def rates(flags: Sequence[bool], data: OverRefusalSet, what: str) -> dict:
    """The share of safe rows flagged (`{what}_rate`, the over-refusal), of unsafe rows (`unsafe_{what}_rate`, the
    contrast; None without unsafe rows), their counts, and per type its rate, count and label(s)."""
    flags = np.asarray(flags, bool)
    if flags.shape != data.safe.shape:
        raise ValueError(f"{len(flags)} verdicts for {len(data.safe)} over-refusal rows")
    unsafe = ~data.safe
    out = {f"{what}_rate": float(flags[data.safe].mean()), "num_safe": int(data.safe.sum()),
           f"unsafe_{what}_rate": float(flags[unsafe].mean()) if unsafe.any() else None,
           "num_unsafe": int(unsafe.sum())}
    if data.types is not None:
        types = np.asarray(data.types)
        out["by_type"] = {}
        for t in dict.fromkeys(data.types):
            rows = types == t
            kinds = sorted({"safe" if s else "unsafe" for s in data.safe[rows]})
            out["by_type"][t] = {f"{what}_rate": float(flags[rows].mean()), "n": int(rows.sum()),
                                 "label": "/".join(kinds)}
    return out
