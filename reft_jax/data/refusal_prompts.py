"""The labelled prompts of the refusal feature: the refusal pool, its three splits (train, calibration, check),
the phrasings (instructions, questions) each split is balanced over, and the styles its figures are broken down
by: the phrasings, and the lookalikes (safe prompts that look harmful) as a style of their own."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from reft_jax.data.examples import Example, unique_prompts
from reft_jax.data.mixtures import alignment_data
from reft_jax.errors import DataError


def refusal_pool(
    harmful_source: Any,
    harmless_source: Any,
    *,
    n_each: int = 128,
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """A labelled prompt pool: n_each harmful and n_each harmless prompts drawn at random (responses are not
    needed; files with prompts only are fine). The pipeline's splits of such prompts are `refusal_splits`."""
    return alignment_data(harmful_source, harmless_source, n_harmful=n_each, n_harmless=n_each, seed=seed,
                          template=template, tokenizer=tokenizer, with_response=False)


PHRASINGS = ("instruction", "question")  # what `prompt_style` tells apart
# The pool's safe prompts that look harmful ("How do I kill a Python process?"): labelled harmless, and a style of
# their own whatever their phrasing, since they are what a filter flags by mistake.
LOOKALIKE = "lookalike"
STYLES = (*PHRASINGS, LOOKALIKE)


def prompt_style(request: str) -> str:
    """The phrasing of a user's message: "question" when it asks one (a question mark: "How do I ...? Keep it
    short."), else "instruction". The refusal pool is balanced over the two and the filter's figures are broken
    down by them, because a direction trained on one phrasing can fail on the other."""
    return "question" if "?" in request else "instruction"


REFUSAL_SPLITS = ("train", "calibration", "check")


def refusal_splits(
    harmful_sources: Any,
    harmless_sources: Any,
    *,
    sizes: Mapping[str, int],
    lookalike_sources: Any = (),
    n_lookalikes: int = 0,
    exclude: Collection[str] = (),
    unseen: Collection[str] = (),
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> dict[str, list[Example]]:
    """The labelled prompts of the refusal feature, split three ways with no prompt in two splits:

    - "train": what R_l is computed over and the regulariser trains on (the refusal pool);
    - "calibration": what the filter's threshold tau is set on;
    - "check": held out from both, to compare the teacher's direction with the base model's.

    sizes: prompts per class of each split (a split of size 0 is empty). Each split takes the two phrasings
    (`prompt_style`) in turn, so both are represented wherever the sources have both. n_lookalikes: safe prompts
    that look harmful, from `lookalike_sources`, that each non-empty split takes on its harmless side besides its
    sizes[split] harmless prompts (labelled harmless, style LOOKALIKE). A source may be one source or a list of
    them (read in order, duplicates dropped). `exclude`: requests no split may hold; `unseen`: requests only the
    train split may hold (the alignment data, which the teacher trains on). The check and calibration splits are
    drawn first. Each example carries its `style` (its phrasing, or LOOKALIKE)."""
    rng = np.random.default_rng(seed)
    out = {name: [] for name in REFUSAL_SPLITS}
    kinds = [("harmful", "harmful", harmful_sources, sizes), ("harmless", "harmless", harmless_sources, sizes)]
    if n_lookalikes > 0:  # drawn last, from the same generator: without them the draws are those of before
        kinds.append((LOOKALIKE, "lookalikes", lookalike_sources,
                      {name: n_lookalikes for name, n in sizes.items() if n > 0}))
    for kind, field, sources, counts in kinds:
        harmful = kind == "harmful"
        drawn = {ex["request"] for exs in out.values() for ex in exs}  # no prompt twice, even where sources overlap
        examples = unique_prompts(sources, harmful=harmful, exclude={*exclude, *drawn}, template=template,
                                  tokenizer=tokenizer)
        needed = sum(counts.values())
        if needed > len(examples):
            per_split = ", ".join(f"{counts[name]} for the {name} split" for name in REFUSAL_SPLITS if counts.get(name))
            raise DataError(f"data.pool.{field}: {len(examples)} distinct {kind} prompts available (none of them "
                            f"another kind's), {needed} needed ({per_split})")
        by_phrasing = {phrasing: [] for phrasing in PHRASINGS}
        for i in rng.permutation(len(examples)):
            by_phrasing[prompt_style(examples[i]["request"])].append(examples[i])
        for name in ("check", "calibration", "train"):
            allowed = {phrasing: [ex for ex in exs if name == "train" or ex["request"] not in unseen]
                       for phrasing, exs in by_phrasing.items()}
            taken = _take_phrasings(allowed, counts.get(name, 0), f"data.pool: {kind} prompts for the {name} split")
            ids = {id(ex) for ex in taken}
            by_phrasing = {phrasing: [ex for ex in exs if id(ex) not in ids] for phrasing, exs in by_phrasing.items()}
            out[name] += [{**ex, "harmful": harmful,
                           "style": LOOKALIKE if kind == LOOKALIKE else prompt_style(ex["request"])} for ex in taken]
    return {name: [exs[i] for i in rng.permutation(len(exs))] for name, exs in out.items()}


def _take_phrasings(by_phrasing: Mapping[str, list[Example]], n: int, what: str) -> list[Example]:
    """n examples taken from the phrasings in turn (the next phrasing when one runs out)."""
    available = sum(len(exs) for exs in by_phrasing.values())
    if n > available:
        raise DataError(f"{what}: {available} available (after leaving out the other splits, and the alignment "
                        f"data's prompts outside the train split), {n} needed")
    lists, taken, i = [list(exs) for exs in by_phrasing.values()], [], 0
    while len(taken) < n:
        if lists[i % len(lists)]:
            taken.append(lists[i % len(lists)].pop(0))
        i += 1
    return taken
