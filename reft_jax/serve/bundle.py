"""The filter bundle (`reft-jax export --filter --out DIR`): what scoring with the teacher's filter needs, in one
folder that no config or workdir is needed to read (`reft-jax serve --filter DIR`, `reft_jax.Filter.load(DIR)`):

    DIR/model/               the filter's model (the teacher, or the base model when filter.json's direction is
                             "base"; LoRA merged) with its tokenizer and chat template, a transformers folder
    DIR/filter.json          the teacher stage's filter.json, and `serving`: the prompt template, buckets, batch size,
                             min_response and dtypes of the run (teacher_filter.Serving)
    DIR/refusal_feature.npy  R_l at each filter layer
    DIR/probe.npz            the probe, when it ships
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import jax.numpy as jnp

from reft_jax import data as rdata
from reft_jax.errors import ReftError
from reft_jax.experiment.context import RunContext
from reft_jax.models import from_pretrained
from reft_jax.models.hf_io import save_model
from reft_jax.runtime import atomic
from reft_jax.stages.ref_teacher_filter import filter_model, teacher_settings

SETTINGS, FEATURE, PROBE, MODEL = "filter.json", "refusal_feature.npy", "probe.npz", "model"


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / SETTINGS).is_file() and (Path(path) / MODEL).is_dir()


def batch_size(folder: str | Path) -> int:
    """The batch size a bundle scores with, read before it loads."""
    return int(json.loads((Path(folder) / SETTINGS).read_text())["serving"]["batch_size"])


def write_bundle(ctx: RunContext, out: Path, *, force: bool = False) -> Path:
    """The bundle of the run's teacher filter at `out`, built beside it and renamed into place (as `export` does): it
    replaces a previous bundle whole, or with force any folder; never a file or the workdir."""
    from reft_jax import stages
    from reft_jax.serve.teacher_filter import Serving

    wd, out = ctx.workdir, Path(out)
    if out.exists() and not out.is_dir():
        raise ReftError(f"{out}: a file, not a folder; name a folder for --out")
    if out.absolute() in (wd.root.absolute(), *wd.root.absolute().parents):
        raise ReftError(f"{out}: holds the workdir; name another --out")
    if not force and out.is_dir() and any(out.iterdir()) and not is_bundle(out):
        raise ReftError(f"{out}: holds other files, not a filter bundle; name another --out, or --force to replace "
                        "the folder whole")
    stages.check_inputs(ctx, "teacher")  # the teacher this config trained
    settings = teacher_settings(wd)
    model = filter_model(ctx, settings)
    recorded = json.loads(wd.filter_settings.read_text())
    with atomic.staged(out) as build:
        save_model(model, ctx.tokenizer, build / MODEL)
        shutil.copyfile(wd.refusal_feature, build / FEATURE)
        if wd.probe.exists():
            shutil.copyfile(wd.probe, build / PROBE)
        (build / SETTINGS).write_text(json.dumps({**recorded, "serving": dataclasses.asdict(Serving.of(ctx.cfg))},
                                                 indent=2) + "\n")
    return out


def read_settings(folder: str | Path):
    """(settings, serving) of a bundle, without its model: the filter's `teacher_settings` and its Serving."""
    from reft_jax.serve.teacher_filter import Serving

    folder = Path(folder)
    try:
        recorded = json.loads((folder / SETTINGS).read_text())
        serving = Serving(**{**recorded["serving"], "buckets": tuple(recorded["serving"]["buckets"])})
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ReftError(f"{folder / SETTINGS}: not a filter bundle's settings ({e}); write one with "
                        "`reft-jax export --filter`") from None
    # teacher_settings reads a workdir's three files; a bundle holds them under its own names
    settings = teacher_settings(types.SimpleNamespace(refusal_feature=folder / FEATURE,
                                                      filter_settings=folder / SETTINGS, probe=folder / PROBE))
    return settings, serving


def read_bundle(folder: str | Path):
    """(model, tokenizer, settings, serving) of a bundle: TeacherFilter's arguments."""
    settings, serving = read_settings(folder)
    model = from_pretrained(Path(folder) / MODEL, jnp.dtype(serving.dtype), jnp.dtype(serving.param_dtype))
    return model, rdata.load_tokenizer(str(Path(folder) / MODEL)), settings, serving
