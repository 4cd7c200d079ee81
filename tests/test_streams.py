"""The run's named random streams (reft_jax.config.streams): one table, no offset guessed anywhere else."""

import re
from pathlib import Path

import numpy as np
import pytest

import reft_jax
from reft_jax.config import streams
from reft_jax.config.streams import MEASURED, STREAMS, seed_of


def test_each_stream_is_named_once_and_an_unknown_name_is_an_error():
    assert len(set(STREAMS)) == len(STREAMS) and set(MEASURED) <= set(STREAMS)
    with pytest.raises(ValueError, match="add it to reft_jax.config.streams.STREAMS"):
        seed_of(0, "my_new_stage")


def test_new_streams_are_independent_of_every_other_and_keep_their_seed_when_one_is_appended(monkeypatch):
    new = [s for s in STREAMS if s not in MEASURED]
    for seed in range(50):
        seeds = [seed_of(seed, s) for s in STREAMS]
        assert len(set(seed_of(seed, s) for s in new)) == len(new)
        assert not {seed_of(seed, s) for s in new} & {seed + k for k in MEASURED.values()}
        draws = [tuple(np.random.default_rng(seed_of(seed, s)).permutation(20)) for s in new]
        assert len(set(draws)) == len(draws)
        monkeypatch.setattr(streams, "STREAMS", (*STREAMS, "appended"))
        assert [seed_of(seed, s) for s in STREAMS] == seeds
        monkeypatch.undo()


def test_no_module_adds_its_own_offset_to_the_seed():
    """A draw's seed comes from seed_of; `seed + 3`, `seed_offset=` or `salt=` elsewhere would be a guessed number."""
    package = Path(reft_jax.__file__).parent
    pattern = re.compile(r"seed\s*\+\s*\d|seed_offset|salt\s*=")
    found = [f"{p.relative_to(package)}:{i}" for p in sorted(package.rglob("*.py")) if p.name != "streams.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_the_training_streams_follow_the_training_seed_and_every_other_stream_the_seed():
    """config `seeds`: a run of training seed 5 draws its training (adapters, batch order, noise) from 5 and
    everything else (data, teacher, filters, evaluation) from `seed`; unset, every stream follows `seed` as before."""
    from reft_jax.config import default_config
    from reft_jax.config.schema import RunConfig
    from reft_jax.config.typed import replace

    assert set(streams.TRAINING) <= set(STREAMS) and "teacher_adapters" not in streams.TRAINING
    cfg = replace(RunConfig.of(default_config()), "seed", 2)
    assert cfg.seeds is None and cfg.training_seed == 2
    assert all(streams.stream_seed(cfg, s) == seed_of(2, s) for s in STREAMS)
    seeded = replace(cfg, "seeds", (5, 6))
    assert seeded.training_seed == 5
    for s in STREAMS:
        assert streams.stream_seed(seeded, s) == seed_of(5 if s in streams.TRAINING else 2, s), s
