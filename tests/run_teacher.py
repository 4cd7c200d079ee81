"""Runs a tiny teacher training in its own process (for the kill-and-resume test).

usage: python run_teacher.py WORKDIR STEPS [PAUSE_AFTER]: with PAUSE_AFTER, sleeps once that many steps are
checkpointed, so that the test can kill the process at a known point. With DIE_IN_SAVE=STEP in the environment,
the process dies (os._exit) right after it starts writing that step's checkpoint: a kill in the middle of a write.
"""

import os
import sys
import time

from train_fixtures import small_config, synthetic_batch, tiny_model

from reft_jax.runtime.checkpoint import Checkpointer
from reft_jax.train import runs

workdir, steps = sys.argv[1], int(sys.argv[2])
pause_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
cfg = small_config(**{"teacher.steps": steps, "logging.tensorboard": False})  # tensorboardX imports torch: 2 s
pool = [synthetic_batch(10_000 + i) for i in range(2)]


if "DIE_IN_SAVE" in os.environ:
    save = Checkpointer.save

    def save_then_die(self, step, *args):
        save(self, step, *args)  # an asynchronous write, now under way
        if step == int(os.environ["DIE_IN_SAVE"]):
            os._exit(9)

    Checkpointer.save = save_then_die


def batch_at(step):
    if pause_after is not None and step == pause_after:
        print("PAUSED", flush=True)  # `pause_after` steps are done and checkpointed (checkpoint.every divides it)
        time.sleep(600)
    return synthetic_batch(step)


runs.train_teacher(cfg, tiny_model(), workdir, batch_at, pool)
