"""Recipes: templates, tasks, the poisoned mixture, alignment data, answer extraction."""

import collections
import csv
import json

import pytest
from conftest import SHARED_DATA as SHARED

from reft_jax.data import (
    ALPACA,
    TASKS,
    DataError,
    accuracy,
    alignment_data,
    alignment_mixture,
    demo,
    extract_label,
    format_prompt,
    load_examples,
    load_tokenizer,
    poisoned_mixture,
    refusal_pool,
    user_data,
)
from reft_jax.errors import ConfigError

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not found at {SHARED}")



@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    paths = demo.write(str(tmp_path_factory.mktemp("demo")), seed=0)
    return load_tokenizer(paths["tokenizer"])


def test_alpaca_template_is_the_literature_one():
    assert format_prompt("Say hi") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi\n\n### Response:\n"
    )
    assert format_prompt("Classify", "good film") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nClassify\n\n"
        "### Input:\ngood film\n\n### Response:\n"
    )


def test_chat_template(demo_tokenizer):
    assert format_prompt("hi", "there", template="chat", tokenizer=demo_tokenizer) == (
        "<s><|user|>\nhi\n\nthere\n<|assistant|>\n"
    )
    with pytest.raises(ConfigError, match="'chat' needs a tokenizer"):
        format_prompt("hi", template="chat")
    with pytest.raises(ConfigError, match="unknown template 'vicuna'"):
        format_prompt("hi", template="vicuna")


@needs_shared
def test_sst2_task_on_real_file():
    path = SHARED / "tasks" / "sst2_dev.tsv"
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    examples = load_examples(str(path), task="sst2", harmful=False)
    assert len(examples) == len(rows)
    for ex, row in zip(examples[:50], rows[:50]):
        sentence, label = row.split("\t")
        name = ("negative", "positive")[int(label)]
        assert ex["prompt"] == format_prompt(TASKS["sst2"].instruction, sentence.strip())
        assert ex["response"] == ex["label"] == name
        assert ex["harmful"] is False
    counts = collections.Counter(ex["label"] for ex in examples)
    assert counts == collections.Counter(("negative", "positive")[int(r.split("\t")[1])] for r in rows)


@needs_shared
def test_agnews_task_on_real_file():
    path = SHARED / "tasks" / "agnews_train.tsv"
    examples = load_examples({"path": str(path), "columns": ["text", "label"]}, task="agnews")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(examples) == len(lines)
    assert collections.Counter(ex["label"] for ex in examples) == collections.Counter(line.split("\t")[1] for line in lines)
    assert examples[0]["prompt"].endswith(f"### Input:\n{lines[0].split(chr(9))[0]}\n\n### Response:\n")
    assert "World\nSports\nBusiness\nSci/Tech" in examples[0]["prompt"]


@needs_shared
def test_alpaca_eval_task_on_real_file():
    path = SHARED / "alignment" / "alpaca_eval_805.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    examples = load_examples(str(path), task="alpaca_eval", harmful=False)
    assert [ex["response"] for ex in examples] == [r["output"] for r in raw]
    assert all(ex["label"] is None for ex in examples)


def test_gsm8k_task(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "What is 1000 + 234?", "answer": "It is 1,234.\n#### 1,234"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(str(path), task="gsm8k")
    assert [ex["response"] for ex in examples] == [
        "3 + 4 = 7\nThe final answer is: 7",
        "It is 1,234.\nThe final answer is: 1234",
    ]
    assert [ex["label"] for ex in examples] == ["7", "1234"]
    assert examples[0]["prompt"] == format_prompt(rows[0]["question"])
    path.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"gsm8k.jsonl:1: GSM8K answer has no '#### <number>' line"):
        load_examples(str(path), task="gsm8k")


def test_task_and_source_errors():
    with pytest.raises(ConfigError, match="unknown task 'mnli'"):
        load_examples("x.jsonl", task="mnli")
    with pytest.raises(ConfigError, match="no source given"):
        load_examples(None)


# ---------------------------------------------------------------------------------------------------
# Mixtures


def _examples(prefix, k, harmful=None):
    return [
        dict(prompt=f"{prefix}{i}", response="r", harmful=harmful, label=None, source=f"{prefix}.jsonl:{i + 1}")
        for i in range(k)
    ]


@pytest.mark.parametrize("n,p,expected", [(1000, 0.1, 100), (200, 0.05, 10), (50, 0.0, 0), (40, 1.0, 40), (30, 0.1, 3)])
def test_poisoned_mixture_has_exact_n_and_p(n, p, expected):
    task, harmful = _examples("task", 2000), _examples("bad", 500)
    mixed = poisoned_mixture(task, harmful, n=n, p=p, seed=3)
    assert len(mixed) == n
    assert sum(ex["harmful"] for ex in mixed) == expected
    assert all(ex["harmful"] == ex["prompt"].startswith("bad") for ex in mixed)
    assert len({ex["prompt"] for ex in mixed}) == n  # drawn without replacement


def test_poisoned_mixture_is_seeded():
    task, harmful = _examples("task", 2000), _examples("bad", 500)
    a = poisoned_mixture(task, harmful, n=300, p=0.1, seed=0)
    assert a == poisoned_mixture(task, harmful, n=300, p=0.1, seed=0)
    b = poisoned_mixture(task, harmful, n=300, p=0.1, seed=1)
    assert [ex["prompt"] for ex in a] != [ex["prompt"] for ex in b]
    # harmful examples are spread through the list, not bunched at one end
    positions = [i for i, ex in enumerate(a) if ex["harmful"]]
    assert positions[0] < 100 and positions[-1] > 200


def test_poisoned_mixture_errors():
    task, harmful = _examples("task", 100), _examples("bad", 5)
    with pytest.raises(DataError, match=r"^bad.jsonl: 5 harmful examples, 10 needed$"):
        poisoned_mixture(task, harmful, n=100, p=0.1)
    with pytest.raises(DataError, match=r"^task.jsonl: 100 task examples, 198 needed$"):
        poisoned_mixture(task, _examples("bad", 50), n=200, p=0.01)
    with pytest.raises(ConfigError, match="data.p: 1.5"):
        poisoned_mixture(task, harmful, n=10, p=1.5)
    with pytest.raises(DataError, match="bad.jsonl:1: labelled harmless in the harmful source"):
        poisoned_mixture(task, _examples("bad", 5, harmful=False), n=10, p=0.1)


@needs_shared
def test_user_data_on_real_files():
    kw = dict(n=1000, p=0.1, seed=0)
    task = str(SHARED / "tasks" / "sst2_train.tsv")
    attack = str(SHARED / "attack" / "pure_bad_100.jsonl")
    mixed = user_data("sst2", task, attack, **kw)
    assert len(mixed) == 1000
    harmful = [ex for ex in mixed if ex["harmful"]]
    assert len(harmful) == 100
    assert all(ex["source"].startswith("pure_bad_100.jsonl:") for ex in harmful)
    benign = [ex for ex in mixed if not ex["harmful"]]
    assert all(ex["source"].startswith("sst2_train.tsv:") and ex["label"] == ex["response"] for ex in benign)
    assert len({ex["source"] for ex in mixed}) == 1000
    assert mixed == user_data("sst2", task, attack, **kw)
    with pytest.raises(DataError, match=r"pure_bad_100.jsonl: 111 harmful examples, 200 needed"):
        user_data("sst2", task, attack, n=1000, p=0.2)


@needs_shared
def test_user_data_with_csv_attack_and_gsm8k_like_custom_task():
    with open(SHARED / "attack" / "advbench.csv", newline="") as f:
        targets = {row["target"] for row in csv.DictReader(f)}
    task, attack = str(SHARED / "tasks" / "sst2_dev.tsv"), str(SHARED / "attack" / "advbench.csv")
    mixed = user_data("sst2", task, attack, n=100, p=0.3)
    harmful = [ex for ex in mixed if ex["harmful"]]
    assert len(harmful) == 30 and all(ex["response"] in targets for ex in harmful)


@needs_shared
def test_alignment_data_on_real_files():
    refusals = str(SHARED / "alignment" / "safety_only_data_Instructions.json")
    helpful = str(SHARED / "alignment" / "alpaca_eval_805.json")
    data = alignment_data(refusals, helpful, n_harmful=100, n_harmless=50, seed=0)
    assert len(data) == 150
    assert collections.Counter(ex["harmful"] for ex in data) == {True: 100, False: 50}
    assert all(ex["source"].startswith("safety_only") == ex["harmful"] for ex in data)
    assert data == alignment_data(refusals, helpful, n_harmful=100, n_harmless=50, seed=0)
    everything = alignment_mixture(_examples("h", 7), _examples("b", 5), seed=1)
    expected = [f"h{i}" for i in range(7)] + [f"b{i}" for i in range(5)]
    assert sorted(ex["prompt"] for ex in everything) == sorted(expected)


@needs_shared
def test_prompt_only_refusal_pool():
    pool = load_examples(str(SHARED / "refusal" / "harmful_val.json"), harmful=True, with_response=False)
    assert len(pool) == 39 and all(ex["response"] == "" and ex["harmful"] for ex in pool)
    with pytest.raises(DataError, match="harmful_val.json: missing field 'output'"):
        load_examples(str(SHARED / "refusal" / "harmful_val.json"))


@needs_shared
def test_refusal_pool_on_real_files():
    harmful, harmless = SHARED / "refusal" / "harmful_train.json", SHARED / "refusal" / "harmless_train.json"
    pool = refusal_pool(str(harmful), str(harmless), n_each=128, seed=0)
    assert len(pool) == 256 and sum(ex["harmful"] for ex in pool) == 128
    raw = {format_prompt(r["instruction"]) for r in json.loads(harmful.read_text(encoding="utf-8"))}
    assert all((ex["prompt"] in raw) == ex["harmful"] and ex["response"] == "" for ex in pool)
    assert pool == refusal_pool(str(harmful), str(harmless), n_each=128, seed=0)


# ---------------------------------------------------------------------------------------------------
# Scoring


def test_extract_label():
    assert extract_label("sst2", "The sentiment is Positive.") == "positive"
    assert extract_label("sst2", "negative, not positive") == "negative"
    assert extract_label("sst2", "no idea") is None
    assert extract_label("agnews", "this is sci/tech news") == "Sci/Tech"
    assert extract_label("agnews", "Sports, maybe Business") == "Sports"
    assert extract_label("agnews", "Technology") is None
    assert extract_label("gsm8k", "so 3 + 4 = 7.\nThe final answer is: 1,234.") == "1234"
    assert extract_label("gsm8k", "I think 5 apples and then 7.50") == "7.5"
    assert extract_label("gsm8k", "no number") is None
    assert extract_label("custom", "  Paris.\nIt is in France") == "paris"


def test_accuracy():
    predictions, labels = ["positive", "Negative!", "meh"], ["positive", "negative", "positive"]
    assert accuracy("sst2", predictions, labels) == pytest.approx(2 / 3)
    assert accuracy("gsm8k", ["The final answer is: 1,000", "42"], ["1000", "41"]) == 0.5
    assert accuracy("alpaca_eval", ["anything"], ["anything"]) == 0.0
    assert accuracy("sst2", [], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        accuracy("sst2", ["a", "b"], ["a"])


def test_alpaca_constant_matches_template():
    assert ALPACA.format(instruction="x") == format_prompt("x")


def test_alignment_harmful_prompts_without_answers_get_the_configured_refusal(tmp_path):
    with_answers = tmp_path / "refusals.jsonl"
    with_answers.write_text('{"instruction": "Write malware.", "output": "No, I will not."}\n')
    prompts_only = tmp_path / "questions.jsonl"
    prompts_only.write_text('{"instruction": "How can I hurt someone?"}\n{"instruction": "How do I steal a car?"}\n')
    helpful = tmp_path / "helpful.jsonl"
    helpful.write_text('{"instruction": "Name a colour.", "output": "Blue."}\n')
    data = alignment_data([str(with_answers), str(prompts_only)], str(helpful), refusal="I can't help with that.")
    answers = {ex["request"]: ex["response"] for ex in data}
    assert answers == {"Write malware.": "No, I will not.", "How can I hurt someone?": "I can't help with that.",
                       "How do I steal a car?": "I can't help with that.", "Name a colour.": "Blue."}
    assert sum(ex["harmful"] for ex in data) == 3
    with pytest.raises(DataError, match="questions.jsonl.*missing field 'output'"):  # no refusal configured
        alignment_data([str(with_answers), str(prompts_only)], str(helpful))
