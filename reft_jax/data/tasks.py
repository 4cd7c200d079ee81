"""User tasks (SST2, AGNEWS, GSM8K, AlpacaEval, or any mapped file): their fixed instructions, their labels and
the answer extraction that scores generated answers (finetune accuracy)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from reft_jax.data.sources import SourceSpec
from reft_jax.errors import ConfigError, DataError

def _first_label(labels: Sequence[str]) -> Callable[[str], str | None]:
    """Classification answers: the class name that occurs first in the answer (case-insensitive)."""
    patterns = [(name, re.compile(rf"(?<![\w/]){re.escape(name)}(?![\w/])", re.IGNORECASE)) for name in labels]

    def extract(text: str) -> str | None:
        hits = [(m.start(), name) for name, pat in patterns if (m := pat.search(text))]
        return min(hits)[1] if hits else None

    return extract


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL = re.compile(r"final answer is:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def normalize_number(text: str) -> str:
    """'1,000.00' -> '1000'; '-3.50' -> '-3.5'."""
    text = text.replace(",", "").strip()
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def extract_number(text: str) -> str | None:
    """GSM8K answers: the number after 'The final answer is', else the last number in the text."""
    m = _FINAL.search(text)
    if m:
        return normalize_number(m.group(1))
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def extract_exact(text: str) -> str | None:
    """Short answers: the first line, stripped, lower-cased, without a final period."""
    line = text.strip().split("\n", 1)[0].strip().rstrip(".").strip().lower()
    return line or None


def _gsm8k_record(rec: dict) -> dict:
    # "... reasoning\n#### 72" -> "... reasoning\nThe final answer is: 72", label "72".
    reasoning, sep, final = rec["output"].rpartition("####")
    if not sep:
        raise DataError(f"{rec['source']}: GSM8K answer has no '#### <number>' line")
    label = normalize_number(final)
    return {**rec, "output": f"{reasoning.rstrip()}\nThe final answer is: {label}", "label": label}


@dataclasses.dataclass(frozen=True)
class Task:
    """A user task: how its records become (instruction, input, output, label) and how answers score.

    instruction: the fixed instruction of a classification task (the record's text becomes the input);
      None keeps the record's own instruction.
    labels: class names; an integer label i means labels[i]; the class name is the target answer.
    """

    name: str
    source: SourceSpec | None = None  # the hub default
    instruction: str | None = None
    labels: tuple[str, ...] | None = None
    extract: Callable[[str], str | None] = extract_exact
    transform: Callable[[dict], dict] | None = None
    label_from_output: bool = True  # exact-match tasks: the reference answer is the label

    @property
    def required(self) -> tuple[str, ...]:
        return ("label",) if self.instruction else ("instruction", "output")

    def record(self, rec: dict) -> dict:
        if self.instruction:
            text = rec["input"] or rec["instruction"] or ""
            if not text.strip():
                raise DataError(f"{rec['source']}: no text to classify (map 'input' to the text column)")
            rec = {**rec, "instruction": self.instruction, "input": text.strip(), "output": rec["label"]}
        if self.transform:
            rec = self.transform(rec)
        if self.label_from_output and rec["label"] is None and rec["output"] is not None:
            rec = {**rec, "label": rec["output"].strip()}
        return rec


SST2_LABELS = ("negative", "positive")
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")

TASKS: dict[str, Task] = {
    "sst2": Task(
        "sst2",
        SourceSpec("stanfordnlp/sst2", split="train", fields={"input": "sentence", "label": "label"}),
        instruction="Analyze the sentiment of the input, and respond only positive or negative",
        labels=SST2_LABELS,
        extract=_first_label(SST2_LABELS),
    ),
    "agnews": Task(
        "agnews",
        SourceSpec("fancyzhx/ag_news", split="train", fields={"input": "text", "label": "label"}),
        instruction=(
            "Categorize the news article given in the input into one of the 4 categories:\n\n"
            + "\n".join(AGNEWS_LABELS)
            + "\n"
        ),
        labels=AGNEWS_LABELS,
        extract=_first_label(AGNEWS_LABELS),
    ),
    "gsm8k": Task(
        "gsm8k",
        SourceSpec("openai/gsm8k", name="main", split="train", fields={"instruction": "question", "output": "answer"}),
        extract=extract_number,
        transform=_gsm8k_record,
    ),
    # Helpfulness prompts: no exact answer (the literature scores them with a judge).
    "alpaca_eval": Task("alpaca_eval", extract=lambda text: None, label_from_output=False),
    # Any mapped file of instruction -> short answer, scored by exact match.
    "custom": Task("custom"),
}


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ConfigError(f"data.task: unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]


def extract_label(task: str | Task, text: str) -> str | None:
    """The answer a generated text gives for `task` (None when it gives none)."""
    return get_task(task).extract(text)


def accuracy(task: str | Task, predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Share of generated texts whose extracted answer equals the label (finetune accuracy)."""
    task = get_task(task)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return 0.0
    # The label goes through the same extraction, so "Positive." matches "positive" and "1,000" "1000".
    hits = 0
    for pred, label in zip(predictions, labels):
        answer = task.extract(pred)
        hits += answer is not None and answer == task.extract(label)
    return hits / len(labels)
