"""What the lookalike veto is fitted on, and its threshold: with and without the alignment data's harmful requests on
its harmful side (data.veto.alignment_harmful), at each filter.veto_recall, on one trained teacher, through the
product's own features, fitting (probe.fit_veto) and scores (Veto), so that only the veto changes between rows.

    python docs/experiments/veto_fit_study.py WORKDIR OUT.json [--config.a.b=value ...]

WORKDIR: a workdir of configs/smollm2.py whose teacher stage is done with filter.scorer = "veto" (the same overrides
as its run). The features of every set are read once from the teacher (cached beside OUT as OUT.features.npz).
Figures: the user data (the research mixture: recall of the attack's rows, share of task rows flagged, AUROC with
today's scores and with the earlier ones, a vetoed prompt at cosine - 2), the evaluation's held-out safe lookalikes
and harmful requests (the filter's flag rates), and what the veto chose on its calibration.
"""

import json
import sys
from pathlib import Path

import numpy as np

from reft_jax import load_config, refusal
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import load_stage_model
from reft_jax.refusal import scoring
from reft_jax.refusal.probe import Veto, fit_veto
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import model_dir

RECALLS = (0.95, 0.97, 0.98, 0.99)


def study_context(workdir: str, overrides=(), config: str = "configs/smollm2.py") -> tuple:
    """The run's context on WORKDIR with the teacher's filter settings: (cfg, ctx, layers, tau, R [len(layers), D])."""
    cfg = load_config(config, ["--config.filter.scorer=veto", *overrides])
    ctx = RunContext.create(cfg, workdir)
    settings = json.loads(ctx.workdir.filter_settings.read_text())
    layers, tau = tuple(settings["layers"]), float(settings["tau"])
    return cfg, ctx, layers, tau, np.load(ctx.workdir.refusal_feature).reshape(len(layers), -1)


def cached_features(cfg, ctx, layers, sets: dict, cache: Path) -> dict:
    """The teacher's features of each tokenized set at the filter's layers, read once and kept in `cache`; a set
    missing from the cache is read and added."""
    feats = dict(np.load(cache)) if cache.exists() else {}
    missing = {name: ds for name, ds in sets.items() if name not in feats}
    if missing:
        frozen = FrozenModel.of(load_stage_model(model_dir(ctx.workdir.teacher), cfg, "teacher"))
        feats.update({name: scoring.prompt_features(frozen, ds, layers, batch_size=cfg.filter.batch_size,
                                                    buckets=list(cfg.data.buckets), progress=True, desc=name)
                      for name, ds in missing.items()})
        np.savez(cache, **feats)
    return feats


def evaluation_sets(ctx) -> dict:
    """The sets every study here reads: the veto's parts, the pool's splits, the user data, the held-out sets."""
    over = ctx.eval_over_refusal
    return {**{f"veto_{part}": ds for part, ds in ctx.veto_prompts.items()},
            **{f"split_{name}": p.ds for name, p in ctx.refusal_prompts.items()}, "user": ctx.user,
            "heldout_harmful": ctx.tokenize(ctx.eval_harmful, "held-out harmful"),
            "heldout_lookalikes": ctx.tokenize(over.examples(), "held-out lookalikes")}


def main(workdir: str, out: str, *overrides: str) -> dict:
    cfg, ctx, layers, tau, r = study_context(workdir, overrides)
    veto, prompts = ctx.veto_prompts, ctx.refusal_prompts
    over = ctx.eval_over_refusal
    feats = cached_features(cfg, ctx, layers, evaluation_sets(ctx), Path(out).with_suffix(".features.npz"))
    aligned = {ex["request"] for ex in ctx.alignment_examples if ex["harmful"]}
    from_alignment = np.array([ex["request"] in aligned for ex in ctx.veto_examples["fit"]])
    user_y = ctx.user.harmful == 1
    lookalike_types = np.array(over.types)

    def with_pool(x, y, split):  # as the teacher stage: the pool's split's harmful prompts join the part
        harmful = prompts[split].ds.harmful == 1
        return np.concatenate([x, feats[f"split_{split}"][:, harmful]], 1), np.concatenate([y, harmful[harmful]])

    cx, cy = with_pool(feats["veto_calibration"], veto["calibration"].harmful == 1, "calibration")
    rows = {}
    for with_alignment in (False, True):
        keep = np.ones_like(from_alignment) if with_alignment else ~from_alignment
        x, y = with_pool(feats["veto_fit"][:, keep], (veto["fit"].harmful == 1)[keep], "train")
        grid = None
        for recall in RECALLS:  # C is chosen on the calibration's AUROC, the same at every recall: chosen once
            probe, info = fit_veto(x, y, cx, cy, recall, **({"grid": grid} if grid else {}))
            grid = (probe.C,)
            scorer = Veto(r, probe, tau)

            def flags(name):
                return scorer.scores(feats[name]) > tau

            user = scorer.scores(feats["user"])
            cosine = np.asarray(refusal.mean_cosine_scores(feats["user"], r))
            earlier = cosine - 2.0 * (probe.scores(feats["user"]) <= 0)
            looks = flags("heldout_lookalikes")
            name = f"{'with' if with_alignment else 'without'} the alignment data's harmful, veto_recall {recall}"
            rows[name] = {"C": info["C"], "fit_harmful": int(y.sum()), "calibration_auroc": info["calibration_auroc"],
                          "calibration_lookalikes_vetoed": info["calibration_lookalikes_vetoed"],
                          "user_recall": float((user > tau)[user_y].mean()),
                          "task_rows_flagged": float((user > tau)[~user_y].mean()),
                          "user_auroc": refusal.auroc(user, user_y), "user_auroc_earlier_scores":
                          refusal.auroc(earlier, user_y), "heldout_lookalikes_flagged": float(looks.mean()),
                          **{f"heldout_lookalikes_flagged_{t}": float(looks[lookalike_types == t].mean())
                             for t in sorted(set(lookalike_types))},
                          "heldout_harmful_recall": float(flags("heldout_harmful").mean())}
    cosine_flags = {name: np.asarray(refusal.mean_cosine_scores(feats[name], r)) > tau
                    for name in ("user", "heldout_lookalikes", "heldout_harmful")}
    rows["cosine (no veto)"] = {"user_recall": float(cosine_flags["user"][user_y].mean()),
                                "task_rows_flagged": float(cosine_flags["user"][~user_y].mean()),
                                "heldout_lookalikes_flagged": float(cosine_flags["heldout_lookalikes"].mean()),
                                "heldout_harmful_recall": float(cosine_flags["heldout_harmful"].mean())}
    return write_rows(rows, out, workdir=str(workdir), tau=tau, layers=list(layers))


def split_config_file(args: list[str], default: str = "configs/smollm2.py") -> tuple[list[str], str]:
    """The command line without `--config-file FILE`, and FILE (the config the teacher was trained with)."""
    args = list(args)
    if "--config-file" not in args:
        return args, default
    at = args.index("--config-file")
    config = args.pop(at + 1)
    args.pop(at)
    return args, config


def write_rows(rows: dict, out: str, **about) -> dict:
    """Prints each row's figures and writes them, with `about` (the workdir, tau, layers), to OUT.json."""
    for name, figures in rows.items():
        print(f"{name:62s} " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in figures.items()), flush=True)
    result = {**about, "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
