"""A fixed three-way split of a dataset's rows by a hash of each row's id, for sets that come without one (CoCoNot's):
a row falls in the same part whatever else its file holds and in whatever order, so a test part stays out of every
training and calibration, run after run and study after study. A source selects a part with `part` (SourceSpec)."""

from __future__ import annotations

import hashlib

PARTS = ("test", "calibration", "train")


def part_of(row_id: str) -> str:
    """The part of the row with this id: PARTS[sha256(id) mod 3] (the rule the recorded studies used)."""
    return PARTS[int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % len(PARTS)]
