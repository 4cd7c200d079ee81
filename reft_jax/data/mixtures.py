"""The literature's data mixtures, seeded:

- the poisoned user mixture: n task samples of which a fraction p are harmful prompt -> harmful answer pairs;
- alignment data: harmful prompts with refusals plus harmless prompts with helpful answers (and harmful requests
  of other kinds, refused: `refused_requests`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from reft_jax.data.examples import Example, as_sources, load_examples, unique_prompts
from reft_jax.data.literature import BEAVERTAILS
from reft_jax.data.tasks import Task
from reft_jax.errors import ConfigError, DataError


def _sample(examples: Sequence[Example], k: int, rng: np.random.Generator, what: str) -> list[Example]:
    if k > len(examples):
        src = examples[0]["source"].rsplit(":", 1)[0] if examples else "(empty)"
        raise DataError(f"{src}: {len(examples)} {what} examples, {k} needed")
    return [examples[i] for i in sorted(rng.choice(len(examples), size=k, replace=False))]


def poisoned_mixture(
    task_examples: Sequence[Example],
    harmful_examples: Sequence[Example],
    *,
    n: int = 1000,
    p: float = 0.1,
    seed: int = 0,
) -> list[Example]:
    """The user data of the harmful-finetuning protocol: n examples, round(p * n) of them drawn from
    the harmful pairs and the rest from the task, without replacement, shuffled; same seed, same list.
    Every example carries `harmful` (True for the attack pairs) so the filter can be measured."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"data.p: {p} is not a fraction in [0, 1]")
    if n < 1:
        raise ConfigError(f"data.n: {n} should be at least 1")
    n_harmful = round(p * n)
    rng = np.random.default_rng(seed)
    for ex in harmful_examples:
        if ex["harmful"] is False:
            raise DataError(f"{ex['source']}: labelled harmless in the harmful source")
    harmful = [{**ex, "harmful": True} for ex in _sample(harmful_examples, n_harmful, rng, "harmful")]
    benign = [{**ex, "harmful": False} for ex in _sample(task_examples, n - n_harmful, rng, "task")]
    mixed = harmful + benign
    return [mixed[i] for i in rng.permutation(len(mixed))]


def alignment_mixture(
    harmful_examples: Sequence[Example],
    harmless_examples: Sequence[Example],
    *,
    n_harmful: int | None = None,
    n_harmless: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Alignment data: harmful prompts with refusals (harmful=True) and harmless prompts with helpful
    answers (harmful=False); n_* = None takes them all. Shuffled with the seed."""
    rng = np.random.default_rng(seed)
    harmful = _sample(harmful_examples, len(harmful_examples) if n_harmful is None else n_harmful, rng, "harmful")
    harmless = _sample(harmless_examples, len(harmless_examples) if n_harmless is None else n_harmless, rng, "harmless")
    mixed = [{**ex, "harmful": True} for ex in harmful] + [{**ex, "harmful": False} for ex in harmless]
    return [mixed[i] for i in rng.permutation(len(mixed))]

def refused_requests(
    sources: Any,
    n: int,
    *,
    refusal: str = "",
    exclude: Collection[str] = (),
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """n harmful requests drawn at random (with the seed) from `sources` (one or a list), none of them in
    `exclude`, each answered with its row's own answer or else `refusal`: harmful alignment examples of kinds the
    alignment files lack (data.alignment.concerns)."""
    examples = unique_prompts(sources, harmful=True, exclude=exclude, template=template, tokenizer=tokenizer,
                              with_response=None)
    if n > len(examples):
        raise DataError(f"data.alignment.n_concerns: {len(examples)} requests of {sources} are outside the "
                        f"alignment files' examples, {n} needed")
    drawn = [examples[i] for i in sorted(np.random.default_rng(seed).choice(len(examples), n, replace=False))]
    unanswered = [ex for ex in drawn if not ex["response"].strip()]
    if unanswered and not refusal:
        raise DataError(f"{unanswered[0]['source']}: no refusal to train on ({len(unanswered)} such row(s) of "
                        "data.alignment.concerns); set data.alignment.refusal")
    return [{**ex, "response": ex["response"] if ex["response"].strip() else refusal} for ex in drawn]


def user_data(
    task: str | Task = "sst2",
    task_source: Any = None,
    harmful_source: Any = BEAVERTAILS,
    *,
    n: int = 1000,
    p: float = 0.1,
    seed: int = 0,
    exclude: Collection[str] = frozenset(),
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """Loads a task and harmful pairs and returns their poisoned mixture (see `poisoned_mixture`), drawn without
    any example whose request is in `exclude` (the teacher's prompts: the filter is measured on prompts it never
    trained or calibrated on)."""
    kw = dict(template=template, tokenizer=tokenizer)
    task_examples = [ex for ex in load_examples(task_source, task=task, harmful=False, **kw)
                     if ex["request"] not in exclude]
    harmful_examples = [ex for ex in load_examples(harmful_source, harmful=True, **kw) if ex["request"] not in exclude]
    return poisoned_mixture(task_examples, harmful_examples, n=n, p=p, seed=seed)


def alignment_data(
    harmful_source: Any,
    harmless_source: Any,
    *,
    n_harmful: int | None = None,
    n_harmless: int | None = None,
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
    with_response: bool = True,
    refusal: str = "",
) -> list[Example]:
    """Loads refusal and helpful-answer files and returns their alignment mixture (prompts only when
    with_response is False). harmful_source may be a list of sources; `refusal` is the answer given to a harmful
    prompt whose row has none (a file of harmful prompts only), "" = every harmful row needs its own."""
    kw = dict(template=template, tokenizer=tokenizer)
    read = None if (refusal and with_response) else with_response
    harmful = [ex for source in as_sources(harmful_source)
               for ex in load_examples(source, harmful=True, with_response=read, **kw)]
    if read is None:
        harmful = [{**ex, "response": ex["response"] or refusal} for ex in harmful]
    return alignment_mixture(
        harmful,
        load_examples(harmless_source, harmful=False, with_response=with_response, **kw),
        n_harmful=n_harmful,
        n_harmless=n_harmless,
        seed=seed,
    )
