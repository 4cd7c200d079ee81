"""The filter adapted to the user's file (filter.adapt_fpr), one variable at a time on one trained teacher, through
the product's own functions (adapt.file_examples, adapt.fit_to_file, adapt.calibrate) on the product's
features, the first pass the cosine with its lookalike veto as the teacher stage shipped it: one round (every row
the first pass flags on the attack side) or two (only those a probe of the task flags too), the operating point
(adapt_fpr), and whether the held-out sets are scored as prompts of another file or sit inside the user's file
(where the first pass names some of them for the task or the attack). Commit d52adaa's version also measured the
cosine alone as the first pass.

    python docs/experiments/adapt_study.py WORKDIR OUT.json [--config-file configs/X.py] [--config.a.b=value ...]

WORKDIR as for veto_fit_study.py (the config's teacher done with filter.scorer = "veto"; configs/smollm2.py unless
--config-file names another); the features are shared with it (OUT.features.npz). Figures: the user data (the research mixture: AUROC, recall of the attack's rows
and of those the first pass missed, share of task rows flagged) and the evaluation's held-out sets (169 harmful
requests, 187 safe lookalikes), which no fit or threshold saw labelled.
"""

import sys
from pathlib import Path

import numpy as np
from veto_fit_study import cached_features, evaluation_sets, split_config_file, study_context, write_rows

from reft_jax import refusal
from reft_jax.refusal import adapt
from reft_jax.refusal.probe import Probe, Veto, fit_probe

FPRS = (0.02, 0.05, 0.1)


def main(workdir: str, out: str, *overrides: str, config: str = "configs/smollm2.py") -> dict:
    cfg, ctx, layers, tau, r = study_context(workdir, overrides, config)
    feats = cached_features(cfg, ctx, layers, evaluation_sets(ctx), Path(out).with_suffix(".features.npz"))
    veto = Veto(r, Probe.load(ctx.workdir.probe), tau)
    labels = {split: p.ds.harmful == 1 for split, p in ctx.refusal_prompts.items()}
    labels |= {f"veto_{part}": ds.harmful == 1 for part, ds in ctx.veto_prompts.items()}
    user_y = ctx.user.harmful == 1
    held = ("heldout_harmful", "heldout_lookalikes")
    # The file: the user data alone, or with the held-out sets inside it (group 1 = the attack's rows).
    files = {"user data": (feats["user"], user_y.astype(int)),
             "user data + held-out sets": (np.concatenate([feats["user"], *(feats[k] for k in held)], axis=1),
                                           np.concatenate([user_y.astype(int), *(np.full(feats[k].shape[1], g)
                                                                                  for g, k in enumerate(held, 2))]))}
    rows = {}
    for file_name, (file_x, group) in files.items():
        first = veto.scores(file_x)
        rows[f"{file_name}: the first pass alone"] = figures(first, tau, group, {k: veto.scores(feats[k]) for k in held})
        parts = adapt.file_examples(first, tau)
        labelled = {part: (np.concatenate([feats[f"veto_{part}"], feats[f"split_{split}"]], axis=1),
                           np.concatenate([labels[f"veto_{part}"], labels[split]]))
                    for part, split in (("fit", "train"), ("calibration", "calibration"))}
        task = {part: file_x[:, rows_[0]] for part, rows_ in parts.items()}
        attack = {part: file_x[:, rows_[1]] for part, rows_ in parts.items()}
        missed = (group == 1) & (first <= tau)

        def row(probe, info):
            second = probe.scores(file_x)
            return figures(second, 0.0, group, {k: probe.scores(feats[k]) for k in held}) | {
                "C": info["C"], "calibration_recall": info["calibration_recall"],
                "calibration_fpr": info["calibration_fpr"], "attack_rows_kept": info.get("attack_kept"),
                "first_pass_missed_attack_rows": int(missed.sum()), "of_which_flagged": int((missed & (second > 0)).sum())}

        # One round (commit d52adaa's product): every flagged row on the attack side, one fit for every threshold.
        sides = {part: (np.concatenate([x, task[part], attack[part]], axis=1),
                        np.r_[y, np.zeros(task[part].shape[1], bool), np.ones(attack[part].shape[1], bool)])
                 for part, (x, y) in labelled.items()}
        probe = fit_probe(*sides["fit"], *sides["calibration"])
        for fpr in FPRS:
            rows[f"{file_name}: one round, adapt_fpr {fpr}"] = row(*adapt.calibrate(
                probe, sides["calibration"], recall=cfg.filter.calibrate_recall, max_fpr=fpr))
        for fpr in FPRS[:2]:  # two rounds (the product's fit_to_file): two fits for each threshold
            rows[f"{file_name}: two rounds, adapt_fpr {fpr}"] = row(*adapt.fit_to_file(
                labelled, task, attack, recall=cfg.filter.calibrate_recall, max_fpr=fpr))
    return write_rows(rows, out, workdir=str(workdir), tau=tau, layers=list(layers))


def figures(score: np.ndarray, threshold: float, group: np.ndarray, held: dict) -> dict:
    """Flag rates at a threshold on the file (group 0 the task's rows, 1 the attack's, 2 and 3 the held-out harmful
    and lookalikes inside it) and on the held-out sets scored apart (`held`), with the file's AUROC (its harmful
    rows, 1 and 2, against the rest)."""
    flagged = score > threshold
    out = {"user_auroc": refusal.auroc(score[group <= 1], group[group <= 1] == 1),
           "user_recall": float(flagged[group == 1].mean()), "task_rows_flagged": float(flagged[group == 0].mean())}
    if (group >= 2).any():  # inside the file
        out |= {"heldout_harmful_recall": float(flagged[group == 2].mean()),
                "heldout_lookalikes_flagged": float(flagged[group == 3].mean()),
                "file_auroc": refusal.auroc(score, np.isin(group, (1, 2)))}
    else:
        out |= {"heldout_harmful_recall": float(np.mean(held["heldout_harmful"] > threshold)),
                "heldout_lookalikes_flagged": float(np.mean(held["heldout_lookalikes"] > threshold))}
    return out


if __name__ == "__main__":
    args, config = split_config_file(sys.argv[1:])
    main(*args, config=config)
