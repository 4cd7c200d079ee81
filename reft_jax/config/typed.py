"""Typed configs: how a config field is declared (`option`, `section`, `config`), how a ConfigDict tree becomes
the frozen dataclasses of `reft_jax.config.schema` (`build`: every field gets its declared type; unknown or
missing fields and values outside a field's choices or its minimum and maximum are errors naming the field) and those
dataclasses a ConfigDict (`config_dict`), and what is done with a typed config (`leaf_fields`, `replace`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

import ml_collections

from reft_jax.errors import ConfigError


def option(default, help: str, *, choices: tuple[str, ...] = (), minimum: float | None = None,
           maximum: float | None = None) -> Any:
    """A config field: its default, what it means (`help`), for a str field the values it may take, and for a count,
    period, step or rate field the least (and greatest) value that makes sense (steps of a stage that trains,
    periods: 1)."""
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    if isinstance(default, dict):  # mutable: each config gets its own copy
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls) -> Any:
    """A nested section: its defaults are its own fields', its meaning its class docstring."""
    return dataclasses.field(default_factory=cls, metadata={"help": cls.__doc__})


config = dataclasses.dataclass(frozen=True)


def config_dict(cls) -> ml_collections.ConfigDict:
    """A typed config class as a ConfigDict, every field at its default."""
    tree = ml_collections.ConfigDict()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(tp):
            tree[field.name] = config_dict(tp)
        elif tp == int | None:  # typed, so that `--config.x=5` on a None default is parsed as an int
            tree[field.name] = ml_collections.FieldReference(default, field_type=int)
        elif tp == tuple[int, ...] | None:  # `--config.x=0,1,2` on a None default: a tuple
            tree[field.name] = ml_collections.FieldReference(default, field_type=tuple)
        elif isinstance(default, dict):
            tree[field.name] = ml_collections.ConfigDict(default)
        else:
            tree[field.name] = default
    return tree


def leaf_fields(value, path: str = "") -> dict:
    """A typed config (or one of its sections, found at `path`) as its leaf fields: dotted path -> value."""
    if not dataclasses.is_dataclass(value):
        return {path: value}
    out = {}
    for field in dataclasses.fields(value):
        out.update(leaf_fields(getattr(value, field.name), f"{path}.{field.name}" if path else field.name))
    return out


def replace(cfg, path: str, value):
    """A copy of a typed config with the dotted field `path` set, e.g. replace(cfg, "model.path", folder); for
    the config's resolution at its edge (generated demo data, a converted checkpoint), not for choosing code."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace(getattr(cfg, head), rest, value)})


# -- conversion ---------------------------------------------------------------------------------------

def build(cls, tree, where: str):
    """The typed config `cls` of a tree of plain values (a ConfigDict's `to_dict()`); `where` prefixes the field
    names in errors ("" at the root, "data." in the data section)."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where or 'config'}: expected a section, got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown config field")
    missing = sorted(set(fields) - set(tree))
    if missing:
        raise ConfigError(f"{where}{missing[0]}: missing config field")
    values = {}
    for name, field in fields.items():
        value = _convert(hints[name], tree[name], where + name)
        allowed = field.metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(f"{where}{name}: {value!r} is not one of {', '.join(allowed)}")
        least = field.metadata.get("minimum")
        if least is not None and value is not None and value < least:
            raise ConfigError(f"{where}{name}: {value} should be at least {least}")
        most = field.metadata.get("maximum")
        if most is not None and value is not None and value > most:
            raise ConfigError(f"{where}{name}: {value} should be at most {most}")
        values[name] = value
    return cls(**values)


def _convert(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where + ".")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for member in typing.get_args(tp):
            try:
                return _convert(member, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not {' or '.join(_name(m) for m in typing.get_args(tp))}")
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if item is str:  # a selection given on the command line as "a,b" (a string, or one in a tuple)
            value = [part for entry in ([value] if isinstance(value, str) else value) for part in str(entry).split(",")]
        elif isinstance(value, (list, tuple)) and list(value) == [""]:  # `--config.x=` on a tuple field: empty
            value = ()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} is not a list")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: {value!r} is not None")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not true or false")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is dict and isinstance(value, dict):
        return value
    if tp in (int, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: {value!r} is not {_name(tp)}")


def _name(tp) -> str:
    return {type(None): "None", dict: "a mapping", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
