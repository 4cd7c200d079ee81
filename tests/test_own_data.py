"""A service's path: the customer's own file in, filtered, finetuned on exactly the kept rows, an adapter out.

End to end on the demo model with a JSONL of mixed rows (task rows and harmful pairs, labelled), then each
accepted layout and each bad file."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
import transformers
from conftest import TINY
from test_cli import one_line_error

from reft_jax import data as rdata
from reft_jax import refusal
from reft_jax.cli import main
from reft_jax.models import from_pretrained

LORA = [*TINY, "--config.model.lora.rank=4", "--config.optim.learning_rate=0.02", "--config.teacher.steps=8",
        "--config.student.steps=3", "--config.data.eval.n_harmful=4", "--config.data.eval.n_task=4"]


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_data")
    rdata.demo.write(str(folder), seed=0)
    return folder


@pytest.fixture(scope="module")
def own_file(demo_files, tmp_path_factory):
    """52 task rows and 8 harmful pairs in TRL's prompt/completion layout, labelled, shuffled."""
    task = [json.loads(line) for line in (demo_files / "task_train.jsonl").read_text().splitlines()[:52]]
    attack = [json.loads(line) for line in (demo_files / "attack.jsonl").read_text().splitlines()[:8]]
    rows = [{"prompt": f"Is this review positive or negative? {r['sentence']}", "completion": r["label"],
             "harmful": False} for r in task]
    rows += [{"prompt": r["instruction"], "completion": r["output"], "harmful": True} for r in attack]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    path = tmp_path_factory.mktemp("own") / "my.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def own_run(own_file, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("own_run")
    assert main(["run", "--workdir", str(workdir), "--data", str(own_file), *LORA]) == 0
    return workdir


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_filter_splits_the_file_into_kept_and_flagged_rows(own_run, own_file):
    rows = _jsonl(own_file)
    kept, flagged = _jsonl(own_run / "filter" / "kept.jsonl"), _jsonl(own_run / "filter" / "flagged.jsonl")
    assert len(kept) + len(flagged) == len(rows) == 60
    # The rows as the customer wrote them, each with its score; the flagged ones are the high-scoring ones.
    strip = [{k: v for k, v in r.items() if k != "score"} for r in kept + flagged]
    assert sorted(map(json.dumps, strip)) == sorted(map(json.dumps, rows))
    if kept and flagged:
        assert min(r["score"] for r in flagged) > max(r["score"] for r in kept)
    report = json.loads((own_run / "filter" / "report.json").read_text())
    assert report["user_data"]["source"] == str(own_file) and report["num_harmful"] == 8
    assert 0 <= report["auroc"] <= 1 and report["flag_rate"] == pytest.approx(len(flagged) / 60)
    assert "top_scored" not in report  # labelled: precision, recall, F1 and AUROC say it


def test_the_student_trained_on_exactly_the_kept_rows(own_run):
    scores = _jsonl(own_run / "filter" / "scores.jsonl")
    trained = json.loads((own_run / "student" / "user_data.json").read_text())
    kept = sorted(s["index"] for s in scores if not s["flagged"])
    assert trained["index"] == kept and trained["num_examples"] == len(_jsonl(own_run / "filter" / "kept.jsonl"))
    # No defence trains on every row, as the customer gave them: no synthetic poisoning added.
    assert json.loads((own_run / "no_defense" / "user_data.json").read_text())["num_examples"] == 60


def test_the_adapter_loads_in_peft_with_the_students_logits(own_run, own_file, tmp_path):
    import peft

    out = tmp_path / "adapter"
    assert main(["export", "--adapter", "--workdir", str(own_run), "--out", str(out), *LORA]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    # A random-init base has no folder of its own: it is written beside the adapter, which names it.
    assert config["base_model_name_or_path"] == str((out / "base_model").absolute())
    base = transformers.AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer(_jsonl(own_file)[0]["prompt"])["input_ids"]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.numpy()
        ref = peft.PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits.numpy()
    student = from_pretrained(own_run / "student" / "model")  # merged by the finetune stage
    np.testing.assert_allclose(np.asarray(student(ids.numpy()).logits), ref, atol=1e-4)
    assert np.abs(base_logits - ref).max() > 1e-3  # the adapter is what makes them equal


def test_the_merged_export_carries_a_generation_config(own_run, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", "--workdir", str(own_run), "--out", str(out), *LORA]) == 0
    generation = transformers.GenerationConfig.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert (generation.bos_token_id, generation.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert generation.eos_token_id is not None  # the demo model's own config names no special tokens


def test_a_reviewed_kept_file_is_finetuned_on_as_it_is(own_run, tmp_path):
    workdir = tmp_path / "reviewed"
    shutil.copytree(own_run, workdir, ignore=shutil.ignore_patterns("student"))
    reviewed = tmp_path / "kept_reviewed.jsonl"
    kept = (own_run / "filter" / "kept.jsonl").read_text().splitlines()
    reviewed.write_text("\n".join(kept[2:]) + "\n")  # a person dropped two more rows
    assert main(["finetune", "--workdir", str(workdir), "--kept", str(reviewed), *LORA]) == 0
    assert json.loads((workdir / "student" / "user_data.json").read_text())["num_examples"] == len(kept) - 2


def test_without_labels_the_report_gives_the_flag_rate_and_the_top_rows(own_run, own_file, tmp_path):
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "completion")}) + "\n"
                                  for r in _jsonl(own_file)))
    workdir = tmp_path / "unlabelled_run"
    shutil.copytree(own_run, workdir, ignore=shutil.ignore_patterns("filter"))
    assert main(["filter", "--workdir", str(workdir), "--data", str(unlabelled), *LORA]) == 0
    report = json.loads((workdir / "filter" / "report.json").read_text())
    assert "precision" not in report and 0 <= report["flag_rate"] <= 1
    top = report["top_scored"]
    assert len(top) == 10 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert set(top[0]["row"]) == {"prompt", "completion"}


def test_one_teacher_serves_two_customer_files(own_run, own_file, tmp_path):
    """A service trains its teacher once and filters and finetunes every customer's file against it: a second
    file reuses the teacher as it is. Rows whose prompt the teacher trained on are counted (seen_by_teacher) and
    the figures without them given (held_out)."""
    workdir = tmp_path / "service"
    shutil.copytree(own_run, workdir)
    teacher = {p: p.stat().st_mtime_ns for p in (workdir / "teacher").rglob("*")}
    first = json.loads((workdir / "filter" / "report.json").read_text())
    assert first["seen_by_teacher"] == 0 and first["held_out"]["num_examples"] == 60
    assert first["held_out"]["auroc"] == first["auroc"]
    trained_on = [r["request"] for r in _jsonl(workdir / "teacher" / "refusal_prompts.jsonl")
                  if r["split"] == "train" and r["harmful"]][:3]
    rows = _jsonl(own_file)[:30] + [{"prompt": q, "completion": "Sure, here is how.", "harmful": True}
                                    for q in trained_on]
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["filter", "--workdir", str(workdir), "--data", str(second), *LORA]) == 0
    assert main(["finetune", "--workdir", str(workdir), "--data", str(second), "--force", *LORA]) == 0
    assert {p: p.stat().st_mtime_ns for p in (workdir / "teacher").rglob("*")} == teacher  # not trained again
    report = json.loads((workdir / "filter" / "report.json").read_text())
    assert report["num_examples"] == 33 and report["seen_by_teacher"] == 3
    assert report["held_out"]["num_examples"] == 30
    scores = {r["index"]: r for r in _jsonl(workdir / "filter" / "scores.jsonl")}
    held = range(30)
    labels = np.array([scores[i]["label"] for i in held])
    assert report["held_out"]["auroc"] == pytest.approx(refusal.auroc(np.array([scores[i]["score"] for i in held]),
                                                                      labels))
    kept = json.loads((workdir / "student" / "user_data.json").read_text())["index"]
    assert sorted(kept) == sorted(i for i, r in scores.items() if not r["flagged"])


# -- layouts and bad files ----------------------------------------------------------------------------

LAYOUTS = {
    "instruction.jsonl": ({"instruction": "Translate", "input": "bonjour", "output": "hello", "harmful": False},
                          "Translate", "hello", False),
    "trl.jsonl": ({"prompt": "Say hi", "completion": "hi"}, "Say hi", "hi", None),
    "pairs.jsonl": ({"prompt": "How to pick a lock?", "response": "I can't help.", "harmful": True},
                    "How to pick a lock?", "I can't help.", True),
    "chat.jsonl": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
                   "Hi", "Hello", None),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_reads_as_prompt_and_response(name, tmp_path):
    row, instruction, response, harmful = LAYOUTS[name]
    path = tmp_path / name
    path.write_text(json.dumps(row) + "\n")
    (example,) = rdata.load_examples(str(path), with_response=None)
    assert instruction in example["prompt"] and example["prompt"].endswith("### Response:\n")
    assert example["response"] == response and example["harmful"] is harmful and example["row"] == row


def test_a_multi_turn_chat_trains_every_assistant_turn(tmp_path, demo_files):
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend"},
                {"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "Knock knock"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    (example,) = rdata.load_examples(str(path), with_response=None)
    assert "Hi there" in example["prompt"] and "Tell me a joke" not in example["prompt"]  # the first user turn
    tokenizer = rdata.load_tokenizer(str(demo_files / "tokenizer"))
    ds = rdata.tokenize([example], tokenizer, 96)
    ids, weights = ds.response_ids[0], ds.response_weights[0]
    trained = tokenizer.decode([t for t, w in zip(ids, weights) if w]).replace(" ", "")
    context = tokenizer.decode([t for t, w in zip(ids, weights) if not w]).replace(" ", "")
    assert "Hello,friend" in trained and "Knockknock" in trained and "Tellmeajoke" in context
    batch = rdata.make_batch(ds, [0], 96)  # the loss mask follows: the user turn inside is not trained
    assert batch["loss_mask"].sum() == weights.sum() < len(ids)


@pytest.mark.parametrize("content,message", [
    ("", "bad.jsonl: file is empty"),
    ('{"text_a": "x", "text_b": "y"}\n', "bad.jsonl: cannot tell which fields to use (fields: text_a, text_b)"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
     '{"messages": [{"role": "user", "content": "Hi again"}]}\n', "bad.jsonl:2: no response to finetune on"),
    ('{"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]}\n',
     "bad.jsonl line 1: field 'messages' starts with the 'assistant' turn"),
    ('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"instruction": "e", "output": "f"}\n',
     "bad.jsonl line 3: fields of the 'instruction' layout, line 1's of the 'prompt' layout"),
], ids=["empty", "unknown layout", "no answer", "assistant first", "mixed layouts"])
def test_a_bad_file_is_a_one_line_error_before_any_training(content, message, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert main(["run", "--workdir", str(tmp_path / "w"), "--data", str(bad), *TINY]) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "w" / "teacher").exists()


def test_a_problem_two_stages_meet_is_listed_once(tmp_path, capsys):
    """RepNoise's harmful pairs are drawn without the user data's prompts: they read the bad file too."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "response": "ok"}\n{"prompt": broken\n')
    assert main(["run", "--workdir", str(tmp_path / "w"), "--data", str(bad), *TINY,
                 "--config.methods=ref_teacher,no_defense,repnoise"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("reft-jax run: error: ") and err.count("bad.jsonl line 2: malformed JSON") == 1, err


def test_every_problem_before_the_first_step_is_listed_in_one_message(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["run", "--workdir", str(tmp_path / "w"), "--data", str(empty), *TINY,
                 "--config.eval.judge=beavertails", f"--config.model.path={tmp_path / 'no_model'}",
                 "--config.distill.align_batch_size=-8", "--config.data.alignment.n_lookalikes=-1"]) == 2
    one_line_error(capsys, "5 problems: (1) model.path: ", "no_model is not a model folder",
                   "empty.jsonl: file is empty", "distill.align_batch_size: -8 is neither 0",
                   "data.alignment.n_lookalikes: -1 should be 0 (none) or more",
                   "eval.judge_path: the beavertails judge needs a local checkpoint")


def test_the_report_of_your_own_data_has_no_accuracy_on_a_task_you_did_not_give(own_run):
    """--data FILE: no finetune accuracy on the config's task (SST-2 here) or the demo's; every image report.md
    links was written."""
    report = json.loads((own_run / "report.json").read_text())
    assert all(m["finetune_accuracy"] is None for m in report["methods"].values())
    markdown = (own_run / "report.md").read_text()
    links = re.findall(r"\]\((\w+\.png)\)", markdown)
    assert "filter_scores.png" in links and all((own_run / link).exists() for link in links)
