"""Sources loaded as templated examples.

An *example* is a plain dict:
    {"prompt": str (templated, ends right before the response), "request": str (the user's message in it),
     "response": str,
     "harmful": bool | None (the PROMPT is harmful), "label": str | None, "source": "file:line",
     "row": the source row as read, "response_spans": [(start, end), ...] (a multi-turn chat only: the
     characters of the response that are trained)}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from reft_jax.data.sources import SourceSpec, load_records
from reft_jax.data.tasks import Task, get_task
from reft_jax.data.templates import conversation, format_prompt, user_message
from reft_jax.errors import ConfigError

Example = dict[str, Any]


def load_examples(
    source: SourceSpec | str | Mapping[str, Any] | None = None,
    *,
    task: str | Task | None = None,
    harmful: bool | None = None,
    with_response: bool | None = True,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """Load a source as templated examples.

    task: apply a task's instruction / labels / answer format (and its hub dataset when source is
      None); None reads the records as instruction -> output.
    harmful: label every example (True for attack or refusal data, False for harmless data); None keeps
      the record's own `harmful` field (unknown if absent).
    with_response: False reads prompts only (response ""); None reads responses where the rows have them
      (a file of prompts alone is fine: its responses are "").
    """
    t = get_task(task) if task is not None else None
    if source is None:
        if t is None or t.source is None:
            raise ConfigError(f"data: no source given{'' if t is None else f' for task {t.name!r}'}")
        source = t.source
    if t is not None:
        required = t.required
    else:
        required = ("instruction", "output") if with_response is True else ("instruction",)
    records = load_records(source, required=required, label_names=t.labels if t else None)
    examples = []
    for rec in records:
        if t is not None:
            rec = t.record(rec)
        example = {
            "prompt": format_prompt(rec["instruction"], rec["input"], template=template, tokenizer=tokenizer),
            "request": user_message(rec["instruction"], rec["input"]),
            "response": (rec["output"] or "") if with_response is not False else "",
            "harmful": rec["harmful"] if harmful is None else harmful,
            "label": rec["label"],
            "source": rec["source"],
            "row": rec["row"],
        }
        turns = rec.get("messages")
        if with_response is not False and turns and sum(m["role"] == "assistant" for m in turns) > 1:
            example.update(conversation(turns, template=template, tokenizer=tokenizer, where=rec["source"]))
        examples.append(example)
    return examples


def unique_prompts(sources: Any, *, harmful: bool | None, exclude: Collection[str] = (), template: str = "alpaca",
                   tokenizer: Any = None, with_response: bool | None = False) -> list[Example]:
    """The prompts of one source or a list of them (read in order; responses not read unless `with_response`, as
    `load_examples`'): each request once, none of them in `exclude`."""
    examples, seen = [], set(exclude)
    for source in as_sources(sources):
        for ex in load_examples(source, harmful=harmful, with_response=with_response, template=template,
                                tokenizer=tokenizer):
            if ex["request"] not in seen:
                seen.add(ex["request"])
                examples.append(ex)
    return examples


def as_sources(sources: Any) -> list:
    """One source or a list of them, as a list."""
    return list(sources) if isinstance(sources, (list, tuple)) else [sources]
