"""The Ref-Teacher filter of a trained teacher stage, measured on prompts no training or calibration saw.

    python docs/experiments/filter_study.py WORKDIR HELDOUT_DIR [--config.a.b=value ...]

WORKDIR: a workdir whose teacher stage is done (configs/smollm2.py; the same overrides as its run).
HELDOUT_DIR: labelled JSONL files ({"prompt", "harmful"}) to score, e.g. imperative.jsonl (HarmBench validation
against Alpaca instructions), questions.jsonl (HarmfulQA questions outside every split against Alpaca questions),
lookalikes.jsonl (safe prompts that look harmful, with unsafe contrast rows). Prints one JSON object: for the
shipped direction (filter.json) and for tau calibrated to recall targets on the calibration split and on the
train split (the prompts the regulariser trained on), and for the default rule (a recall target, then harmless
flagged capped at filter.calibrate_max_fpr, at several caps), the AUROC, recall, precision and flag rate on the user data
and on each held-out file.
"""

import json
import sys
from pathlib import Path

from reft_jax import load_config, refusal
from reft_jax.data import prompt_style
from reft_jax.experiment.context import RunContext
from reft_jax.refusal import scoring
from reft_jax.runtime.state import FrozenModel
from reft_jax.stages.ref_teacher_filter import filter_model, teacher_settings


def main(workdir: str, heldout: str, *overrides: str) -> dict:
    ctx = RunContext.create(load_config("configs/smollm2.py", list(overrides)), workdir)
    settings = teacher_settings(ctx.workdir)
    model, by, layers = FrozenModel.of(filter_model(ctx, settings)), settings["score_by"], settings["layers"]

    def score(ds):
        return scoring.score(model, ds, by, layers, batch_size=32, buckets=list(ctx.cfg.data.buckets), progress=False)

    sets = {"user": (score(ctx.user), ctx.user.harmful == 1, [prompt_style(ex["request"]) for ex in ctx.user_examples])}
    for path in sorted(Path(heldout).glob("*.jsonl")):
        examples = ctx.load_examples(str(path), with_response=False)
        ds = ctx.tokenize(examples, path.stem)
        sets[path.stem] = (score(ds), ds.harmful == 1, [prompt_style(ex["request"]) for ex in examples])
    taus = {"shipped": settings["tau"]}
    for split in ("calibration", "train"):
        if split in ctx.refusal_prompts:
            s = score(ctx.refusal_prompts[split].ds)
            labels = ctx.refusal_prompts[split].ds.harmful == 1
            for target in (0.9, 0.95, 0.99):
                taus[f"{split}@{target}"] = refusal.calibrate_threshold(s, labels, target)
            # the default rule: a recall target, then harmless flagged capped (filter.calibrate_max_fpr)
            for target in (0.95, 0.99):
                for cap in sorted({ctx.cfg.filter.calibrate_max_fpr, 0.05, 0.1, 0.2}):
                    taus[f"{split}@{target},fpr<={cap}"] = refusal.cap_false_positives(
                        taus[f"{split}@{target}"], s, labels, cap)
    out = {"direction": settings["direction"], "check": settings.get("check"), "taus": taus, "sets": {}}
    for name, (s, y, styles) in sets.items():
        entry = {"auroc": refusal.auroc(s, y), "by_style": refusal.auroc_by_style(s, y, styles)}
        for tau_name, tau in taus.items():
            m = refusal.binary_metrics(s > tau, y)
            entry[tau_name] = {"recall": m["recall"], "precision": m["precision"], "f1": m["f1"],
                               "harmless_flagged": m["flagged_harmless_share"]}
        out["sets"][name] = entry
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
