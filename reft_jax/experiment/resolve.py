"""A run's config resolved against its workdir, once, before any stage: what the config names indirectly becomes
a concrete local path that every stage then reads.

- data.local_dir: each source named in data.local_files is read from that folder;
- a hub id model.path is downloaded (once, into the hub's cache) and read from there;
- a GGUF model.path is converted (once) into WORKDIR/base_model, a Hugging Face folder with the tokenizer;
- data.demo: the demo data and tokenizer are generated (once) under WORKDIR/demo and every source points there;
- data.tokenizer = "train": a byte-level BPE is trained (once) on the sources' text into WORKDIR/tokenizer.

Files are written by process 0; every process waits for them (parallel.sync).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from reft_jax import data as rdata
from reft_jax.config.schema import RunConfig
from reft_jax.config.streams import seed_of
from reft_jax.config.typed import replace
from reft_jax.errors import ConfigError
from reft_jax.models import gguf, hub
from reft_jax.runtime import parallel
from reft_jax.runtime.workdir import Workdir

# Where each data source of the demo comes from: its generated split.
DEMO_SPLITS = {
    "data.alignment.harmful": "alignment_harmful", "data.alignment.harmless": "alignment_harmless",
    "data.user.source": "task_train", "data.user.harmful_source": "attack",
    "data.pool.harmful": "alignment_harmful", "data.pool.harmless": "alignment_harmless",
    "data.eval.harmful": "harmful_eval", "data.eval.task_source": "task_test",
}


def resolve(cfg: RunConfig, workdir: Workdir) -> RunConfig:
    return resolve_tokenizer(resolve_demo(resolve_model(resolve_local_data(cfg), workdir), workdir), workdir)


def resolve_local_data(cfg: RunConfig) -> RunConfig:
    """With data.local_dir, points every source named in data.local_files at its file under that folder. A source
    there is a relative path, a source mapping (SourceSpec's fields) with a relative `path`, or a list of them."""
    if not cfg.data.local_dir:
        return cfg
    root = Path(cfg.data.local_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.local_dir: {root} is not a folder")

    def is_source(value) -> bool:  # a leaf of local_files; any other mapping is a section of data
        return not isinstance(value, dict) or "path" in value

    def flat(tree, prefix):
        for key, value in tree.items():
            yield from [(prefix + key, value)] if is_source(value) else flat(value, f"{prefix}{key}.")

    def local(source):
        if isinstance(source, (list, tuple)):
            return tuple(local(s) for s in source)
        return {**source, "path": str(root / source["path"])} if isinstance(source, dict) else str(root / source)

    for key, relative in flat(cfg.data.local_files, "data."):
        if not _users(cfg, key):
            cfg = replace(cfg, key, local(relative))
    return cfg


def _users(cfg: RunConfig, key: str) -> bool:
    """Whether the source `key` is the user's own (--data FILE): their data, and the task test set that goes with
    it (theirs, or none), are never replaced by the config's local or demo files."""
    return cfg.data.user.mix == "none" and (key.startswith("data.user.") or key == "data.eval.task_source")


def resolve_model(cfg: RunConfig, workdir: Workdir) -> RunConfig:
    """A hub id model.path (`org/name[@revision]`) is downloaded (once, into the hub's cache) and becomes its
    local snapshot folder; a GGUF model.path (or model.path + model.gguf_file) is converted once into
    WORKDIR/base_model (by gguf.convert, the conversion from_pretrained's GGUF files go through too)."""
    m = cfg.model
    if m.path and not m.gguf_file and hub.is_hub_id(m.path):
        if jax.process_index() == 0:
            hub.download(m.path)
        parallel.sync("hub download")
        return replace(cfg, "model.path", str(hub.download(m.path)))  # the others find it in the cache
    path = Path(m.path).expanduser() / m.gguf_file if m.gguf_file else Path(m.path)
    if not m.path or not gguf.is_gguf(path):
        return cfg
    if jax.process_index() == 0:
        gguf.convert(path, workdir.base_model, dtype=jnp.dtype(m.param_dtype).name)
    parallel.sync("GGUF conversion")
    return replace(replace(cfg, "model.path", str(workdir.base_model)), "model.gguf_file", "")


def resolve_demo(cfg: RunConfig, workdir: Workdir) -> RunConfig:
    """With data.demo, generates the demo data (once) under WORKDIR/demo and points the sources at it."""
    if not cfg.data.demo:
        return cfg
    folder = workdir.demo
    if jax.process_index() == 0 and not (folder / "tokenizer" / "tokenizer.json").exists():
        rdata.demo.write(str(folder), seed=seed_of(cfg.seed, "demo_data"))
    parallel.sync("demo data")
    for key, split in DEMO_SPLITS.items():
        if not _users(cfg, key):
            cfg = replace(cfg, key, str(folder / f"{split}.jsonl"))
    return replace(cfg, "data.tokenizer", str(folder / "tokenizer"))


def resolve_tokenizer(cfg: RunConfig, workdir: Workdir) -> RunConfig:
    """With data.tokenizer = "train", trains (once) a byte-level BPE on the configured sources' text."""
    if cfg.data.tokenizer != "train":
        return cfg
    folder = workdir.tokenizer
    if jax.process_index() == 0 and not (folder / "tokenizer.json").exists():
        rdata.demo.train_tokenizer(_source_texts(cfg), str(folder), vocab_size=cfg.data.tokenizer_vocab_size)
    parallel.sync("tokenizer")
    return replace(cfg, "data.tokenizer", str(folder))


def _source_texts(cfg: RunConfig) -> list[str]:
    d = cfg.data
    texts = []
    for source in [*rdata.as_sources(d.alignment.harmful), d.alignment.harmless]:
        texts += [t for ex in rdata.load_examples(source, with_response=None) for t in (ex["prompt"], ex["response"])]
    for source in [*rdata.as_sources(d.pool.harmful), d.pool.harmless]:
        texts += [ex["prompt"] for ex in rdata.load_examples(source, with_response=False)]
    if d.user.mix == "none":
        return texts + [t for ex in rdata.load_examples(d.user.source, with_response=None)
                        for t in (ex["prompt"], ex["response"])]
    texts += [t for ex in rdata.load_examples(d.user.source or None, task=d.user.task)
              for t in (ex["prompt"], ex["response"])]
    if d.user.harmful_source:
        texts += [t for ex in rdata.load_examples(d.user.harmful_source) for t in (ex["prompt"], ex["response"])]
    return texts
