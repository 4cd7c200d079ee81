"""The run's random streams, one name each, in one table.

Every draw of a run (a data sample, a shuffle, an adapter's initialisation, noise) takes its seed from the config's
`seed` and its stream's name, so a new stage adds a name here instead of guessing a free offset:

    rng = np.random.default_rng(seed_of(cfg.seed, "user_data"))

The draws the measured figures were made with keep the offsets they had (`MEASURED`): docs/results.md and the
demo's quality floors (tests/test_demo_quality.py) hold for them, and independent draws for every stream moved
the demo's filter F1 from 0.987 to 0.84 at seed 0. Several of them share an offset, each a different generator
over different data (a numpy sample of one list, a model's initialisation). Every other stream, and any new one,
is independent of all others: numpy's SeedSequence of (seed, the stream's position in STREAMS), as JAX folds a
stream id into a key (`jax.random.fold_in`).
"""

from __future__ import annotations

import numpy as np

MEASURED = {  # stream: the offset added to the config's seed
    "demo_data": 0,  # the embedded demo's generated files
    "model_init": 0,  # a random-init base model's weights
    "user_data": 0,  # the research protocol's poisoned mixture
    "alignment_data": 0,  # which alignment examples are drawn, and their order
    "lookalike_mix": 0,  # the lookalikes' place among the alignment data
    "teacher_batches": 0,  # the teacher's alignment batches
    "repnoise_noise": 0,  # RepNoise's Gaussian noise (a JAX key, folded with the step)
    "gcg": 0,  # the GCG attack's candidate draws (a JAX key, folded with the prompt)
    "refusal_splits": 1,  # the refusal feature's train, calibration and check splits
    "teacher_adapters": 1,  # the teacher's fresh LoRA adapters
    "student_adapters": 2,  # every method's finetuning
    "user_batches": 2,  # the finetuning's user batches
    "distillation_batches": 3,  # the finetuning's alignment batches (distillation, joint SFT, Lisa)
    "alignment_adapters": 4,  # safety alignment's and every alignment-stage defence's: the same start for each
    "alignment_batches": 5,  # the alignment stages' batches
    "harmful_pair_batches": 6,  # RepNoise's and Booster's harmful-answer batches
    "saft_validation": 7,  # SAFT's labelled sample of the user data
    "bench_batches": 0,  # `reft-jax bench`'s random token batches (the same for JAX and PyTorch)
    "bench_direction": 1,  # `reft-jax bench`'s stand-in for R_l
}
# Append only: an independent stream's seed is derived from its position.
STREAMS = (
    *MEASURED,
    "lookalikes",  # which safe lookalike prompts join the alignment data (was seed + 5, the alignment batches')
    "harmful_pairs",  # the defences' harmful pairs, data.alignment.n_harmful_pairs (was seed + 7, SAFT's sample's)
    "veto_attack_kind",  # the lookalike veto's calibration requests of the attack's kind, data.veto.n_attack_kind
    "veto_sets",  # data.veto.n_each of each of the veto's sets
    "concerns",  # which harmful requests of data.alignment.concerns join the alignment data
    "concern_mix",  # their place among the alignment data
)


# The training draws: a finetuning's (every method's) and an alignment stage's (safety alignment, the defences')
# adapters, batch order and noise. They take their seed from the run's training seed (RunConfig.training_seed: the
# config's `seeds`, one run each, else `seed`), so that the runs of several seeds differ in training alone; every
# other draw (the demo data, the base model's init, the user, alignment and pool data, the teacher, the filters,
# the evaluation) follows `seed` and is the same for every seed.
TRAINING = ("student_adapters", "user_batches", "distillation_batches", "alignment_adapters", "alignment_batches",
            "harmful_pair_batches", "repnoise_noise")


def stream_seed(cfg, stream: str) -> int:
    """The seed of `stream` in the run of `cfg` (a RunConfig): seed_of its training seed for a TRAINING stream,
    seed_of its `seed` for any other."""
    return seed_of(cfg.training_seed if stream in TRAINING else cfg.seed, stream)


def seed_of(seed: int, stream: str) -> int:
    """The seed of `stream` (a name of STREAMS) in a run of `seed`."""
    if stream not in STREAMS:
        raise ValueError(f"no random stream {stream!r}: add it to reft_jax.config.streams.STREAMS")
    if stream in MEASURED:
        return seed + MEASURED[stream]
    return int(np.random.SeedSequence([seed, STREAMS.index(stream)]).generate_state(1)[0])
