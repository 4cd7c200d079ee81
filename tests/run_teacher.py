"""Runs a tiny teacher training in its own process (for the kill-and-resume test).

usage: python run_teacher.py WORKDIR STEPS [PAUSE_AFTER]: with PAUSE_AFTER, sleeps once that many steps are
checkpointed, so that the test can kill the process at a known point.
"""

import sys
import time

from train_fixtures import small_config, synthetic_batch, tiny_model

from reft_jax.train import runs

workdir, steps = sys.argv[1], int(sys.argv[2])
pause_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
cfg = small_config(**{"teacher.steps": steps})
pool = [synthetic_batch(10_000 + i) for i in range(2)]


def batch_at(step):
    if pause_after is not None and step == pause_after:
        print("PAUSED", flush=True)  # `pause_after` steps are done and checkpointed (checkpoint.every divides it)
        time.sleep(600)
    return synthetic_batch(step)


runs.train_teacher(cfg, tiny_model(), workdir, batch_at, pool)
