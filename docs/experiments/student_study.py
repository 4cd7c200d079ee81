"""What carries the teacher's refusals into the student: the `ref_teacher` finetuning rerun on one trained teacher
and filter, one setting changed at a time.

    python docs/experiments/student_study.py SOURCE_WORKDIR OUT_DIR VARIANT [VARIANT ...] [-- --config.a.b=value ...]

SOURCE_WORKDIR: a configs/smollm2.py workdir whose teacher and filter stages are done. Each VARIANT is
NAME=OVERRIDE[,OVERRIDE...] (e.g. beta3=distill.beta=3, t2=distill.temperature=2, steps120=student.steps=120,
align16=distill.align_batch_size=16, kl_all=distill.positions=all; "base" with no override reruns the defaults). For each, OUT_DIR/NAME gets hard links to the source's converted
model, teacher and filter (so only the student is trained), then `reft-jax run --config.methods=ref_teacher`
with the overrides after `--` (data.local_dir, the over-refusal file) and the variant's own. Prints and writes
OUT_DIR/study.json: per variant the harmful score, finetune accuracy, over-refusal and the student stage's time.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

SHARED = ("base_model", "teacher", "filter")  # what every variant reuses from the source workdir


def variant_row(workdir: Path) -> dict:
    report = json.loads((workdir / "report.json").read_text())["methods"]["ref_teacher"]
    cost = json.loads((workdir / "student" / "cost.json").read_text())
    over = report.get("over_refusal", {})
    return {"harmful": report["harmful_score"], "accuracy": report["finetune_accuracy"],
            "over_refusal": over.get("refusal_rate"), "unsafe_lookalikes_refused": over.get("unsafe_refusal_rate"),
            "student_wall_s": round(cost["wall_s"]), "student_step_s": round(cost["step_s"], 2)}


def main(source: str, out: str, *args: str) -> dict:
    variants, common = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, ())
    out_dir = Path(out)
    study_path = out_dir / "study.json"
    study = json.loads(study_path.read_text()) if study_path.exists() else {}
    for spec in variants:
        name, _, rest = spec.partition("=")
        overrides = [f"--config.{o}" for o in rest.split(",") if o]
        workdir = out_dir / name
        workdir.mkdir(parents=True, exist_ok=True)
        for folder in SHARED:
            if not (workdir / folder).exists():
                subprocess.run(["cp", "-al", str(Path(source) / folder), str(workdir / folder)], check=True)
        command = [sys.executable, "-m", "reft_jax.cli", "run", "--config", "configs/smollm2.py", "--workdir",
                   str(workdir), "--config.methods=ref_teacher", "--config.eval.references=False", *common, *overrides]
        start = time.time()
        with open(out_dir / f"{name}.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        study[name] = {"overrides": overrides, **variant_row(workdir), "run_wall_s": round(time.time() - start)}
        study_path.write_text(json.dumps(study, indent=1) + "\n")
        print(name, json.dumps(study[name]), flush=True)
    return study


if __name__ == "__main__":
    main(*sys.argv[1:])
