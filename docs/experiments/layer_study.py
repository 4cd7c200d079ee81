"""The refusal direction at every layer, of the trained teacher and of the base model, on prompts no training or
calibration saw.

    python docs/experiments/layer_study.py WORKDIR HELDOUT_DIR OUT.json [--config.a.b=value ...]

WORKDIR: a workdir whose teacher stage is done (configs/smollm2.py; the same overrides as its run).
HELDOUT_DIR: labelled JSONL files ({"prompt", "harmful"}), as for filter_study.py.

For each model and each hidden-state index l: R_l = difference in means over the train split (what the teacher
stage computes), cosine scores of every set, their AUROC, and tau by the config's rule (filter.calibrate_recall on
the calibration split, harmless flagged capped at filter.calibrate_max_fpr) with the recall and harmless share it
flags on each set. "mean[a:b]" rows score a prompt by the mean of its cosines over layers a..b-1, each with its
own R_l and the same tau rule. Writes them to OUT.json and prints a table.
"""

import json
import sys
from pathlib import Path

import numpy as np

from reft_jax import load_config, refusal
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import base_model, load_stage_model
from reft_jax.refusal import scoring
from reft_jax.runtime.state import FrozenModel
from reft_jax.runtime.workdir import model_dir

WINDOWS = ((6, 12), (9, 15), (12, 18), (15, 21), (9, 21), (6, 24))


def main(workdir: str, heldout: str, *overrides: str) -> dict:
    ctx = RunContext.create(load_config("configs/smollm2.py", list(overrides)), workdir)
    cfg = ctx.cfg
    sets = {f"split:{name}": p.ds for name, p in ctx.refusal_prompts.items()}
    sets["user"] = ctx.user
    for path in sorted(Path(heldout).glob("*.jsonl")):
        sets[path.stem] = ctx.tokenize(ctx.load_examples(str(path), with_response=False), path.stem)
    models = {"teacher": lambda: load_stage_model(model_dir(ctx.workdir.teacher), cfg, "teacher"),
              "base": lambda: base_model(cfg, ctx.vocab)}
    out = {}
    for name, make in models.items():
        model = make()
        layers = tuple(range(1, model.cfg.num_layers + 1))
        frozen = FrozenModel.of(model)
        feats = {k: scoring.prompt_features(frozen, ds, layers, batch_size=32, buckets=list(cfg.data.buckets),
                                            progress=False, desc=k) for k, ds in sets.items()}
        labels = {k: np.asarray(ds.harmful) == 1 for k, ds in sets.items()}
        cos = {}  # layer -> set -> scores
        for j, layer in enumerate(layers):
            r = np.asarray(refusal.refusal_feature(feats["split:train"][j], labels["split:train"]))
            cos[layer] = {k: np.asarray(refusal.cosine_scores(f[j], r), np.float32) for k, f in feats.items()}
        rows = {str(layer): summary(cos[layer], labels, cfg) for layer in layers}
        for a, b in WINDOWS:
            mean = {k: np.mean([cos[layer][k] for layer in range(a, b)], axis=0) for k in sets}
            rows[f"mean[{a}:{b}]"] = summary(mean, labels, cfg)
        out[name] = rows
        del model, frozen, feats
    return out


def summary(scores: dict, labels: dict, cfg) -> dict:
    cal = "split:calibration"
    tau = refusal.calibrate_threshold(scores[cal], labels[cal], cfg.filter.calibrate_recall)
    tau = refusal.cap_false_positives(tau, scores[cal], labels[cal], cfg.filter.calibrate_max_fpr)
    row = {"tau": tau}
    for k, s in scores.items():
        m = refusal.binary_metrics(s > tau, labels[k])
        row[k] = {"auroc": refusal.auroc(s, labels[k]), "recall": m["recall"],
                  "harmless_flagged": m["flagged_harmless_share"]}
    return row


def table(out: dict) -> str:
    names = ["split:check", "user", "imperative", "questions", "lookalikes"]
    lines = ["model layer tau | " + " | ".join(f"{n} AUROC/recall/fp" for n in names)]
    for model, rows in out.items():
        for layer, row in rows.items():
            cells = [f"{row[n]['auroc']:.3f}/{row[n]['recall']:.2f}/{row[n]['harmless_flagged']:.2f}"
                     for n in names if n in row]
            lines.append(f"{model} {layer} {row['tau']:+.3f} | " + " | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    workdir, heldout, out, *overrides = sys.argv[1:]
    result = main(workdir, heldout, *overrides)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
