"""Safe prompts that look harmful: harmless requests holding a word of harmful requests, added to the alignment
data's harmless side so that learning the refusals does not teach refusing them."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

from reft_jax.data.examples import Example, unique_prompts
from reft_jax.errors import DataError


# Words that harmful requests are made of and that safe prompts use too ("the causes of World War I", "shoot a
# basketball", "a poem about drug addiction"). Written from the vocabulary of harmful requests, not from any
# evaluation file; whole words, any case.
LOOKALIKE_WORDS = frozenset("""
    abuse alcohol attack attacks beat blood bomb bombs burn cheat cheating choke crack crime crimes criminal dangerous
    dead death destroy die drug drugs execute exploit explode explosion explosive fight fraud gun guns hack hacker
    hacking harm harmful hurt illegal kill killed killer killing kills knife murder poison poisonous punch rob robbery
    scam shoot shooting shot smash steal stealing stolen suicide terminate terrorism terrorist theft violence violent
    virus war weapon weapons""".split())


def lookalike_prompts(
    sources: Any,
    n: int,
    *,
    by_words: bool = True,
    exclude: Collection[str] = (),
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """n harmless prompts that look harmful, drawn at random (with the seed) from `sources` (one or a list,
    labelled harmless), none of them in `exclude`: with `by_words`, among the requests holding a word of
    LOOKALIKE_WORDS (sources of plain instructions); without, among all (a set of labelled lookalikes). A row with
    an answer keeps it (a compliant answer written for it, as CoCoNot pref's `chosen`); the others' are ""."""
    examples = unique_prompts(sources, harmful=False, exclude=exclude, template=template, tokenizer=tokenizer,
                              with_response=None)
    if by_words:
        examples = [ex for ex in examples if LOOKALIKE_WORDS & set(re.findall(r"[a-z]+", ex["request"].lower()))]
    if n > len(examples):
        held = " hold a word of LOOKALIKE_WORDS and" if by_words else ""
        raise DataError(f"data.alignment.n_lookalikes: {len(examples)} prompts of {sources}{held} are not left "
                        f"out, {n} needed")
    rng = np.random.default_rng(seed)
    return [examples[i] for i in sorted(rng.choice(len(examples), n, replace=False))]


# CoCoNot's parts, a third of the rows each by a hash of the row's id: fixed whatever the file's order or which rows
# a copy holds. "test" is held out of all training and tuning.
def coconot_pref_answers(rows: Iterable[Mapping[str, Any]],
                         refusals: Mapping[str, Collection[str]]) -> list[tuple[str, str, bool]]:
    """(prompt, answer, refuses) for both answers of each CoCoNot pref row, chosen then rejected: an answer refuses
    when its row's id is in refusals["chosen"] or refusals["rejected"] (labels made by reading the answers; the
    file's own rejected answers are often plain compliance, its chosen ones sometimes refusals)."""
    return [(row["prompt"], row[side], row["id"] in refusals[side]) for row in rows for side in ("chosen", "rejected")]
