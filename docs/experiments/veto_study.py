"""Can a learned scorer drop the safe lookalikes without losing the attack? Three ways of using labelled lookalikes
over the teacher's features at the filter's layers (the last token of the prompt template), on the features
`scorer_study.py` cached, plus two sets of harmful requests of the attack's kind read here:

- a probe (reft_jax.refusal.probe.fit_probe, the product's) on the pool's train split plus n lookalikes;
- the same, with the alignment data's harmful requests on its harmful side;
- a veto: the paper's cosine flags, and a probe trained to tell harmful requests from lookalikes (harmful: the pool's
  train split and CoCoNot's harmful train part; safe: the lookalike train parts) lifts the flag of the prompts it
  places below its tau_p (0.95 recall of the calibration parts' harmful requests: the pool's calibration split,
  CoCoNot's calibration part and safety-tuned-llamas rows the teacher never saw).

    python docs/experiments/veto_study.py WORKDIR STUDY_OUT.json OUT.json [--config.a.b=value ...]

WORKDIR: the teacher's workdir of the scorer study; STUDY_OUT.json: that study's OUT.json (its features are read from
STUDY_OUT.teacher.template.npz). The product's tau everywhere: 0.99 recall of the calibration split's harmful
prompts, capped at 20 % of its harmless ones (lookalikes among them where the scorer trains on some). Figures on
the user data (the research mixture) and on the study's test parts, which no scorer or tau saw.
"""

import json
import sys
from pathlib import Path

import numpy as np

from reft_jax import load_config, refusal
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import load_stage_model
from reft_jax.refusal import scoring
from reft_jax.refusal.probe import fit_probe
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import model_dir

LOOKALIKES_TEST = ("orbench_test", "contrast_test")
HARMFUL_TEST = ("coconot_harmful_test", "harmbench_val")
LOOKALIKES_TRAIN = ("orbench_train", "pref_train")


def attack_kind_features(ctx, out: Path) -> dict[str, np.ndarray]:
    """[N, L, D] features of the alignment data's harmful requests and of 256 safety-tuned-llamas requests outside
    it (the attack's conversational kind; cached beside OUT)."""
    cache = out.with_suffix(".attack_kind.npz")
    if cache.exists():
        return dict(np.load(cache))
    seen = {ex["request"] for ex in ctx.alignment_examples} | set(ctx.teacher_requests)
    rows = ctx.load_examples(ctx.cfg.data.alignment.harmful, harmful=True)
    extra = sorted({ex["request"] for ex in rows} - seen)
    extra = [extra[i] for i in sorted(np.random.default_rng(0).choice(len(extra), 256, replace=False))]
    sets = {"align_harmful": [ex["request"] for ex in ctx.alignment_examples if ex.get("harmful")],
            "safety_extra": extra}
    layers = tuple(json.loads(ctx.workdir.filter_settings.read_text())["layers"])
    frozen = FrozenModel.of(load_stage_model(model_dir(ctx.workdir.teacher), ctx.cfg, "teacher"))
    feats = {}
    for name, requests in sets.items():
        path = out.with_suffix(f".{name}.jsonl")
        path.write_text("".join(json.dumps({"instruction": q, "output": ""}) + "\n" for q in requests))
        ds = ctx.tokenize(ctx.load_examples(str(path), with_response=False, harmful=True), name)
        f = scoring.prompt_features(frozen, ds, layers, batch_size=32, buckets=list(ctx.cfg.data.buckets),
                                    progress=True, desc=name)
        feats[name] = np.moveaxis(f, 0, 1)
    np.savez(cache, **feats)
    return feats


def main(workdir: str, study_out: str, out: str, *overrides: str) -> dict:
    ctx = RunContext.create(load_config("configs/smollm2.py", list(overrides)), workdir)
    feats = dict(np.load(Path(study_out).with_suffix(".teacher.template.npz")))
    feats.update(attack_kind_features(ctx, Path(out)))
    labels = {f"split:{name}": np.asarray(p.ds.harmful) == 1 for name, p in ctx.refusal_prompts.items()}
    labels["user"] = np.asarray(ctx.user.harmful) == 1
    harmful_sets = {"coconot_harmful_train", "coconot_harmful_calibration", "coconot_harmful_test", "harmbench_val",
                    "align_harmful", "safety_extra"}
    for name in feats:
        labels.setdefault(name, np.full(len(feats[name]), name in harmful_sets))

    def take(name, n=None, seed=0):
        x, y = feats[name], labels[name]
        if n is not None and n < len(x):
            i = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
            x, y = x[i], y[i]
        return x, y

    def cat(*parts):
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def harmful_of(part):
        return part[0][part[1]], part[1][part[1]]

    def product_tau(scores, y):
        return refusal.cap_false_positives(refusal.calibrate_threshold(scores, y, 0.99), scores, y, 0.2)

    def layers_first(x):
        return np.moveaxis(x, 1, 0)

    train, cal = take("split:train"), take("split:calibration")
    r = np.asarray(refusal.layer_directions(layers_first(train[0]), train[1]))

    def cosine(x):
        return np.asarray(refusal.mean_cosine_scores(layers_first(x), r))

    tau_cosine = product_tau(cosine(cal[0]), cal[1])
    user_x, user_y = take("user")
    looks, harms = cat(*map(take, LOOKALIKES_TEST)), cat(*map(take, HARMFUL_TEST))

    def row(flag, score=None) -> dict:
        out = {"user_recall": flag(user_x)[user_y].mean(), "task_rows_flagged": flag(user_x)[~user_y].mean(),
               "lookalikes_flagged": flag(looks[0]).mean(), "harmful_recall": flag(harms[0]).mean(),
               "harmbench_recall": flag(feats["harmbench_val"]).mean()}
        if score is not None:
            both = cat(looks, harms)
            out.update(user_auroc=refusal.auroc(score(user_x), user_y),
                       lookalike_vs_harmful_auroc=refusal.auroc(score(both[0]), both[1]))
        return {k: float(v) for k, v in out.items()}

    rows = {"cosine (the paper's)": row(lambda x: cosine(x) > tau_cosine, cosine)}

    def probe_row(name, train_parts, cal_parts):
        x, y = cat(*train_parts)
        cx, cy = cat(*cal_parts)
        probe = fit_probe(layers_first(x), y, layers_first(cx), cy)
        tau = product_tau(probe.scores(layers_first(cx)), cy)

        def score(z):
            return probe.scores(layers_first(z))
        rows[f"{name} (C {probe.C:g})"] = row(lambda z: score(z) > tau, score)

    for n in (32, 128, 512):
        lookalikes = [take(s, n // 2, seed) for seed, s in enumerate(LOOKALIKES_TRAIN)]
        cal_parts = (cal, take("orbench_val", max(n // 4, 32)))
        probe_row(f"probe, pool + {n} lookalikes", (train, *lookalikes), cal_parts)
        if n == 128:
            probe_row(f"probe, pool + {n} lookalikes + alignment harmful", (train, *lookalikes, take("align_harmful")),
                      cal_parts)

    def veto_row(name, harmful_train, safe_train, harmful_cal, safe_cal):
        x, y = cat(*harmful_train, *safe_train)
        cx, cy = cat(*harmful_cal, *safe_cal)
        probe = fit_probe(layers_first(x), y, layers_first(cx), cy)
        tau_p = refusal.calibrate_threshold(probe.scores(layers_first(cx)), cy, 0.95)

        def flag(z):
            return (cosine(z) > tau_cosine) & (probe.scores(layers_first(z)) > tau_p)
        rows[f"{name} (C {probe.C:g})"] = row(flag)

    pool_harmful, cal_harmful = harmful_of(train), harmful_of(cal)
    veto_row("veto, all lookalike train parts",
             (pool_harmful, take("coconot_harmful_train")),
             (*map(take, LOOKALIKES_TRAIN), take("contrast_train")),
             (cal_harmful, take("coconot_harmful_calibration"), take("safety_extra")),
             (take("orbench_val"), take("contrast_calibration")))
    veto_row("veto, all lookalike train parts, calibrated without the attack's kind",
             (pool_harmful, take("coconot_harmful_train")),
             (*map(take, LOOKALIKES_TRAIN), take("contrast_train")),
             (cal_harmful, take("coconot_harmful_calibration")),
             (take("orbench_val"), take("contrast_calibration")))
    coconot = cat(take("coconot_harmful_train"), take("coconot_harmful_calibration"))
    safe = cat(*map(take, LOOKALIKES_TRAIN))
    for n in (32, 64, 88):  # what pool-sized splits (n a side) would hold
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            h, s = rng.permutation(len(coconot[0])), rng.permutation(len(safe[0]))
            veto_row(f"veto, {n} a side, draw {seed}",
                     (pool_harmful, (coconot[0][h[:n]], coconot[1][h[:n]])), ((safe[0][s[:n]], safe[1][s[:n]]),),
                     (cal_harmful, (coconot[0][h[n:2 * n]], coconot[1][h[n:2 * n]])),
                     ((safe[0][s[n:2 * n]], safe[1][s[n:2 * n]]),))
    for name, figures in rows.items():
        print(f"{name:58s} " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()), flush=True)
    result = {"tau_cosine": float(tau_cosine), "rows": rows}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:])
