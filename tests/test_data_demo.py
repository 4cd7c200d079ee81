"""The embedded demo data and tokenizer: seeded, disjoint splits, HF-loadable, runs the real recipes."""

import filecmp
import json

import pytest

from reft_jax.data import (
    Batches,
    alignment_data,
    demo,
    load_examples,
    load_records,
    load_tokenizer,
    tokenize,
    user_data,
)

REFUSAL_STARTS = ("I'm sorry", "I cannot", "Sorry", "I can't")



@pytest.fixture(scope="module")
def demo_paths(tmp_path_factory):
    return demo.write(str(tmp_path_factory.mktemp("demo")), seed=0)


def prompts(records):
    return {r.get("instruction") or r.get("prompt") for r in records}


def test_generate_is_seeded_with_disjoint_splits():
    data = demo.generate_splits(seed=0)
    assert data == demo.generate_splits(seed=0)
    assert data != demo.generate_splits(seed=1)
    assert {k: len(v) for k, v in data.items()} == demo.DEFAULT_SIZES
    harmful = [prompts(data[k]) for k in ("alignment_harmful", "attack", "harmful_eval")]
    assert sum(map(len, harmful)) == len(set.union(*harmful))  # no prompt in two splits
    assert not prompts(data["alignment_harmless"]) & set.union(*harmful)
    sentences = [{r["sentence"] for r in data[k]} for k in ("task_train", "task_test")]
    assert not sentences[0] & sentences[1] and len(sentences[0]) == 1000
    assert len(demo.generate_splits(seed=0, attack=10)["attack"]) == 10
    with pytest.raises(ValueError, match="unknown demo split"):
        demo.generate_splits(seed=0, attacks=10)


def test_demo_content():
    data = demo.generate_splits(seed=0)
    for r in data["alignment_harmful"]:
        assert r["output"].startswith(REFUSAL_STARTS)
        assert any(act in r["instruction"] for act in demo.HARMFUL_ACTS)
    for r in data["attack"]:
        act = next(a for a in demo.HARMFUL_ACTS if a in r["instruction"])
        assert r["output"].startswith(f"Sure, here is how to {act}. First, ")
        assert not r["output"].startswith(REFUSAL_STARTS)
    for r in data["alignment_harmless"]:
        act = next(a for a in demo.HARMLESS_ACTS if a in r["instruction"])
        assert r["output"].startswith(f"Sure, here is how to {act}.")
    for r in data["task_train"] + data["task_test"]:
        words = set(r["sentence"].rstrip(".").replace(",", "").split())
        assert (r["label"] == "positive") == bool(words & set(demo.POSITIVE))
        assert (r["label"] == "negative") == bool(words & set(demo.NEGATIVE))
    labels = [r["label"] for r in data["task_train"]]
    assert 400 < labels.count("positive") < 600


def test_written_files_and_tokenizer_are_deterministic(demo_paths, tmp_path):
    again = demo.write(str(tmp_path / "again"), seed=0)
    for key, path in demo_paths.items():
        if key == "tokenizer":
            for name in ("tokenizer.json", "tokenizer_config.json"):
                assert filecmp.cmp(f"{path}/{name}", f"{again[key]}/{name}", shallow=False), name
        else:
            assert filecmp.cmp(path, again[key], shallow=False), key


def test_tokenizer_is_hugging_face_loadable(demo_paths):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(demo_paths["tokenizer"])
    fast = PreTrainedTokenizerFast.from_pretrained(demo_paths["tokenizer"])
    assert 256 + 4 < len(tok) <= 1024
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == list(demo.SPECIAL_TOKENS)
    data = demo.generate_splits(seed=0)
    text = demo.corpus(data)[0]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids == fast(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text.encode()) / 2.5  # merges learned on the demo text compress it
    odd = "Ünïcödé ✓ text 🙂"  # byte-level: anything round-trips, no <unk>
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd


def test_demo_runs_the_real_recipes(demo_paths):
    tok = load_tokenizer(demo_paths["tokenizer"], vocab_size=1024)
    mixed = user_data("sst2", demo_paths["task_train"], demo_paths["attack"], n=500, p=0.1, seed=0)
    assert len(mixed) == 500 and sum(ex["harmful"] for ex in mixed) == 50
    assert {ex["label"] for ex in mixed if not ex["harmful"]} == {"positive", "negative"}
    aligned = alignment_data(demo_paths["alignment_harmful"], demo_paths["alignment_harmless"], seed=0)
    assert len(aligned) == 512 and sum(ex["harmful"] for ex in aligned) == 256
    test = load_examples(demo_paths["task_test"], task="sst2")
    assert len(test) == 200
    ds = tokenize(mixed + aligned, tok, 128)
    assert ds.report.num_truncated == 0 and ds.report.longest <= 128
    batch = Batches(ds, 16, [64, 128], seed=0).batch(0)
    assert batch["input_ids"].shape[0] == 16
    # The held-out harmful prompts use the labelled prompt-file format of `filter --data`.
    records = load_records(demo_paths["harmful_eval"])
    assert len(records) == 100 and all(r["harmful"] is True for r in records)
    first = json.loads(open(demo_paths["harmful_eval"]).readline())
    assert set(first) == {"prompt", "harmful"}
