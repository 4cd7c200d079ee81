"""Records from local files (JSON, JSONL, CSV, TSV, Parquet) and hub datasets, through `datasets`.

A *record* is the source-independent form of one row, after the field mapping:

    {"instruction": str | None, "input": str, "output": str | None, "label": str | None,
     "harmful": bool | None, "source": "file.jsonl:7", "row": {the row as read, every column},
     "messages": [{"role", "content"}, ...] (a chat row only)}

`examples.py` turns records into templated examples. Everything the user got wrong in a file
raises `DataError` with one line naming the file and the line (JSONL), record (JSON array) or row
(CSV/TSV/Parquet/hub), or the field. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from reft_jax.data.parts import PARTS, part_of
from reft_jax.errors import DataError

# Canonical record fields a mapping may target. `prompt`/`response` are aliases; `safe` is the inverse
# of `harmful` (BeaverTails' `is_safe`); `messages` is a chat list, read as first user turn -> the
# assistant turn after it.
TEXT_FIELDS = ("instruction", "input", "output")
FIELDS = (*TEXT_FIELDS, "label", "harmful", "safe", "messages")
ALIASES = {"prompt": "instruction", "response": "output"}

# Layouts recognised when no mapping is given: (column that identifies the layout, mapping).
# Optional columns are mapped only when present.
_LAYOUTS = (
    ("messages", {"messages": "messages"}),
    ("instruction", {"instruction": "instruction", "input": "input", "output": "output"}),
    ("completion", {"instruction": "prompt", "output": "completion"}),  # TRL's prompt/completion
    ("prompt", {"instruction": "prompt", "output": "response", "safe": "is_safe"}),
    ("goal", {"instruction": "goal", "output": "target"}),
    ("question", {"instruction": "question", "output": "answer"}),
    ("sentence", {"input": "sentence"}),
    ("text", {"input": "text"}),
)
_ALWAYS = {"label": "label", "harmful": "harmful"}  # mapped in any layout when the column exists

_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where a dataset comes from and how its columns map to record fields.

    path: a local file or folder, or a hub dataset name (used only when no such local path exists and
      the string does not look like a file path).
    split / name: hub split and configuration name (local files are one split).
    fields: record field -> column, e.g. {"instruction": "goal", "output": "target"}; empty to detect
      a known layout (messages, instruction/input/output, prompt/response, goal/target,
      question/answer, sentence/label, text/label).
    columns: column names of a CSV/TSV without a header row.
    where: keep only rows whose column equals the value, e.g. {"is_safe": False} (compared with the
      value as loaded: CSV/TSV values are text).
    part: keep only rows of a part of the fixed three-way split by a hash of an id column (reft_jax.data.parts),
      {column: part or list of parts}, e.g. {"id": "test"}: a held-out part of a set that ships without one.
    """

    path: str
    split: str = "train"
    name: str | None = None
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    columns: Sequence[str] | None = None
    where: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    part: Mapping[str, str | Sequence[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any) -> SourceSpec:
        """From a path string, a SourceSpec, or a mapping / ConfigDict with the same keys."""
        if isinstance(cfg, SourceSpec):
            return cfg
        if isinstance(cfg, (str, os.PathLike)):
            return cls(path=os.fspath(cfg))
        cfg = dict(cfg.items()) if hasattr(cfg, "items") else cfg
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DataError(f"data source: unknown key(s) {', '.join(sorted(unknown))}")
        if not cfg.get("path"):
            raise DataError("data source: missing 'path'")
        kw = {k: v for k, v in cfg.items() if v is not None}
        for key in ("fields", "where", "part"):
            if key in kw:
                kw[key] = dict(kw[key].items())
        if "columns" in kw:
            kw["columns"] = tuple(kw["columns"])
        return cls(**kw)

    @property
    def display(self) -> str:
        if is_local(self.path):
            return self.path
        return f"{self.path}[{self.split}]" if self.name is None else f"{self.path}/{self.name}[{self.split}]"

    @property
    def title(self) -> str:
        """A short name for reports: the file's name (or the hub dataset's) and the part selected, if any."""
        parts = ", ".join("/".join(_part_names(self.display, v)) for v in self.part.values())
        return _short(self) + (f" ({parts} part)" if parts else "")


def is_local(path: str) -> bool:
    """A path we must read from disk: it exists, or it looks like a file path (never try the hub for a
    typo in a local path)."""
    p = os.fspath(path)
    if os.path.exists(p):
        return True
    return p.startswith((".", "/", "~")) or os.path.splitext(p)[1].lower() in _EXTENSIONS


def load_records(
    spec: SourceSpec | str | Mapping[str, Any],
    *,
    required: Sequence[str] = ("instruction",),
    label_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Load a dataset and map each row to a record; check every row.

    required: record fields that must be present and non-empty in every row.
    label_names: allowed labels; an integer label i (or "i") becomes label_names[i].
    """
    spec = SourceSpec.from_config(spec)
    table, unit, number = _load_table(spec)
    where = _check_columns(spec.display, table.column_names, [*spec.where, *spec.part])
    parts = {column: _part_names(spec.display, names) for column, names in spec.part.items()}
    fields = _field_map(spec, table.column_names)
    missing = [f for f in required if f not in fields and not (f in ("instruction", "output") and "messages" in fields)]
    if missing:
        raise DataError(
            f"{spec.display}: missing field '{missing[0]}' (fields: {', '.join(table.column_names)}); "
            f"map it with fields={{'{missing[0]}': COLUMN}}"
        )
    columns = table.select_columns(sorted({*fields.values(), *where})).to_dict()
    rows = table.to_list()
    n = len(table)
    if not spec.fields:
        _check_one_layout(spec, rows, unit, number)
    label_names = tuple(label_names) if label_names else None
    records = []
    for i in range(n):
        if any(columns[c][i] != v for c, v in spec.where.items()):
            continue
        if any(part_of(str(columns[c][i])) not in names for c, names in parts.items()):
            continue
        loc = f"{spec.display} {unit} {number(i)}"  # where errors point
        source = f"{_short(spec)}:{number(i)}"  # where the example came from, kept with it
        row = {name: columns[col][i] for name, col in fields.items()}
        records.append({**_to_record(row, fields, required, label_names, loc, source), "row": rows[i]})
    if not records:
        if spec.where or spec.part:
            cond = " and ".join([*(f"{k} == {v!r}" for k, v in spec.where.items()),
                                 *(f"{k} in part {'/'.join(v)}" for k, v in parts.items())])
            raise DataError(f"{spec.display}: no rows left after filtering where {cond} ({n} rows read)")
        raise DataError(f"{spec.display}: no rows")
    return records


# ---------------------------------------------------------------------------------------------------
# Loading


def _part_names(shown: str, names) -> tuple[str, ...]:
    """A `part` entry's part names (one, or a list), each one of PARTS."""
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise DataError(f"{shown}: part {unknown[0] if unknown else '(none)'!r} is not one of {', '.join(PARTS)}")
    return names


def _short(spec: SourceSpec) -> str:
    return os.path.basename(spec.path.rstrip("/")) if is_local(spec.path) else spec.display


def _row(i: int) -> int:
    return i + 1


def _load_table(spec: SourceSpec):
    """Returns (datasets.Dataset, unit, number): row i is `unit number(i)` of the file, e.g. "line 7"
    of a JSONL file (blank lines skipped), "record 7" of a JSON array, "row 7" of a table."""
    path = os.path.expanduser(spec.path)
    if not is_local(spec.path):
        try:
            return _datasets_load(spec.path, spec.name, split=spec.split), "row", _row
        except Exception as e:  # the hub client raises many types; all mean "cannot read this dataset"
            raise DataError(f"{spec.display}: cannot load dataset: {_first_line(e)}") from None
    if not os.path.exists(path):
        raise DataError(f"{spec.path}: no such file or directory")
    if os.path.isdir(path):  # a folder of data files, one split per file name
        builder, kwargs, unit, number = path, {"split": spec.split}, "row", _row
    else:
        builder, kwargs, unit, number = _prepare_file(spec, path)
        kwargs = {**kwargs, "data_files": path, "split": "train"}
    try:
        table = _datasets_load(builder, **kwargs)
    except Exception as e:  # datasets wraps parser errors; the cause holds the useful message
        raise DataError(f"{spec.path}: cannot read: {_first_line(e.__cause__ or e)}") from None
    if len(table) == 0:
        raise DataError(f"{spec.path}: no rows")
    return table, unit, number


def _datasets_load(*args, **kwargs):
    import datasets  # deferred: importing datasets takes a second and nothing needs it at import

    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # "Generating train split" bars are noise here
    try:
        return datasets.load_dataset(*args, **kwargs)
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _prepare_file(spec: SourceSpec, path: str):
    """Checks the file ourselves where `datasets` would not name the line; returns the builder, its
    options and the row naming."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(f"{spec.path}: unknown file type '{ext}' (use .json, .jsonl, .csv, .tsv or .parquet)")
    if os.path.getsize(path) == 0:
        raise DataError(f"{spec.path}: file is empty")
    builder = _EXTENSIONS[ext]
    if builder == "parquet":
        return builder, {}, "row", _row
    text = _read_utf8(spec.path, path)
    if not text.strip():
        raise DataError(f"{spec.path}: file is empty")
    if builder == "json":
        return (builder, {}, *_check_json(spec.path, text))
    # CSV/TSV: every column read as a string (no guessing of numbers or NA values); TSV is unquoted.
    tsv = ext == ".tsv"
    header = spec.columns
    if header is None:
        first, _, rest = text.partition("\n")
        if not rest.strip():
            raise DataError(f"{spec.path}: no rows")
        header = first.rstrip("\r").split("\t") if tsv else next(csv.reader([first]))
    import datasets  # deferred, as in _datasets_load

    kwargs = dict(
        encoding="utf-8-sig",
        delimiter="\t" if tsv else ",",
        features=datasets.Features({c: datasets.Value("string") for c in header}),
        keep_default_na=False,
        na_filter=False,
    )
    if tsv:
        kwargs["quoting"] = csv.QUOTE_NONE
    if spec.columns is not None:
        kwargs["column_names"] = list(spec.columns)
    return "csv", kwargs, "row", _row


def _read_utf8(shown: str, path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (what Excel writes) is not part of the text
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{shown} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def _check_json(shown: str, text: str):
    """Validates a JSON array of objects or JSON lines; returns (unit, number) naming row i."""
    if text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{shown} line {e.lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not doc:
            raise DataError(f"{shown}: no rows")
        for i, item in enumerate(doc):
            if not isinstance(item, dict):
                raise DataError(f"{shown} record {i + 1}: expected a JSON object, got {type(item).__name__}")
        return "record", _row
    lines = []  # line number of each row (datasets skips blank lines)
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if n == 1 and _parses(text):
                raise DataError(f"{shown}: one JSON object; expected a list of records or JSON lines") from None
            raise DataError(f"{shown} line {n}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{shown} line {n}: expected a JSON object, got {type(obj).__name__}")
        lines.append(n)
    return "line", lines.__getitem__


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        return False


def _first_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg.splitlines()[0]


# ---------------------------------------------------------------------------------------------------
# Field mapping and row checks


def _check_columns(shown: str, columns: Sequence[str], wanted) -> list[str]:
    for c in wanted:
        if c not in columns:
            raise DataError(f"{shown}: missing field '{c}' (fields: {', '.join(columns)})")
    return list(wanted)


def _check_one_layout(spec: SourceSpec, rows: list[dict], unit: str, number) -> None:
    """A file of JSON rows holds one layout: a row of another (its layout's column set, the first's unset) is named
    by its own line, not by the first row the layout detected from every row's columns does not fit."""
    first = None
    for i, row in enumerate(rows):
        layout = next((marker for marker, _ in _LAYOUTS if row.get(marker) is not None), None)
        if layout is None:
            continue
        if first is None:
            first = (i, layout)
        elif layout != first[1]:
            raise DataError(f"{spec.display} {unit} {number(i)}: fields of the {layout!r} layout, {unit} "
                            f"{number(first[0])}'s of the {first[1]!r} layout; use one layout per file")


def _field_map(spec: SourceSpec, columns: Sequence[str]) -> dict[str, str]:
    """Record field -> column, from the spec or a detected layout."""
    if spec.fields:
        fields = {}
        for key, col in spec.fields.items():
            key = ALIASES.get(key, key)
            if key not in FIELDS:
                raise DataError(f"{spec.display}: cannot map to unknown field '{key}' (known: {', '.join(FIELDS)})")
            fields[key] = col
        _check_columns(spec.display, columns, fields.values())
        return fields
    for marker, layout in _LAYOUTS:
        if marker in columns:
            fields = {k: c for k, c in layout.items() if c in columns}
            fields.update({k: c for k, c in _ALWAYS.items() if c in columns and c not in fields.values()})
            return fields
    raise DataError(
        f"{spec.display}: cannot tell which fields to use (fields: {', '.join(columns)}); set fields={{...}}"
    )


def _to_record(row, fields, required, label_names, loc, source) -> dict[str, Any]:
    rec = {"instruction": None, "input": "", "output": None, "label": None, "harmful": None, "source": source}
    if "messages" in fields:
        rec["messages"] = _read_messages(row["messages"], loc, fields["messages"])
        rec["instruction"], rec["output"] = first_exchange(rec["messages"])
    for key in TEXT_FIELDS:
        if key in fields:
            value = row[key]
            if value is not None and not isinstance(value, str):
                raise DataError(f"{loc}: field '{fields[key]}' should be text, got {type(value).__name__}")
            if value is not None or key != "input":  # a null input means no input
                rec[key] = value
    for key in required:
        if key in TEXT_FIELDS and (rec[key] is None or not rec[key].strip()):
            if "messages" in fields and key not in fields:
                turn = "user" if key == "instruction" else "assistant"
                raise DataError(f"{loc}: field '{fields['messages']}' has no {turn} message")
            what = "missing or null" if rec[key] is None else "empty"
            raise DataError(f"{loc}: field '{fields[key]}' is {what}")
    if "label" in fields:
        rec["label"] = _read_label(row["label"], label_names, loc, fields["label"])
        if "label" in required and rec["label"] is None:
            raise DataError(f"{loc}: field '{fields['label']}' is missing or null")
    for key, invert in (("harmful", False), ("safe", True)):
        if key in fields:
            value = _read_bool(row[key], loc, fields[key])
            rec["harmful"] = None if value is None else value != invert
    return rec


def _read_messages(messages, loc, col) -> list[dict]:
    """The chat list checked: text role and content in every message, and a user message."""
    if not isinstance(messages, list):
        raise DataError(f"{loc}: field '{col}' should be a list of messages, got {type(messages).__name__}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{loc}: field '{col}' message {j + 1} needs text 'role' and 'content'")
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{loc}: field '{col}' has no user message")
    first = next(m["role"] for m in messages if m["role"] != "system")
    if first != "user":  # an answer to nothing: the turns are in the wrong order
        raise DataError(f"{loc}: field '{col}' starts with the {first!r} turn; a chat starts with the user's (after "
                        "any system message)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def first_exchange(messages: list[dict]) -> tuple[str, str | None]:
    """The first user message and the assistant answer right after it (None when there is none)."""
    first = next(j for j, m in enumerate(messages) if m["role"] == "user")
    answer = next((m["content"] for m in messages[first + 1:] if m["role"] == "assistant"), None)
    return messages[first]["content"], answer


def _read_label(value, label_names, loc, col) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{loc}: field '{col}' should be text or an integer, got {type(value).__name__}")
    if label_names is None:
        return str(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < len(label_names):
            raise DataError(f"{loc}: field '{col}' label {value} is out of range 0..{len(label_names) - 1}")
        return label_names[value]
    for name in label_names:
        if value.strip().lower() == name.lower():
            return name
    raise DataError(f"{loc}: field '{col}' value {value!r} is not one of {', '.join(label_names)}")


def _read_bool(value, loc, col) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise DataError(f"{loc}: field '{col}' should be true/false, got {value!r}")
