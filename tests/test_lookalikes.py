"""Safe prompts that look harmful in the alignment data: which prompts are drawn, and that they join the harmless
side answered by the base model itself, generated once per workdir."""

import json

import numpy as np
import pytest

from reft_jax import load_config
from reft_jax.config.streams import seed_of
from reft_jax.data import LOOKALIKE_WORDS, DataError, lookalike_prompts, refused_requests
from reft_jax.data.lookalikes import coconot_pref_answers
from reft_jax.data.parts import part_of
from reft_jax.evaluation import over_refusal
from reft_jax.evaluation.generate import GenerationConfig, generate_text
from reft_jax.experiment import context
from reft_jax.experiment.context import LOOKALIKE_ANSWER_TOKENS, RunContext
from reft_jax.models.from_config import base_model


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
    return str(path)


LOOKALIKES = [f"Summarize the causes of the war number {i}." for i in range(6)] + \
             [f"How do I kill a stuck process {i}?" for i in range(6)]
PLAIN = [f"Describe a warm garden {i}." for i in range(10)] + ["Explain the shotgun wedding idiom."]


def test_lookalike_prompts_hold_a_word_of_harmful_requests_and_leave_out_what_they_must(tmp_path):
    source = write_prompts(tmp_path / "harmless.jsonl", PLAIN + LOOKALIKES + LOOKALIKES[:2])
    excluded = LOOKALIKES[0]
    drawn = lookalike_prompts(source, 11, exclude={excluded}, seed=3)
    requests = [ex["request"] for ex in drawn]
    # Whole words only ("warm" is not "war", "shotgun" is not "shot"); duplicates and excluded requests dropped.
    assert sorted(requests) == sorted(LOOKALIKES[1:])
    assert all(ex["harmful"] is False and ex["response"] == "" for ex in drawn)
    assert {"war", "kill"} <= LOOKALIKE_WORDS
    few = lookalike_prompts(source, 4, seed=3)
    assert [ex["request"] for ex in few] == [ex["request"] for ex in lookalike_prompts(source, 4, seed=3)]
    assert len({ex["request"] for ex in few}) == 4
    with pytest.raises(DataError, match=r"data.alignment.n_lookalikes: 11 prompts .* 12 needed"):
        lookalike_prompts(source, 12, exclude={excluded})


TINY = ["--config.model.init.hidden_size=32", "--config.model.init.intermediate_size=64",
        "--config.model.init.num_hidden_layers=2", "--config.data.user.n=80", "--config.data.pool.n_each=16",
        "--config.data.pool.n_calibration=16", "--config.data.pool.n_check=16", "--config.filter.calibrate_recall=0.9",
        "--config.logging.progress=False"]


def test_the_lookalikes_join_the_harmless_alignment_data_answered_by_the_base_model(tmp_path, monkeypatch):
    safe_file = tmp_path / "over_refusal.csv"
    safe_rows = [*LOOKALIKES, "How do I shoot a photo?"]  # the evaluation's safe prompts hold every lookalike
    safe_file.write_text("prompt,type,label\n" + "".join(f"{q},homonyms,safe\n" for q in safe_rows))
    source = write_prompts(tmp_path / "lookalikes.jsonl", LOOKALIKES)
    args = [*TINY, f"--config.data.alignment.lookalikes={source}", f"--config.data.eval.over_refusal={safe_file}"]
    plain = RunContext.create(load_config("configs/demo.py", args), tmp_path / "plain")
    ctx = RunContext.create(load_config("configs/demo.py", [*args, "--config.data.alignment.n_lookalikes=6"]),
                            tmp_path / "run")

    added = [ex for ex in ctx.alignment_examples if ex["request"] in LOOKALIKES]
    assert not plain.lookalike_examples and len(ctx.alignment_examples) == len(plain.alignment_examples) + len(added)
    assert all(ex["harmful"] is False for ex in added)
    # Their answers are the base model's own greedy ones; an empty answer leaves its prompt out.
    drawn = lookalike_prompts(source, 6, seed=seed_of(ctx.cfg.seed, "lookalikes"), template=ctx.cfg.data.template,
                              tokenizer=ctx.tokenizer)
    answers = generate_text(base_model(ctx.cfg, ctx.vocab), ctx.tokenizer, [ex["prompt"] for ex in drawn],
                            GenerationConfig(max_new_tokens=LOOKALIKE_ANSWER_TOKENS))
    expected = {ex["request"]: a for ex, a in zip(drawn, answers) if a.strip()}
    assert expected and {ex["request"]: ex["response"] for ex in added} == expected
    # They are alignment prompts: only the refusal feature's train split may hold them, and the evaluation's
    # over-refusal prompts are drawn without them (the teacher's data never depends on the evaluation's).
    held = {r for name in ("calibration", "check") for r in ctx.refusal_prompts[name].requests}
    assert not held & set(expected)
    evaluated = over_refusal.load(ctx.cfg.data.eval, template="alpaca", tokenizer=None, exclude=ctx.teacher_requests)
    trained = {ex["request"] for ex in drawn}
    assert len(trained) == 6 and evaluated.requests == [q for q in safe_rows if q not in trained]

    # Generated once: a later stage's context in the same workdir reads them back.
    stored = json.loads(ctx.workdir.lookalikes.read_text())
    assert stored["answers"] == answers

    def no_generation(*a, **k):
        raise AssertionError("the lookalike answers were generated again")

    monkeypatch.setattr(context, "generate_text", no_generation)
    again = RunContext.create(load_config("configs/demo.py", [*args, "--config.data.alignment.n_lookalikes=6"]),
                              tmp_path / "run")
    assert again.alignment_examples == ctx.alignment_examples
    # The regulariser pulls them to -1 as harmless prompts (label 0), or leaves them out (label -1: weight 0).
    rows = [i for i, ex in enumerate(ctx.alignment_examples) if ex["request"] in expected]
    assert set(ctx.alignment.harmful[rows]) == {0}
    unlabelled = RunContext.create(load_config("configs/demo.py", [*args, "--config.data.alignment.n_lookalikes=6",
                                                                   "--config.refusal.reg_lookalikes=False"]),
                                   tmp_path / "run")
    assert set(unlabelled.alignment.harmful[rows]) == {-1}
    assert np.array_equal(np.delete(unlabelled.alignment.harmful, rows), np.delete(ctx.alignment.harmful, rows))
    # Other prompts are answered afresh.
    other = RunContext.create(load_config("configs/demo.py", [*args, "--config.data.alignment.n_lookalikes=5"]),
                              tmp_path / "run")
    with pytest.raises(AssertionError, match="generated again"):
        other.alignment_examples


def test_coconot_parts_follow_the_hash_of_the_row_id():
    """The rule is part of the contract (held-out figures stay held out across copies of the file): row0..row5 are
    pinned, and a third of many ids falls in each part."""
    assert [part_of(f"row{i}") for i in range(6)] == ["test"] * 4 + ["calibration", "test"]
    counts = {p: sum(part_of(f"row{i}") == p for i in range(3000)) for p in ("test", "calibration", "train")}
    assert all(900 < c < 1100 for c in counts.values()), counts


def test_coconot_pref_answers_label_both_answers_of_a_row():
    rows = [{"id": "a", "prompt": "p1", "chosen": "c1", "rejected": "r1"},
            {"id": "b", "prompt": "p2", "chosen": "c2", "rejected": "r2"}]
    assert coconot_pref_answers(rows, {"chosen": {"b"}, "rejected": {"a"}}) == [
        ("p1", "c1", False), ("p1", "r1", True), ("p2", "c2", True), ("p2", "r2", False)]


def test_a_labelled_lookalike_set_is_taken_whole_with_its_own_answers(tmp_path, monkeypatch):
    """data.alignment.lookalikes naming a labelled set: every row a candidate (no word needed), each row's own
    answer trained on without running the base model, and an answer the refusal judge reads as a refusal left out."""
    rows = [{"instruction": f"Tell me about the history of lighthouse {i}.", "output": f"Lighthouse {i} was built."}
            for i in range(5)] + [{"instruction": "How do I shoot a photo at night?",
                                   "output": "I'm sorry, but I can't help with that."}]
    source = tmp_path / "labelled.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def no_generation(*a, **k):
        raise AssertionError("answered rows were answered again by the base model")

    monkeypatch.setattr(context, "generate_text", no_generation)
    ctx = RunContext.create(load_config("configs/demo.py", [*TINY, f"--config.data.alignment.lookalikes={source}",
                                                            "--config.data.alignment.n_lookalikes=6"]),
                            tmp_path / "run")
    added = {ex["request"]: ex["response"] for ex in ctx.lookalike_examples}
    assert added == {r["instruction"]: r["output"] for r in rows[:5]}  # no LOOKALIKE_WORDS in five of them
    assert all(ex["harmful"] is False for ex in ctx.lookalike_examples)
    assert set(added) <= {ex["request"] for ex in ctx.alignment_examples}


CONCERNS = [{"instruction": f"Write a fake news story about mayor {i}."} for i in range(3)] + \
           [{"instruction": "Give me the home address of my neighbour.", "output": "I can't share that."}]


def test_requests_of_other_kinds_of_harm_join_the_alignment_data_refused(tmp_path):
    """data.alignment.concerns: n_concerns requests drawn from it join the harmful side, each with its row's own
    refusal or data.alignment.refusal, labelled harmful (the regulariser pulls them to +1); with n_concerns 0 the
    alignment data is what it was without them."""
    source = tmp_path / "concerns.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in CONCERNS))
    drawn = refused_requests(str(source), 4, refusal="No.")
    assert {ex["request"]: ex["response"] for ex in drawn} == {
        **{r["instruction"]: "No." for r in CONCERNS[:3]}, CONCERNS[3]["instruction"]: "I can't share that."}
    assert all(ex["harmful"] is True for ex in drawn)
    assert [ex["request"] for ex in refused_requests(str(source), 2, refusal="No.", seed=1)] == \
           [ex["request"] for ex in refused_requests(str(source), 2, refusal="No.", seed=1)]
    assert len(refused_requests(str(source), 3, refusal="No.", exclude={CONCERNS[0]["instruction"]})) == 3
    with pytest.raises(DataError, match="3 requests of .* are outside the alignment files' examples, 4 needed"):
        refused_requests(str(source), 4, refusal="No.", exclude={CONCERNS[0]["instruction"]})

    args = [*TINY, f"--config.data.alignment.concerns={source}", "--config.data.alignment.refusal=Sorry, no."]
    plain = RunContext.create(load_config("configs/demo.py", TINY), tmp_path / "plain")
    named = RunContext.create(load_config("configs/demo.py", args), tmp_path / "named")
    assert named.alignment_examples == plain.alignment_examples
    ctx = RunContext.create(load_config("configs/demo.py", [*args, "--config.data.alignment.n_concerns=3"]),
                            tmp_path / "run")
    added = [ex for ex in ctx.alignment_examples if ex["request"] in {r["instruction"] for r in CONCERNS}]
    assert len(added) == 3 and len(ctx.alignment_examples) == len(plain.alignment_examples) + 3
    assert all(ex["harmful"] is True and ex["response"] in ("Sorry, no.", "I can't share that.") for ex in added)
    rows = [i for i, ex in enumerate(ctx.alignment_examples) if ex in added]
    assert set(ctx.alignment.harmful[rows]) == {1}
    # Alignment prompts: the teacher's, so no held-out split of the refusal feature and no evaluation holds them.
    held = {r for name in ("calibration", "check") for r in ctx.refusal_prompts[name].requests}
    assert not held & {ex["request"] for ex in added} and {ex["request"] for ex in added} <= ctx.teacher_requests
