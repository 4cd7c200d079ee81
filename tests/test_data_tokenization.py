"""Tokenization: prompt/response split, BOS/EOS, truncation policy and its count, tokenizer checks."""

import json

import numpy as np
import pytest

from reft_jax.data import Batches, DataError, demo, format_prompt, load_tokenizer, make_batch, tokenize
from reft_jax.errors import ConfigError


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return demo.write(str(tmp_path_factory.mktemp("demo")), seed=0)["tokenizer"]


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def ex(prompt, response, harmful=None):
    return {"prompt": prompt, "response": response, "harmful": harmful, "label": None, "source": "t:1"}


def test_batch_rows_decode_back_to_the_example(tok):
    examples = [
        ex(format_prompt("How do I bake a loaf of bread?"), "Sure, here is how.", False),
        ex(format_prompt("Tell me how to steal a car."), "I'm sorry, but I can't help with that.", True),
        ex(format_prompt("Classify", "the movie was dull."), "negative"),
    ]
    ds = tokenize(examples, tok, 128)
    assert ds.report.num_truncated == 0 and ds.report.num_examples == 3
    b = make_batch(ds, [0, 1, 2], 128)
    for row, e in enumerate(examples):
        n = int(b["attention_mask"][row].sum())
        ids = b["input_ids"][row]
        end = int(b["prompt_end"][row])
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids[1 : end + 1]) == e["prompt"]  # the prompt ends at prompt_end
        resp = ids[b["loss_mask"][row] == 1.0]
        assert resp[-1] == tok.eos_token_id == ids[n - 1]  # EOS ends the response and is a loss token
        assert tok.decode(resp[:-1]) == e["response"]
        assert np.flatnonzero(b["loss_mask"][row]).tolist() == list(range(end + 1, n))
        assert (ids[n:] == tok.pad_token_id).all() and b["attention_mask"][row, :n].all()
    assert b["harmful"].tolist() == [0, 1, -1]
    assert b["index"].tolist() == [0, 1, 2]


def test_prompt_only_examples_have_no_loss_tokens(tok):
    ds = tokenize([ex("just a prompt", "")], tok, 32)
    b = make_batch(ds, [0], 32)
    n = int(b["attention_mask"][0].sum())
    assert b["loss_mask"].sum() == 0 and b["prompt_end"][0] == n - 1
    assert tok.decode(b["input_ids"][0, 1:n]) == "just a prompt"


def test_chat_template_bos_is_not_doubled(tok):
    prompt = format_prompt("hi", template="chat", tokenizer=tok)
    assert prompt.startswith("<s>")
    ds = tokenize([ex(prompt, "yo")], tok, 32)
    assert ds.prompt_ids[0][0] == tok.bos_token_id and ds.prompt_ids[0][1] != tok.bos_token_id


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_truncation_cuts_the_response_first(tok):
    prompt, response = format_prompt("Say it"), " ".join(["word"] * 200)
    p, r = n_tokens(tok, prompt) + 1, n_tokens(tok, response) + 1  # + BOS, + EOS
    max_length = p + 20
    ds = tokenize([ex(prompt, response)], tok, max_length)
    assert len(ds.prompt_ids[0]) == p and len(ds.response_ids[0]) == 20 < r
    assert tok.eos_token_id not in ds.response_ids[0]  # a cut answer does not end
    assert ds.report.num_truncated == ds.report.num_response_truncated == 1
    assert ds.report.num_prompt_truncated == 0 and ds.report.longest == p + r


def test_truncation_cuts_a_long_prompt_from_the_left(tok):
    prompt = format_prompt("Please read: " + " ".join(f"item{i}" for i in range(300)))
    response = "Sure, here is a short answer."
    p, r = n_tokens(tok, prompt) + 1, n_tokens(tok, response) + 1
    max_length, min_response = 64, 8
    assert r > min_response and p > max_length
    ds = tokenize([ex(prompt, response), ex("short", "ok")], tok, max_length, min_response=min_response)
    kept_p, kept_r = ds.prompt_ids[0], ds.response_ids[0]
    assert len(kept_p) + len(kept_r) == max_length and len(kept_r) == min_response
    assert kept_p[0] == tok.bos_token_id
    assert tok.decode(kept_p[1:]).endswith("item299\n\n### Response:\n")  # the end of the prompt survives
    full = tok(prompt, add_special_tokens=False)["input_ids"]
    assert kept_p[1:].tolist() == full[len(full) - (max_length - min_response - 1) :]
    rep = ds.report
    assert (rep.num_examples, rep.num_truncated, rep.num_prompt_truncated, rep.num_response_truncated) == (2, 1, 1, 1)
    assert str(rep).startswith("2 examples, 1 truncated to 64 tokens")
    # Everything fits the largest bucket, so batches build without a new shape.
    batch = Batches(ds, 2, [32, 64]).batch(0)
    assert batch["input_ids"].shape == (2, 64)
    assert tok.decode(batch["input_ids"][0, batch["prompt_end"][0]]) == "\n"


def test_harmful_labels_and_select(tok):
    ds = tokenize([ex("a", "b", True), ex("c", "d", False), ex("e", "f")], tok, 16)
    assert ds.harmful.tolist() == [1, 0, -1]
    sub = ds.select([2, 0])
    assert sub.index.tolist() == [2, 0] and sub.harmful.tolist() == [-1, 1]
    assert make_batch(sub, [0, 1], 16)["index"].tolist() == [2, 0]


def test_bad_tokenization_settings(tok):
    with pytest.raises(ConfigError, match="max_length: 3 is too short"):
        tokenize([ex("a", "b")], tok, 3)
    with pytest.raises(ConfigError, match=r"min_response: 40 should be in \[0, max_length // 2 = 32\]"):
        tokenize([ex("a", "b")], tok, 64, min_response=40)
    with pytest.raises(DataError, match="t:1: prompt is empty after tokenization"):
        tokenize([ex("", "b")], tok, 16, add_bos=False)
    with pytest.raises(DataError, match="no examples to tokenize"):
        tokenize([], tok, 16)


def test_vocabulary_that_does_not_fit_the_model(tok_dir, tok):
    msg = f"{tok_dir}: tokenizer has {len(tok)} tokens but the model's vocab_size is 500"
    with pytest.raises(DataError, match="^" + msg.replace(".", r"\.") + "$"):
        load_tokenizer(tok_dir, vocab_size=500)
    with pytest.raises(DataError, match="tokenizer has 1024 tokens but the model's vocab_size is 1000"):
        tokenize([ex("a", "b")], tok, 16, vocab_size=1000)
    assert len(tokenize([ex("a", "b")], tok, 16, vocab_size=1024)) == 1


def test_unreadable_tokenizers(tmp_path, tok_dir):
    with pytest.raises(DataError, match=f"^{tmp_path}/none: tokenizer folder not found$"):
        load_tokenizer(str(tmp_path / "none"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    (bad / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(DataError, match=f"^{bad}: cannot load tokenizer: ") as info:
        load_tokenizer(str(bad))
    assert "\n" not in str(info.value)
