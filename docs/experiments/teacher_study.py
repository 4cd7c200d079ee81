"""What the teacher's training data does to its safety, its over-refusal and its filter: the teacher trained anew
for each variant, one setting changed at a time, then its filter run on the user data and the teacher and its
filter measured on the held-out evaluation sets (no student is trained).

    python docs/experiments/teacher_study.py SOURCE_WORKDIR OUT_DIR VARIANT [VARIANT ...] [-- --config.a.b=value ...]

SOURCE_WORKDIR: a configs/smollm2.py workdir whose model has been converted (its base_model folder is linked, not
converted again). Each VARIANT is NAME=OVERRIDE[,OVERRIDE...] (e.g. look128=data.alignment.n_lookalikes=128;
"base" with no override the committed defaults). For each, OUT_DIR/NAME runs `reft-jax train-teacher` and
`reft-jax filter` with the overrides after `--` (data.local_dir) and the variant's own, then `reft-jax evaluate`'s
measurement of the teacher alone (harmful score, over-refusal; no task accuracy). Prints and writes
OUT_DIR/study.json: per variant the teacher's harmful score and over-refusal with their intervals, the filter's
user-data AUROC and recall, its recall on the held-out harmful prompts, the held-out lookalikes it flags, and the
teacher stage's time.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

CLI = "import sys; from reft_jax.cli import main; sys.argv[0] = 'reft-jax'; sys.exit(main())"


def measure(workdir: str, *overrides: str) -> None:
    """The teacher alone and its filter, on the held-out evaluation sets (WORKDIR/eval/report.json)."""
    from reft_jax import load_config
    from reft_jax.experiment.context import RunContext
    from reft_jax.stages import evaluate

    cfg = load_config("configs/smollm2.py", ["--config.data.eval.n_task=0", *overrides])
    evaluate.run(RunContext.create(cfg, workdir), which=[], references=("teacher",))


def variant_row(workdir: Path) -> dict:
    report = json.loads((workdir / "eval" / "report.json").read_text())
    teacher, flt = report["references"]["teacher"], report["filter"]
    cost = json.loads((workdir / "teacher" / "cost.json").read_text())
    return {"teacher_harmful": teacher["harmful_score"], "teacher_harmful_ci": teacher["harmful_score_ci"],
            "teacher_over_refusal": teacher["over_refusal"]["refusal_rate"],
            "teacher_over_refusal_ci": teacher["over_refusal"]["refusal_rate_ci"],
            "filter_user_auroc": flt["auroc"], "filter_user_recall": flt["recall"],
            "filter_user_harmless_flagged": flt["flagged_harmless_share"],
            "filter_held_out_harmful_recall": flt["held_out_harmful"]["recall"],
            "filter_lookalikes_flagged": flt["over_refusal"]["flag_rate"],
            "scorer": flt.get("scorer"), "teacher_wall_s": round(cost["wall_s"])}


def main(source: str, out: str, *args: str) -> dict:
    variants, common = (args[:args.index("--")], list(args[args.index("--") + 1:])) if "--" in args else (args, [])
    out_dir = Path(out)
    study_path = out_dir / "study.json"
    study = json.loads(study_path.read_text()) if study_path.exists() else {}
    for spec in variants:
        name, _, rest = spec.partition("=")
        overrides = [*common, *(f"--config.{o}" for o in rest.split(",") if o)]
        workdir = out_dir / name
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "base_model").exists():
            subprocess.run(["cp", "-al", str(Path(source) / "base_model"), str(workdir / "base_model")], check=True)
        start = time.time()
        with open(out_dir / f"{name}.log", "a") as log:
            for command in ("train-teacher", "filter"):
                subprocess.run([sys.executable, "-c", CLI, command, "--config", "configs/smollm2.py", "--workdir",
                                str(workdir), *overrides], check=True, stdout=log, stderr=subprocess.STDOUT)
            subprocess.run([sys.executable, __file__, "--measure", str(workdir), *overrides], check=True, stdout=log,
                           stderr=subprocess.STDOUT)
        study[name] = {"overrides": overrides[len(common):], **variant_row(workdir),
                       "run_wall_s": round(time.time() - start)}
        study_path.write_text(json.dumps(study, indent=1) + "\n")
        print(name, json.dumps(study[name]), flush=True)
    return study


if __name__ == "__main__":
    if sys.argv[1] == "--measure":
        measure(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
