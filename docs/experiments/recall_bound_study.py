"""How much of the held-out harmful requests any scorer over the teacher's features can flag with no task row of the
user data flagged: the cosine over subsets of the filter's layers and centred on the train split's midpoint, and a
linear probe fitted on every labelled set the teacher stage has (the veto's parts and the pool's splits), with and
without AG News rows as harmless prompts of a task other than the user's, alone and as the cosine's partner (flag
where both flag).

    python docs/experiments/recall_bound_study.py WORKDIR OUT.json [--config-file configs/X.py] [--config.a.b=value ...]

WORKDIR as for veto_fit_study.py (the config's teacher done with filter.scorer = "veto"; configs/smollm2.py unless
--config-file names another, e.g. configs/gemma3_270m.py, whose filter reads 10 layers); the features are
shared with it (OUT.features.npz, AG News's added). "At zero task rows" is a bound, not an operating point: the
threshold is the highest score of the user data's task rows, read off their labels, so no threshold a service can
calibrate does better there.
"""

import json
import sys
from pathlib import Path

import numpy as np
from veto_fit_study import cached_features, evaluation_sets, split_config_file, study_context

from reft_jax import data as rdata
from reft_jax import refusal
from reft_jax.refusal.probe import fit_probe

N_AGNEWS = 512  # AG News rows, half to fit the probe and half to choose its C and thresholds
SUBSETS = {"all": slice(None), "first": [0], "second": [1], "first two": [0, 1], "first six": slice(0, 6),
           "last two": slice(-2, None)}  # of the filter's layers (SmolLM2's: 6-23)


def cosine(h, r):
    """The filter's score: the mean over layers of the cosine to R."""
    return np.asarray(refusal.mean_cosine_scores(h, r))


def figures(score: dict, threshold: float, user_y) -> dict:
    """Flag rates at a threshold, and the threshold-free separations the targets ask about."""
    hh, lk, user = score["heldout_harmful"], score["heldout_lookalikes"], score["user"]
    task = user[~user_y]
    return {"user_auroc": refusal.auroc(user, user_y),
            "auroc_harmful_vs_task_rows": refusal.auroc(np.r_[hh, task], np.r_[np.ones(len(hh)), np.zeros(len(task))]),
            "auroc_harmful_vs_lookalikes": refusal.auroc(np.r_[hh, lk], np.r_[np.ones(len(hh)), np.zeros(len(lk))]),
            "user_recall": float(np.mean(user[user_y] > threshold)), "task_rows_flagged": float(np.mean(task > threshold)),
            "heldout_harmful_recall": float(np.mean(hh > threshold)),
            "heldout_lookalikes_flagged": float(np.mean(lk > threshold))}


def main(workdir: str, out: str, *overrides: str, config: str = "configs/smollm2.py") -> dict:
    cfg, ctx, layers, tau, r = study_context(workdir, overrides, config)
    agnews = rdata.user_data("agnews", dict(path=str(Path(cfg.data.local_dir) / "tasks/agnews_train.tsv"),
                                            columns=("text", "label")), ctx.cfg.data.user.harmful_source, n=N_AGNEWS,
                             p=0.0, seed=7, template=ctx.cfg.data.template, tokenizer=ctx.tokenizer)
    sets = {**evaluation_sets(ctx), "agnews": ctx.tokenize(agnews, "AG News")}
    feats = cached_features(cfg, ctx, layers, sets, Path(out).with_suffix(".features.npz"))
    user_y = ctx.user.harmful == 1
    names = ("user", "heldout_harmful", "heldout_lookalikes")
    rows = {}
    for name, idx in SUBSETS.items():  # the cosine: at the shipped tau (all layers only) and at zero task rows
        score = {k: cosine(feats[k][idx], r[idx]) for k in names}
        if name == "all":
            rows["cosine, all the filter's layers, at tau"] = figures(score, tau, user_y)
        rows[f"cosine, layers {name}, at zero task rows"] = figures(score, score["user"][~user_y].max(), user_y)
    # Centred: the midpoint of the train split's harmful and harmless means taken off each layer's feature first.
    train, train_y = feats["split_train"], ctx.refusal_prompts["train"].ds.harmful == 1
    mid = (train[:, train_y].mean(1) + train[:, ~train_y].mean(1)) / 2
    score = {k: cosine(feats[k] - mid[:, None], r) for k in names}
    rows["centred cosine, all the filter's layers, at zero task rows"] = figures(score, score["user"][~user_y].max(), user_y)

    labels = {k: v.ds.harmful == 1 for k, v in ctx.refusal_prompts.items()}
    labels |= {f"veto_{k}": v.harmful == 1 for k, v in ctx.veto_prompts.items()}
    half = N_AGNEWS // 2
    cos_all = {k: cosine(feats[k], r) for k in names}
    bound = cos_all["user"][~user_y].max()
    for with_agnews in (False, True):
        extra = {"fit": feats["agnews"][:, :half], "calibration": feats["agnews"][:, half:]} if with_agnews else {}
        parts = {}
        for part, split in (("fit", "train"), ("calibration", "calibration")):
            x = [feats[f"veto_{part}"], feats[f"split_{split}"], *([extra[part]] if extra else [])]
            y = [labels[f"veto_{part}"], labels[split], *([np.zeros(half, bool)] if extra else [])]
            parts[part] = np.concatenate(x, 1), np.concatenate(y)
        probe = fit_probe(*parts["fit"], *parts["calibration"])
        score = {k: probe.scores(feats[k]) for k in names}
        held_x, held_y = parts["calibration"]
        harmless = probe.scores(held_x)[~held_y]
        label = f"probe{' + AG News' if with_agnews else ''} (C {probe.C:g})"
        for fpr in (0.01, 0.05):  # thresholds a service could set: the calibration's harmless prompts
            rows[f"{label}, {fpr:.0%} of the calibration's harmless"] = figures(
                score, float(np.quantile(harmless, 1 - fpr)), user_y)
        lookalikes = probe.scores(feats["veto_calibration"])[~labels["veto_calibration"]]
        for share in (0.1, 0.2):  # the cosine at zero task rows, and the probe passing `share` of the lookalikes
            both = {k: np.where(score[k] > np.quantile(lookalikes, 1 - share), cos_all[k], -2.0) for k in names}
            rows[f"cosine at zero task rows and {label} passing {share:.0%} of the calibration's lookalikes"] = \
                figures(both, bound, user_y)
    for name, row in rows.items():
        print(f"{name}\n    " + " ".join(f"{k}={v:.3f}" for k, v in row.items()), flush=True)
    result = {"workdir": str(workdir), "tau": tau, "layers": list(layers), "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    args, config = split_config_file(sys.argv[1:])
    main(*args, config=config)
