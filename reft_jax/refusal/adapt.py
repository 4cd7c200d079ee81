"""The filter adapted to one user file (filter.adapt_fpr > 0), host side.

A scorer fitted on the teacher stage's labelled prompts alone has never seen the user's task: on SmolLM2 a probe
that tells harmful requests from safe lookalikes (AUROC 0.98) flags most of an SST-2 file's rows at any threshold
that keeps its recall (docs/results.md, "What bounds the held-out harmful recall"). The file itself holds that
task, unlabelled. So the first pass (the teacher stage's scorer) names examples of it in the file: its rows the first
pass does not flag and scores in the lower half (`TASK_SHARE`) stand for the task, the rows it flags for the attack.
A probe over the same features is then fitted with them beside the labelled prompts (the pool's splits, data.veto's
parts), and its threshold set on the held-out halves for filter.calibrate_recall of the harmful prompts, capped at
filter.adapt_fpr of the harmless ones (the pool's, the lookalikes, the file's task rows): the operating point a
service states. It is fitted twice (`fit_to_file`): first with the task's rows alone, then with the attack rows
that first probe flags too. The second pass scores the whole file with it.

A row the first pass misses stays out of both sides unless it scores in the lower half; an attack written to look
like the task's rows can hide there from both passes, no worse than from the first.
"""

from __future__ import annotations

import numpy as np

from reft_jax.errors import ConfigError
from reft_jax.refusal.metrics import auroc, calibrate_threshold, cap_false_positives
from reft_jax.refusal.probe import Probe, fit_probe, fold_threshold

TASK_SHARE = 0.5  # the file's lowest-scored rows that may stand for its task: a file is mostly its task
MAX_ROWS = 1024  # of each side read from the file (features kept in memory: 1,024 x 18 layers x 576 floats = 42 MB)
MIN_TASK_ROWS = 16  # below this the file cannot teach its task: fewer than 8 rows a half
MARGIN = 0.05  # the threshold's place in the gap below the last calibration row it flags (rounding's margin)
SEED = 0  # the halves are drawn at random, the same each time for the same scores


def file_examples(score: np.ndarray, tau: float, *, max_rows: int = MAX_ROWS, seed: int = SEED) -> dict:
    """The file's rows that stand for its task and for the attack, by their first-pass score: {"fit": (task,
    attack), "calibration": (task, attack)}, positions into `score`, each side shuffled, at most `max_rows` of it
    read, and halved. The task's rows: not flagged (score <= tau) and below the median score."""
    score = np.asarray(score)
    task = np.flatnonzero((score <= tau) & (score < np.quantile(score, TASK_SHARE)))
    attack = np.flatnonzero(score > tau)
    rng = np.random.default_rng(seed)
    task, attack = (rng.permutation(rows)[:max_rows] for rows in (task, attack))
    return {part: (task[i::2], attack[i::2]) for i, part in enumerate(("fit", "calibration"))}


def require_task_rows(task: int, total: int) -> None:
    """A one-line error when the file gives fewer than MIN_TASK_ROWS rows to learn its task from."""
    if task < MIN_TASK_ROWS:
        raise ConfigError(f"filter.adapt_fpr: the user data gives {task} rows to learn its task from (unflagged, in "
                          f"the lower half of its scores; {total} rows in all), fewer than {MIN_TASK_ROWS}; set "
                          "filter.adapt_fpr=0 for a file this small")


def fit_to_file(labelled: dict, task: dict, attack: dict, *, recall: float, max_fpr: float) -> tuple[Probe, dict]:
    """The adapted probe, in two rounds, from features [K, N, D] by part ("fit", "calibration"): `labelled` the
    labelled prompts' (features, harmful), `task` and `attack` the file's rows that stand for each. The first
    round learns the task alone (labelled prompts and task rows); only the attack rows it flags then join the
    second round's harmful side: a row the first pass flagged but that reads as the task or a lookalike (on
    SmolLM2, the safe lookalikes inside a file; on Gemma 3, the task rows its weak first pass flags) does not
    teach the probe to flag its kind. Returns the second round's probe, `calibrate`d, with the first
    round's and the attack rows kept."""
    def sides(keep: dict) -> dict:
        out = {}
        for part, (x, y) in labelled.items():
            a = attack[part][:, keep[part]]
            out[part] = (np.concatenate([x, task[part], a], axis=1),
                         np.concatenate([np.asarray(y) == 1, np.zeros(task[part].shape[1], bool),
                                         np.ones(a.shape[1], bool)]))
        return out

    first, first_info = fit_adapted(sides({part: np.zeros(a.shape[1], bool) for part, a in attack.items()}), recall=recall,
                                    max_fpr=max_fpr)
    keep = {part: first.scores(a) > 0 if a.shape[1] else np.zeros(0, bool) for part, a in attack.items()}
    probe, info = fit_adapted(sides(keep), recall=recall, max_fpr=max_fpr)
    info |= {"first_round": first_info, "attack_kept": {part: int(k.sum()) for part, k in keep.items()}}
    return probe, info


def fit_adapted(sides: dict, *, recall: float, max_fpr: float) -> tuple[Probe, dict]:
    """A probe fitted on sides["fit"] = (features [K, N, D], harmful [N]), its C chosen on sides["calibration"]'s
    AUROC, and `calibrate`d there. Returns it (the threshold folded in) and what was chosen and measured."""
    probe = fit_probe(*sides["fit"], *sides["calibration"])
    return calibrate(probe, sides["calibration"], recall=recall, max_fpr=max_fpr)


def calibrate(probe: Probe, calibration: tuple, *, recall: float, max_fpr: float) -> tuple[Probe, dict]:
    """The probe's threshold on calibration = (features, harmful), folded into its offset (it flags where it scores
    > 0): set for `recall` of the harmful rows, raised to flag at most `max_fpr` of the harmless."""
    cx, cy = calibration[0], np.asarray(calibration[1]) == 1
    held = probe.scores(cx)
    tau = cap_false_positives(calibrate_threshold(held, cy, recall), held, cy, max_fpr)
    # As the cosine's tau, the highest threshold that meets the rule: just below the last row it must flag (the
    # file's task rows above its median, which calibration cannot hold, lie toward the harmful side of any gap).
    folded, threshold = fold_threshold(probe, held, tau, at=MARGIN)
    flagged = held > threshold
    info = {"C": probe.C, "threshold": threshold, "calibration_auroc": auroc(held, cy),
            "calibration_recall": float(flagged[cy].mean()), "calibration_fpr": float(flagged[~cy].mean())}
    return folded, info
