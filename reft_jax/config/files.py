"""Config files: `configs/NAME.py` found in the installed package, loaded with `--config.a.b=value` overrides
through ml_collections' config flags, as the command line and `reft_jax.load_config` read them."""

from __future__ import annotations

import dataclasses
import difflib
import traceback
import typing
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # configs/ as installed (the checkout's in editable mode)
if not CONFIGS.is_dir():
    CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # a checkout on PYTHONPATH, not installed
DEMO_CONFIG = CONFIGS / "demo.py"


def config_path(path: str) -> str:
    """A config file: the path as given when it exists, else `configs/NAME.py` from the installed package."""
    if Path(path).is_file() or not path.startswith("configs/"):
        return path
    return str(CONFIGS / path.removeprefix("configs/"))


def load_config(config_file: str, overrides=()):
    """The config file with --config.a.b=value overrides applied, through ml_collections' config flags."""
    # Imported on use: `reft-jax --help` answers at once, and `bench` never starts a JAX backend in the parent
    # process (each framework runs in its own child).
    from absl import flags
    from ml_collections import config_flags

    from reft_jax.errors import ConfigError

    path, colon, arg = config_file.partition(":")  # FILE:ARG passes ARG to get_config
    if not Path(config_path(path)).is_file():
        raise ConfigError(f"{path}: config file not found")
    config_file = config_path(path) + colon + arg
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        raise ConfigError(f"unrecognised argument {bad[0]!r} (overrides look like --config.a.b=value)")
    argv = ["reft-jax", f"--config={config_file}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=config_file, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        values(argv)
        return values.config
    except Exception as e:  # noqa: BLE001 -- the config file is the user's code: whatever it raises is one line
        line = _raised_in(e, Path(config_path(path)))
        if line is None and not isinstance(e, (flags.Error, AttributeError, KeyError, TypeError, ValueError)):
            raise
        if line is not None:
            first = e.msg if isinstance(e, SyntaxError) else (str(e).strip() or type(e).__name__).splitlines()[0]
            raise ConfigError(f"{path} line {line}: {type(e).__name__}: {first} (the config file raised it; "
                              "--debug shows the traceback)") from e
        message = next(filter(None, map(_diagnose, overrides)), None) or " ".join(str(e).split())
        raise ConfigError(f"{config_file}: {message}") from None


def _raised_in(e: BaseException, file: Path) -> int | None:
    """The line of the config `file` whose code raised `e` (a syntax error in it included), None when elsewhere."""
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == file.resolve():
        return e.lineno
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == file.resolve()]
    return lines[-1] if lines else None


def _diagnose(override: str) -> str | None:
    """What is wrong with one --config.a.b=value, in plain words: an unknown field (with the nearest valid one),
    or a value that is not of the field's type; None when neither (another override is the problem)."""
    from reft_jax.config import schema

    path, _, value = override.removeprefix("--config.").partition("=")
    paths = schema.field_help()
    for prefix in ("model.init.", "data.local_files."):  # free-form mappings: any key
        if path.startswith(prefix):
            return None
    if path not in paths:
        near = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]}?)" if near else " (fields: reft_jax/config/schema.py)"
        return f"--config.{path}: unknown config field{hint}"
    section, _, name = path.rpartition(".")
    cls = schema.RunConfig
    for part in filter(None, section.split(".")):
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls):
        tp = typing.get_type_hints(cls).get(name)
        kind = {int: "an integer", float: "a number", bool: "true or false"}.get(tp)
        if kind and not _parses_as(tp, value):
            return f"--config.{path}={value}: expected {kind}"
    return None


def _parses_as(tp, value: str) -> bool:
    if tp is bool:
        return value.lower() in ("true", "false", "1", "0")
    try:
        tp(value)
        return True
    except ValueError:
        return False
