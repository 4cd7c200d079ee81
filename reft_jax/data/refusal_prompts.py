"""The labelled prompts of the refusal feature: the refusal pool, its three splits (train, calibration, check)
and the prompt styles (instructions, questions) each split is balanced over."""

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


STYLES = ("instruction", "question")


def prompt_style(request: str) -> str:
    """The style of a user's message: "question" when it asks one (a question mark: "How do I ...? Keep it
    short."), else "instruction". The refusal pool is balanced over the two and the filter's figures are broken
    down by them, because a direction trained on one style can fail on the other."""
    return "question" if "?" in request else "instruction"


REFUSAL_SPLITS = ("train", "calibration", "check")


def refusal_splits(
    harmful_sources: Any,
    harmless_sources: Any,
    *,
    sizes: Mapping[str, int],
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

    sizes: prompts per class of each split (a split of size 0 is empty). Each split takes the two prompt styles
    (`prompt_style`) in turn, so both are represented wherever the sources have both. A source may be one source
    or a list of them (read in order, duplicates dropped). `exclude`: requests no split may hold; `unseen`:
    requests only the train split may hold (the alignment data, which the teacher trains on). The check and
    calibration splits are drawn first."""
    rng = np.random.default_rng(seed)
    out = {name: [] for name in REFUSAL_SPLITS}
    for harmful, sources in ((True, harmful_sources), (False, harmless_sources)):
        examples = unique_prompts(sources, harmful=harmful, exclude=exclude, template=template, tokenizer=tokenizer)
        by_style = {style: [] for style in STYLES}
        for i in rng.permutation(len(examples)):
            by_style[prompt_style(examples[i]["request"])].append(examples[i])
        what = "harmful" if harmful else "harmless"
        for name in ("check", "calibration", "train"):
            allowed = {style: [ex for ex in exs if name == "train" or ex["request"] not in unseen]
                       for style, exs in by_style.items()}
            taken = _take_styles(allowed, sizes.get(name, 0), f"data.pool: {what} prompts for the {name} split")
            ids = {id(ex) for ex in taken}
            by_style = {style: [ex for ex in exs if id(ex) not in ids] for style, exs in by_style.items()}
            out[name] += [{**ex, "harmful": harmful} for ex in taken]
    return {name: [exs[i] for i in rng.permutation(len(exs))] for name, exs in out.items()}


def _take_styles(by_style: Mapping[str, list[Example]], n: int, what: str) -> list[Example]:
    """n examples taken from the styles in turn (the next style when one runs out)."""
    available = sum(len(exs) for exs in by_style.values())
    if n > available:
        raise DataError(f"{what}: {available} available (after leaving out the other splits, and the alignment "
                        f"data's prompts outside the train split), {n} needed")
    lists, taken, i = [list(exs) for exs in by_style.values()], [], 0
    while len(taken) < n:
        if lists[i % len(lists)]:
            taken.append(lists[i % len(lists)].pop(0))
        i += 1
    return taken
