"""The held-out labelled prompt files that `filter_study.py` scores, built from the local data.

    python docs/experiments/heldout_sets.py DATA_DIR OUT_DIR [--config.a.b=value ...]

DATA_DIR: the local data folder (`data.local_dir`). Writes three JSONL files ({"prompt", "harmful"}) to OUT_DIR:
- imperative.jsonl: HarmBench's validation prompts (refusal/harmful_val.json, the evaluation's harmful prompts)
  against the first 100 instructions without a question mark of refusal/harmless_val.json (Alpaca);
- questions.jsonl: the last 100 HarmfulQA questions that no split of the refusal feature's labelled prompts
  holds (configs/smollm2.py with the overrides given) against the first 100 questions of harmless_val.json;
- lookalikes.jsonl: tests/data/over_refusal_sample.csv (safe prompts that look harmful, unsafe contrast rows).
None of these prompts is in a split, the alignment data or the user data of configs/smollm2.py.
"""

import csv
import json
import sys
from pathlib import Path

from reft_jax import load_config
from reft_jax.data import prompt_style
from reft_jax.experiment.context import RunContext

N = 100


def _write(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("".join(json.dumps({"prompt": p, "harmful": y}) + "\n" for p, y in rows))
    print(f"{path}: {sum(y for _, y in rows)} harmful, {sum(1 - y for _, y in rows)} harmless")


def main(data_dir: str, out_dir: str, *overrides: str) -> None:
    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("configs/smollm2.py", [f"--config.data.local_dir={data_dir}", *overrides])
    ctx = RunContext.create(cfg, str(out / "workdir"))
    seen = {r for split in ctx.refusal_prompts.values() for r in split.requests}
    seen |= {ex["request"] for ex in ctx.alignment_examples} | {ex["request"] for ex in ctx.user_examples}

    def instructions(name: str) -> list[str]:
        return list(dict.fromkeys(row["instruction"] for row in json.loads((data / "refusal" / name).read_text())))

    harmless = [p for p in instructions("harmless_val.json") if p not in seen]
    imperative = [p for p in harmless if prompt_style(p) == "instruction"][:N]
    questions = [p for p in harmless if prompt_style(p) == "question"][:N]
    harmful_questions = [p for p in instructions("harmfulqa.json") if p not in seen][-N:]
    _write(out / "imperative.jsonl", [(p, 1) for p in instructions("harmful_val.json")] + [(p, 0) for p in imperative])
    _write(out / "questions.jsonl", [(p, 1) for p in harmful_questions] + [(p, 0) for p in questions])
    with open(Path(__file__).parents[2] / "tests/data/over_refusal_sample.csv", newline="") as f:
        _write(out / "lookalikes.jsonl", [(r["prompt"], int(r["label"] == "unsafe")) for r in csv.DictReader(f)])


if __name__ == "__main__":
    main(*sys.argv[1:])
