"""The data recipes shared by the harmful-finetuning literature, so that results are comparable.

- prompt templates: the Alpaca template (the default in Vaccine / Lisa / Booster / T-Vaccine style
  work) or the tokenizer's own chat template;
- tasks (SST2, AGNEWS, GSM8K, AlpacaEval, or any mapped file) with their fixed instructions and the
  label extraction used to score generated answers;
- the poisoned user mixture: n task samples of which a fraction p are harmful prompt -> harmful
  answer pairs, seeded;
- alignment data: harmful prompts with refusals plus harmless prompts with helpful answers.

An *example* is a plain dict:
    {"prompt": str (templated, ends right before the response), "request": str (the user's message in it),
     "response": str,
     "harmful": bool | None (the PROMPT is harmful), "label": str | None, "source": "file:line",
     "row": the source row as read, "response_spans": [(start, end), ...] (a multi-turn chat only: the
     characters of the response that are trained)}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np

from reft_jax.data.sources import SourceSpec, load_records
from reft_jax.errors import ConfigError, DataError

Example = dict[str, Any]

ALPACA = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat")

# Default harmful pairs: BeaverTails' unsafe (prompt, response) pairs; read only when asked for.
BEAVERTAILS = SourceSpec(
    path="PKU-Alignment/BeaverTails",
    split="30k_train",
    fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
    where={"is_safe": False},
)


# The literature's data, by role (sections of the `data` config): the hub datasets a user with internet gets,
# and the same roles as local files relative to one folder (`data.local_dir`), for offline machines.
LITERATURE_HUB = {
    # Harmful prompts with safe answers: BeaverTails' safe pairs, the alignment data of Vaccine / Booster / Lisa.
    "alignment": dict(
        harmful=dict(path="PKU-Alignment/BeaverTails", split="30k_train",
                     fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
                     where={"is_safe": True}),
        harmless=dict(path="tatsu-lab/alpaca", split="train"),
        # Harmful answers for RepNoise / Booster: BeaverTails' unsafe pairs of the split the attack does not use.
        harmful_pairs=dict(path="PKU-Alignment/BeaverTails", split="30k_test",
                           fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
                           where={"is_safe": False})),
    # The refusal pool: harmful requests in both styles (AdvBench's instructions, HarmfulQA's questions).
    "pool": dict(harmful=(dict(path="walledai/AdvBench", split="train"),
                          dict(path="declare-lab/HarmfulQA", split="train", fields={"instruction": "question"})),
                 harmless=dict(path="tatsu-lab/alpaca", split="train")),
    "eval": dict(harmful=dict(path="walledai/HarmBench", name="standard", split="train"),
                 task_source=dict(path="stanfordnlp/sst2", split="validation",
                                  fields={"input": "sentence", "label": "label"})),
}
LITERATURE_LOCAL = {
    "alignment": dict(harmful="alignment/safety_only_data_Instructions.json",
                      harmless="alignment/alpaca_eval_805.json",
                      harmful_pairs="attack/advbench.csv"),  # AdvBench goals -> affirmative answer openings
    "user": dict(source="tasks/sst2_train.tsv", harmful_source="attack/pure_bad_100.jsonl"),
    "pool": dict(harmful=("refusal/harmful_train.json", "refusal/harmfulqa.json"), harmless="refusal/harmless_train.json"),
    "eval": dict(harmful="refusal/harmful_val.json", task_source="tasks/sst2_dev.tsv"),
}


def format_prompt(
    instruction: str, input: str = "", *, template: str = "alpaca", tokenizer: Any = None, system: str | None = None
) -> str:
    """The text fed to the model before the response: Alpaca, or the tokenizer's chat template with
    the generation prompt (an input is appended to the user turn after a blank line)."""
    if template == "alpaca":
        if input:
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return ALPACA.format(instruction=instruction)
    if template == "chat":
        _check_chat_template(tokenizer)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user_message(instruction, input)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"data.template: unknown template {template!r} (known: {', '.join(TEMPLATES)})")


def user_message(instruction: str, input: str = "") -> str:
    """The user's turn of a chat: the instruction, and an input after a blank line."""
    return f"{instruction}\n\n{input}" if input else instruction


def _check_chat_template(tokenizer) -> None:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.template: 'chat' needs a tokenizer with a chat template")


# ---------------------------------------------------------------------------------------------------
# Tasks


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


# ---------------------------------------------------------------------------------------------------
# Examples


def load_examples(
    source: SourceSpec | str | Mapping[str, Any] | None = None,
    *,
    task: str | Task | None = None,
    harmful: bool | None = None,
    with_response: bool | None = True,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """Load a source as templated examples.

    task: apply a task's instruction / labels / answer format (and its hub dataset when source is
      None); None reads the records as instruction -> output.
    harmful: label every example (True for attack or refusal data, False for harmless data); None keeps
      the record's own `harmful` field (unknown if absent).
    with_response: False reads prompts only (response ""); None reads responses where the rows have them
      (a file of prompts alone is fine: its responses are "").
    """
    t = get_task(task) if task is not None else None
    if source is None:
        if t is None or t.source is None:
            raise ConfigError(f"data: no source given{'' if t is None else f' for task {t.name!r}'}")
        source = t.source
    if t is not None:
        required = t.required
    else:
        required = ("instruction", "output") if with_response is True else ("instruction",)
    records = load_records(source, required=required, label_names=t.labels if t else None)
    examples = []
    for rec in records:
        if t is not None:
            rec = t.record(rec)
        example = {
            "prompt": format_prompt(rec["instruction"], rec["input"], template=template, tokenizer=tokenizer),
            "request": user_message(rec["instruction"], rec["input"]),
            "response": (rec["output"] or "") if with_response is not False else "",
            "harmful": rec["harmful"] if harmful is None else harmful,
            "label": rec["label"],
            "source": rec["source"],
            "row": rec["row"],
        }
        turns = rec.get("messages")
        if with_response is not False and turns and sum(m["role"] == "assistant" for m in turns) > 1:
            example.update(conversation(turns, template=template, tokenizer=tokenizer, where=rec["source"]))
        examples.append(example)
    return examples


def conversation(messages: Sequence[dict], *, template: str, tokenizer: Any = None, where: str = "") -> Example:
    """A multi-turn chat as one example whose every assistant turn is trained: the prompt is the first user
    turn (where the refusal feature is read), the response the rest of the chat, and `response_spans` the
    character ranges of the response that are assistant turns (the user turns between them are context).

    With the chat template every turn is rendered by the tokenizer's template (the assistant turns with their
    end-of-turn tokens); with Alpaca each later exchange is one more Instruction / Response block."""
    first = next(j for j, m in enumerate(messages) if m["role"] == "user")
    last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
    if template == "alpaca":
        prompt = format_prompt(messages[first]["content"], template=template)
        parts, spans, length, pending = [], [], 0, ""
        for m in messages[first + 1: last + 1]:
            if m["role"] == "user":
                pending = f"\n\n### Instruction:\n{m['content']}\n\n### Response:\n"
            elif m["role"] == "assistant":
                parts += [pending, m["content"]]
                length += len(pending)
                spans.append((length, length + len(m["content"])))
                length += len(m["content"])
                pending = ""
        return {"prompt": prompt, "response": "".join(parts), "response_spans": spans}

    def render(turns, open_turn: bool) -> str:
        return tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=open_turn)

    _check_chat_template(tokenizer)
    prompt = render(messages[: first + 1], True)
    spans = []
    for k in range(first + 1, last + 1):
        if messages[k]["role"] != "assistant":
            continue
        before, through = render(messages[:k], True), render(messages[: k + 1], False)
        if not (through.startswith(before) and before.startswith(prompt)):
            raise DataError(f"{where}: the chat template does not render this conversation turn by turn "
                            "(an earlier turn's text changes when a later one is added)")
        spans.append((len(before) - len(prompt), len(through) - len(prompt)))
    full = render(messages[: last + 1], False)
    return {"prompt": prompt, "response": full[len(prompt):], "response_spans": spans}


def _sample(examples: Sequence[Example], k: int, rng: np.random.Generator, what: str) -> list[Example]:
    if k > len(examples):
        src = examples[0]["source"].rsplit(":", 1)[0] if examples else "(empty)"
        raise DataError(f"{src}: {len(examples)} {what} examples, {k} needed")
    return [examples[i] for i in sorted(rng.choice(len(examples), size=k, replace=False))]


def poisoned_mixture(
    task_examples: Sequence[Example],
    harmful_examples: Sequence[Example],
    *,
    n: int = 1000,
    p: float = 0.1,
    seed: int = 0,
) -> list[Example]:
    """The user data of the harmful-finetuning protocol: n examples, round(p * n) of them drawn from
    the harmful pairs and the rest from the task, without replacement, shuffled; same seed, same list.
    Every example carries `harmful` (True for the attack pairs) so the filter can be measured."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"data.p: {p} is not a fraction in [0, 1]")
    if n < 1:
        raise ConfigError(f"data.n: {n} should be at least 1")
    n_harmful = round(p * n)
    rng = np.random.default_rng(seed)
    for ex in harmful_examples:
        if ex["harmful"] is False:
            raise DataError(f"{ex['source']}: labelled harmless in the harmful source")
    harmful = [{**ex, "harmful": True} for ex in _sample(harmful_examples, n_harmful, rng, "harmful")]
    benign = [{**ex, "harmful": False} for ex in _sample(task_examples, n - n_harmful, rng, "task")]
    mixed = harmful + benign
    return [mixed[i] for i in rng.permutation(len(mixed))]


def alignment_mixture(
    harmful_examples: Sequence[Example],
    harmless_examples: Sequence[Example],
    *,
    n_harmful: int | None = None,
    n_harmless: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Alignment data: harmful prompts with refusals (harmful=True) and harmless prompts with helpful
    answers (harmful=False); n_* = None takes them all. Shuffled with the seed."""
    rng = np.random.default_rng(seed)
    harmful = _sample(harmful_examples, len(harmful_examples) if n_harmful is None else n_harmful, rng, "harmful")
    harmless = _sample(harmless_examples, len(harmless_examples) if n_harmless is None else n_harmless, rng, "harmless")
    mixed = [{**ex, "harmful": True} for ex in harmful] + [{**ex, "harmful": False} for ex in harmless]
    return [mixed[i] for i in rng.permutation(len(mixed))]


def refusal_pool(
    harmful_source: Any,
    harmless_source: Any,
    *,
    n_each: int = 128,
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """A labelled prompt pool: n_each harmful and n_each harmless prompts drawn at random (responses are not
    needed; files with prompts only are fine). The pipeline's splits of such prompts are `refusal_splits`."""
    return alignment_data(harmful_source, harmless_source, n_harmful=n_each, n_harmless=n_each, seed=seed,
                          template=template, tokenizer=tokenizer, with_response=False)


STYLES = ("instruction", "question")


def prompt_style(request: str) -> str:
    """The style of a user's message: "question" when it asks one (a question mark: "How do I ...? Keep it
    short."), else "instruction". The refusal pool is balanced over the two and the filter's figures are broken
    down by them, because a direction trained on one style can fail on the other."""
    return "question" if "?" in request else "instruction"


REFUSAL_SPLITS = ("train", "calibration", "check")


def refusal_splits(
    harmful_sources: Any,
    harmless_sources: Any,
    *,
    sizes: Mapping[str, int],
    exclude: Collection[str] = (),
    unseen: Collection[str] = (),
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> dict[str, list[Example]]:
    """The labelled prompts of the refusal feature, split three ways with no prompt in two splits:

    - "train": what R_l is computed over and the regulariser trains on (the refusal pool);
    - "calibration": what the filter's threshold tau is set on;
    - "check": held out from both, to compare the teacher's direction with the base model's.

    sizes: prompts per class of each split (a split of size 0 is empty). Each split takes the two prompt styles
    (`prompt_style`) in turn, so both are represented wherever the sources have both. A source may be one source
    or a list of them (read in order, duplicates dropped). `exclude`: requests no split may hold; `unseen`:
    requests only the train split may hold (the alignment data, which the teacher trains on). The check and
    calibration splits are drawn first."""
    rng = np.random.default_rng(seed)
    kw = dict(with_response=False, template=template, tokenizer=tokenizer)
    out = {name: [] for name in REFUSAL_SPLITS}
    for harmful, sources in ((True, harmful_sources), (False, harmless_sources)):
        examples, seen = [], set(exclude)
        for source in as_sources(sources):
            for ex in load_examples(source, harmful=harmful, **kw):
                if ex["request"] not in seen:
                    seen.add(ex["request"])
                    examples.append(ex)
        by_style = {style: [] for style in STYLES}
        for i in rng.permutation(len(examples)):
            by_style[prompt_style(examples[i]["request"])].append(examples[i])
        what = "harmful" if harmful else "harmless"
        for name in ("check", "calibration", "train"):
            allowed = {style: [ex for ex in exs if name == "train" or ex["request"] not in unseen]
                       for style, exs in by_style.items()}
            taken = _take_styles(allowed, sizes.get(name, 0), f"data.pool: {what} prompts for the {name} split")
            ids = {id(ex) for ex in taken}
            by_style = {style: [ex for ex in exs if id(ex) not in ids] for style, exs in by_style.items()}
            out[name] += [{**ex, "harmful": harmful} for ex in taken]
    return {name: [exs[i] for i in rng.permutation(len(exs))] for name, exs in out.items()}


def _take_styles(by_style: Mapping[str, list[Example]], n: int, what: str) -> list[Example]:
    """n examples taken from the styles in turn (the next style when one runs out)."""
    available = sum(len(exs) for exs in by_style.values())
    if n > available:
        raise DataError(f"{what}: {available} available (after leaving out the other splits, and the alignment "
                        f"data's prompts outside the train split), {n} needed")
    lists, taken, i = [list(exs) for exs in by_style.values()], [], 0
    while len(taken) < n:
        if lists[i % len(lists)]:
            taken.append(lists[i % len(lists)].pop(0))
        i += 1
    return taken


def user_data(
    task: str | Task = "sst2",
    task_source: Any = None,
    harmful_source: Any = BEAVERTAILS,
    *,
    n: int = 1000,
    p: float = 0.1,
    seed: int = 0,
    exclude: Collection[str] = frozenset(),
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """Loads a task and harmful pairs and returns their poisoned mixture (see `poisoned_mixture`), drawn without
    any example whose request is in `exclude` (the teacher's prompts: the filter is measured on prompts it never
    trained or calibrated on)."""
    kw = dict(template=template, tokenizer=tokenizer)
    task_examples = [ex for ex in load_examples(task_source, task=task, harmful=False, **kw)
                     if ex["request"] not in exclude]
    harmful_examples = [ex for ex in load_examples(harmful_source, harmful=True, **kw) if ex["request"] not in exclude]
    return poisoned_mixture(task_examples, harmful_examples, n=n, p=p, seed=seed)


def alignment_data(
    harmful_source: Any,
    harmless_source: Any,
    *,
    n_harmful: int | None = None,
    n_harmless: int | None = None,
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
    with_response: bool = True,
    refusal: str = "",
) -> list[Example]:
    """Loads refusal and helpful-answer files and returns their alignment mixture (prompts only when
    with_response is False). harmful_source may be a list of sources; `refusal` is the answer given to a harmful
    prompt whose row has none (a file of harmful prompts only), "" = every harmful row needs its own."""
    kw = dict(template=template, tokenizer=tokenizer)
    read = None if (refusal and with_response) else with_response
    harmful = [ex for source in as_sources(harmful_source)
               for ex in load_examples(source, harmful=True, with_response=read, **kw)]
    if read is None:
        harmful = [{**ex, "response": ex["response"] or refusal} for ex in harmful]
    return alignment_mixture(
        harmful,
        load_examples(harmless_source, harmful=False, with_response=with_response, **kw),
        n_harmful=n_harmful,
        n_harmless=n_harmless,
        seed=seed,
    )


# Words that harmful requests are made of and that safe prompts use too ("the causes of World War I", "shoot a
# basketball", "a poem about drug addiction"). Written from the vocabulary of harmful requests, not from any
# evaluation file; whole words, any case.
LOOKALIKE_WORDS = frozenset("""
    abuse alcohol attack attacks beat blood bomb bombs burn cheat cheating choke crack crime crimes criminal dangerous
    dead death destroy die drug drugs execute exploit explode explosion explosive fight fraud gun guns hack hacker
    hacking harm harmful hurt illegal kill killed killer killing kills knife murder poison poisonous punch rob robbery
    scam shoot shooting shot smash steal stealing stolen suicide terminate terrorism terrorist theft violence violent
    virus war weapon weapons""".split())


def lookalike_prompts(
    sources: Any,
    n: int,
    *,
    exclude: Collection[str] = (),
    seed: int = 0,
    template: str = "alpaca",
    tokenizer: Any = None,
) -> list[Example]:
    """n harmless prompts that look harmful: requests holding a word of LOOKALIKE_WORDS, drawn at random (with the
    seed) from `sources` (one or a list; prompts only, labelled harmless), none of them in `exclude`."""
    examples, seen = [], set(exclude)
    for source in as_sources(sources):
        for ex in load_examples(source, harmful=False, with_response=False, template=template, tokenizer=tokenizer):
            if ex["request"] not in seen and LOOKALIKE_WORDS & set(re.findall(r"[a-z]+", ex["request"].lower())):
                seen.add(ex["request"])
                examples.append(ex)
    if n > len(examples):
        raise DataError(f"data.alignment.n_lookalikes: {len(examples)} prompts of {sources} hold a word of "
                        f"LOOKALIKE_WORDS and are not left out, {n} needed")
    rng = np.random.default_rng(seed)
    return [examples[i] for i in sorted(rng.choice(len(examples), n, replace=False))]


def as_sources(sources: Any) -> list:
    """One source or a list of them, as a list."""
    return list(sources) if isinstance(sources, (list, tuple)) else [sources]
