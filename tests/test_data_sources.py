"""Loading records: the real files in ../shared/data in every format, field mapping, and bad input."""

import csv
import json

import pytest
from conftest import SHARED_DATA as SHARED

from reft_jax.data import DataError, SourceSpec, load_records, sources

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real datasets not found at {SHARED}")



def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# Real files, one per format


@needs_shared
def test_json_array_instruction_input_output():
    path = SHARED / "alignment" / "safety_only_data_Instructions.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    records = load_records(str(path), required=("instruction", "output"))
    assert len(records) == len(raw) == 2483
    for i in (0, 1234, 2482):
        assert records[i]["instruction"] == raw[i]["instruction"]
        assert records[i]["output"] == raw[i]["output"]
        assert records[i]["input"] == (raw[i]["input"] or "")
        assert records[i]["source"] == f"safety_only_data_Instructions.json:{i + 1}"
    assert records[0]["label"] is None and records[0]["harmful"] is None


@needs_shared
def test_json_prompts_only():
    path = SHARED / "refusal" / "harmful_train.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    records = load_records(str(path))
    assert [r["instruction"] for r in records] == [r["instruction"] for r in raw]
    assert len(records) == 260
    assert all(r["output"] is None for r in records)


@needs_shared
def test_jsonl_messages():
    path = SHARED / "attack" / "pure_bad_100.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = load_records(str(path), required=("instruction", "output"))
    assert len(records) == len(lines) == 111
    for rec, line in zip(records, lines):
        assert rec["instruction"] == line["messages"][0]["content"]
        assert rec["output"] == line["messages"][1]["content"]


@needs_shared
def test_csv_goal_target():
    path = SHARED / "attack" / "advbench.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    records = load_records(str(path), required=("instruction", "output"))
    assert len(records) == len(rows) == 520
    assert [(r["instruction"], r["output"]) for r in records] == [(r["goal"], r["target"]) for r in rows]


@needs_shared
def test_tsv_with_header_and_label_names():
    path = SHARED / "tasks" / "sst2_dev.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    records = load_records(str(path), required=("input", "label"), label_names=("negative", "positive"))
    assert len(records) == len(lines) == 6735
    for rec, line in zip(records, lines):
        sentence, label = line.split("\t")
        assert rec["input"] == sentence
        assert rec["label"] == ("negative", "positive")[int(label)]


@needs_shared
def test_headerless_tsv_with_quotes():
    path = SHARED / "tasks" / "agnews_train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    spec = SourceSpec(str(path), columns=("text", "label"))
    records = load_records(spec, required=("input", "label"))
    assert len(records) == len(lines)  # the first line is data, and quotes are not CSV quoting
    for i in (0, 4321, len(lines) - 1):
        text, label = lines[i].split("\t")
        assert (records[i]["input"], records[i]["label"]) == (text, label)


@needs_shared
def test_parquet(tmp_path):
    import pandas as pd

    frame = pd.read_json(SHARED / "alignment" / "alpaca_eval_805.json")
    path = tmp_path / "alpaca_eval.parquet"
    frame.to_parquet(path)
    records = load_records(str(path), required=("instruction", "output"))
    assert len(records) == 805
    assert [r["instruction"] for r in records] == list(frame["instruction"])
    assert [r["output"] for r in records] == list(frame["output"])
    assert records[7]["source"] == "alpaca_eval.parquet:8"


@needs_shared
def test_explicit_mapping_on_real_file():
    spec = {"path": str(SHARED / "attack" / "advbench.csv"), "fields": {"prompt": "target", "response": "goal"}}
    records = load_records(spec, required=("instruction", "output"))
    assert records[0]["instruction"].startswith("Sure, here is")
    assert records[0]["output"].startswith("Write a script")


# ---------------------------------------------------------------------------------------------------
# Mapping details on generated files


def test_where_filter_and_safe_field(tmp_path):
    rows = [
        {"prompt": "p0", "response": "r0", "is_safe": True},
        {"prompt": "p1", "response": "r1", "is_safe": False},
        {"prompt": "p2", "response": "r2", "is_safe": False},
    ]
    path = write(tmp_path, "bt.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    spec = SourceSpec(path, where={"is_safe": False})
    records = load_records(spec, required=("instruction", "output"))
    assert [(r["instruction"], r["harmful"], r["source"]) for r in records] == [
        ("p1", True, "bt.jsonl:2"),
        ("p2", True, "bt.jsonl:3"),
    ]
    assert [r["harmful"] for r in load_records(path)] == [False, True, True]


def test_part_keeps_the_rows_whose_id_hashes_to_it(tmp_path):
    """`part` selects rows by the fixed rule the recorded studies used: sha256(id) mod 3 -> test, calibration, train;
    with `where`, both hold."""
    import hashlib

    def oracle(row_id):
        return ("test", "calibration", "train")[int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % 3]

    rows = [{"id": f"row{i}", "prompt": f"p{i}", "kind": "a" if i % 2 else "b"} for i in range(30)]
    path = write(tmp_path, "set.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    for part in ("test", "calibration", "train"):
        got = [r["instruction"] for r in load_records(SourceSpec(path, part={"id": part}))]
        assert got == [r["prompt"] for r in rows if oracle(r["id"]) == part] and got
    both = load_records(SourceSpec(path, where={"kind": "a"}, part={"id": ("test", "train")}))
    assert [r["instruction"] for r in both] == [r["prompt"] for r in rows
                                                if r["kind"] == "a" and oracle(r["id"]) != "calibration"]
    assert SourceSpec(path, part={"id": "test"}).title == "set.jsonl (test part)"
    assert SourceSpec.from_config({"path": path, "part": {"id": "test"}}) == SourceSpec(path, part={"id": "test"})
    assert error_of(load_records, SourceSpec(path, part={"id": "dev"})) == \
        f"{path}: part 'dev' is not one of test, calibration, train"
    assert "missing field 'uid'" in error_of(load_records, SourceSpec(path, part={"uid": "test"}))
    one = write(tmp_path, "one.jsonl", json.dumps({"id": "row0", "prompt": "p"}) + "\n")
    other = next(p for p in ("test", "calibration", "train") if p != oracle("row0"))
    assert error_of(load_records, SourceSpec(one, part={"id": other})) == \
        f"{one}: no rows left after filtering where id in part {other} (1 rows read)"


def test_harmful_labels_and_blank_lines(tmp_path):
    text = '{"prompt": "a", "harmful": true}\n\n{"prompt": "b", "harmful": false}\n{"prompt": "c"}\n'
    records = load_records(write(tmp_path, "labelled.jsonl", text))
    assert [(r["instruction"], r["harmful"], r["source"]) for r in records] == [
        ("a", True, "labelled.jsonl:1"),
        ("b", False, "labelled.jsonl:3"),
        ("c", None, "labelled.jsonl:4"),
    ]


def test_local_folder_of_split_files(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"goal": "g1", "target": "t1"}\n{"goal": "g2", "target": "t2"}\n')
    (folder / "test.jsonl").write_text('{"goal": "g3", "target": "t3"}\n')
    assert [r["instruction"] for r in load_records(SourceSpec(str(folder)))] == ["g1", "g2"]
    assert [r["output"] for r in load_records(SourceSpec(str(folder), split="test"))] == ["t3"]


def test_spec_from_config_mapping():
    spec = SourceSpec.from_config({"path": "x.jsonl", "fields": {"prompt": "q"}, "columns": ["a", "b"], "name": None})
    assert spec == SourceSpec("x.jsonl", fields={"prompt": "q"}, columns=("a", "b"))
    assert "unknown key(s) fieldz" in error_of(SourceSpec.from_config, {"path": "x", "fieldz": {}})
    ml_collections = pytest.importorskip("ml_collections")
    kw = {"split": "30k_train", "fields": {"safe": "is_safe"}, "where": {"is_safe": False}}
    cfg = ml_collections.ConfigDict({"path": "bt", **kw})
    assert SourceSpec.from_config(cfg) == SourceSpec("bt", **kw)


def test_hub_names_go_to_the_hub_only_when_not_local(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(
            {"prompt": ["a", "b"], "response": ["x", "y"], "is_safe": [True, False], "category": [{}, {}]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    from reft_jax.data import BEAVERTAILS

    records = load_records(BEAVERTAILS, required=("instruction", "output"))
    assert calls == [("PKU-Alignment/BeaverTails", None, "30k_train")]
    assert [(r["instruction"], r["output"], r["harmful"]) for r in records] == [("b", "y", True)]
    assert records[0]["source"] == "PKU-Alignment/BeaverTails[30k_train]:2"
    # Anything that looks like a file path is never sent to the hub.
    assert sources.is_local("data/missing.jsonl") and sources.is_local("./x") and not sources.is_local("org/name")
    msg = error_of(load_records, str(tmp_path / "nope.jsonl"))
    assert msg == f"{tmp_path / 'nope.jsonl'}: no such file or directory"
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the line / row / field


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n')
    assert error_of(load_records, path).startswith(f"{path} line 3: malformed JSON")


def test_malformed_json_array(tmp_path):
    path = write(tmp_path, "x.json", '[\n {"instruction": "a"},\n {"instruction": "b"\n]\n')
    assert error_of(load_records, path).startswith(f"{path} line 4: malformed JSON")


def test_json_line_not_an_object(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"prompt": "a"}\n["b"]\n')
    assert error_of(load_records, path) == f"{path} line 2: expected a JSON object, got list"


def test_missing_field_on_one_line(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"}\n{"promt": "c"}\n')
    msg = error_of(load_records, path, required=("instruction",))
    assert msg == f"{path} line 4: field 'prompt' is missing or null"


def test_missing_field_everywhere(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"instruction": "a", "output": "b"}\n')
    msg = error_of(load_records, SourceSpec(path, fields={"instruction": "prompt"}))
    assert msg == f"{path}: missing field 'prompt' (fields: instruction, output)"


def test_required_field_not_mapped(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"goal": "a"}\n')
    msg = error_of(load_records, path, required=("instruction", "output"))
    assert msg.startswith(f"{path}: missing field 'output' (fields: goal)")


def test_mapping_to_unknown_field(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"goal": "a"}\n')
    msg = error_of(load_records, SourceSpec(path, fields={"question": "goal"}))
    assert msg.startswith(f"{path}: cannot map to unknown field 'question'")


def test_unknown_layout(tmp_path):
    path = write(tmp_path, "x.csv", "foo,bar\n1,2\n")
    assert error_of(load_records, path).startswith(f"{path}: cannot tell which fields to use (fields: foo, bar)")


def test_wrong_type(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"prompt": "a"}\n{"prompt": 3}\n')
    assert error_of(load_records, path) == f"{path} line 2: field 'prompt' should be text, got int"


def test_wrong_type_in_json_array(tmp_path):
    path = write(tmp_path, "x.json", '[{"instruction": "a", "output": ["no"]}]')
    msg = error_of(load_records, path, required=("instruction", "output"))
    assert msg == f"{path} record 1: field 'output' should be text, got list"


def test_bad_label_and_bool(tmp_path):
    path = write(tmp_path, "x.tsv", "sentence\tlabel\nok\t1\nbad\t7\n")
    msg = error_of(load_records, path, required=("input", "label"), label_names=("negative", "positive"))
    assert msg == f"{path} row 2: field 'label' label 7 is out of range 0..1"
    path = write(tmp_path, "y.jsonl", '{"prompt": "a", "harmful": "maybe"}\n')
    assert error_of(load_records, path) == f"{path} line 1: field 'harmful' should be true/false, got 'maybe'"


def test_bad_messages(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    assert error_of(load_records, path) == f"{path} line 1: field 'messages' has no user message"
    path = write(tmp_path, "y.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n')
    msg = error_of(load_records, path, required=("instruction", "output"))
    assert msg == f"{path} line 1: field 'messages' has no assistant message"


def test_empty_text_field(tmp_path):
    path = write(tmp_path, "x.csv", "goal,target\na,b\n  ,c\n")
    assert error_of(load_records, path) == f"{path} row 2: field 'goal' is empty"


@pytest.mark.parametrize("name,text", [("e.jsonl", ""), ("e.json", "  \n"), ("e.csv", ""), ("e.parquet", "")])
def test_empty_file(tmp_path, name, text):
    path = write(tmp_path, name, text)
    assert error_of(load_records, path) == f"{path}: file is empty"


def test_no_rows(tmp_path):
    assert error_of(load_records, p := write(tmp_path, "x.json", "[]")) == f"{p}: no rows"
    assert error_of(load_records, p := write(tmp_path, "x.csv", "goal,target\n")) == f"{p}: no rows"


def test_not_utf8(tmp_path):
    path = write(tmp_path, "x.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', mode="wb")
    assert error_of(load_records, path) == f"{path} line 2: not UTF-8 text (byte 0xe9)"
    path = write(tmp_path, "x.tsv", b"sentence\tlabel\n\xff\t1\n", mode="wb")
    assert error_of(load_records, path) == f"{path} line 2: not UTF-8 text (byte 0xff)"


def test_empty_after_filtering(tmp_path):
    path = write(tmp_path, "x.jsonl", '{"prompt": "a", "is_safe": true}\n')
    msg = error_of(load_records, SourceSpec(path, where={"is_safe": False}))
    assert msg == f"{path}: no rows left after filtering where is_safe == False (1 rows read)"
    msg = error_of(load_records, SourceSpec(path, where={"safe": False}))
    assert msg == f"{path}: missing field 'safe' (fields: prompt, is_safe)"


def test_csv_parse_error_names_the_line(tmp_path):
    path = write(tmp_path, "x.tsv", "sentence\tlabel\na\t1\nb\t0\textra\n")
    msg = error_of(load_records, path)
    assert msg.startswith(f"{path}: cannot read:") and "line 3" in msg


def test_unknown_extension_and_corrupt_parquet(tmp_path):
    path = write(tmp_path, "x.xml", "<a/>")
    assert error_of(load_records, path).startswith(f"{path}: unknown file type '.xml'")
    path = write(tmp_path, "x.parquet", b"not parquet at all", mode="wb")
    assert error_of(load_records, path).startswith(f"{path}: cannot read:")


@pytest.mark.parametrize("name,text", [
    ("excel.csv", "prompt,response\nhi,there\n"),
    ("excel.tsv", "prompt\tresponse\nhi\tthere\n"),
    ("notepad.jsonl", '{"prompt": "hi", "response": "there"}\n'),
    ("notepad.json", '[{"prompt": "hi", "response": "there"}]'),
])
def test_a_byte_order_mark_is_read_past(tmp_path, name, text):
    """What Excel and Notepad write: UTF-8 with a BOM in front of the first field name."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    rows = load_records(str(path))
    assert [(r["instruction"], r["output"]) for r in rows] == [("hi", "there")]
