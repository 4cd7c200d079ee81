"""The keyword refusal judge against CoCoNot pref's labelled answers (issue 45, item 4).

    python docs/experiments/judge_check.py DATA_DIR

DATA_DIR: the local data folder (`data.local_dir`) holding lookalike/coconot_pref.jsonl. Prints the judge's
accuracy, refusal recall and false-refusal rate on the development part (CoCoNot parts calibration and train, which
the judge was tuned on) and the held-out part (test) of:
- the safety rows ("Requests with safety concerns"), labelled by reading the answers
  (tests/data/coconot_pref_refusals.json): the figure the judge is held to;
- the safety rows and all rows with the file's own labels (chosen = compliance, rejected = refusal). Most rejected
  answers are plain compliance, so these figures mostly count answers the labels get wrong.
"""

import json
import sys
from pathlib import Path

from reft_jax.data.lookalikes import coconot_pref_answers
from reft_jax.data.parts import part_of
from reft_jax.evaluation.judges import KeywordRefusals, judge_accuracy

SAFETY = "Requests with safety concerns"
LABELS = Path(__file__).parents[2] / "tests/data/coconot_pref_refusals.json"


def main(data_dir: str) -> None:
    rows = [json.loads(line) for line in (Path(data_dir) / "lookalike/coconot_pref.jsonl").read_text().splitlines()]
    read = json.loads(LABELS.read_text())["refusals"]
    as_filed = {"chosen": set(), "rejected": {row["id"] for row in rows}}
    cases = [("safety rows, labels read", [r for r in rows if r["category"] == SAFETY], read),
             ("safety rows, file's labels", [r for r in rows if r["category"] == SAFETY], as_filed),
             ("all rows, file's labels", rows, as_filed)]
    for name, chosen_rows, labels in cases:
        for part, held_out in (("development", False), ("held out", True)):
            part_rows = [r for r in chosen_rows if (part_of(r["id"]) == "test") == held_out]
            prompts, answers, refuses = zip(*coconot_pref_answers(part_rows, labels))
            out = judge_accuracy(KeywordRefusals(), prompts, answers, refuses)
            print(f"{name:28s} {part:12s} rows {len(part_rows):4d}  accuracy {out['accuracy']:.4f} "
                  f"({out['num_correct']}/{out['n']})  refusal recall {out['refusal_recall']:.3f} "
                  f"({out['num_refusals']} refusals)  false refusals {out['false_refusal_rate']:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
