"""Hugging Face checkpoints: safetensors in, safetensors out, no PyTorch and never pickle.

Loading builds the model abstractly (`nnx.eval_shape`, no memory), then fills each parameter from the
memory-mapped safetensors files one tensor at a time, converting straight to the target dtype. Host memory
therefore holds the loaded parameters plus at most one parameter in flight, never two copies of the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from reft_jax.errors import CheckpointError
from reft_jax.models import gguf, hub
from reft_jax.models.config import load_hf_config, to_hf_dict
from reft_jax.models.layers import LoraConfig
from reft_jax.models.transformer import RuntimeOptions, Transformer, add_lora, merge_lora

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Buffers some old checkpoints carry; they are recomputed from the config, never learned.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

Placer = Callable[[tuple, tuple, Callable[[tuple], np.ndarray]], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Target:
    """Where one model parameter lives in a Hugging Face checkpoint."""

    name: str  # tensor name; contains "{i}" for the per-layer tensors of a stacked parameter
    transpose: bool  # HF Linear weights are [out, in], our kernels [in, out]
    stacked: bool


def _hf_target(path: tuple) -> _Target:
    parts = [str(p) for p in path]
    leaf = parts[-1]
    if parts == ["embed_tokens"]:
        return _Target("model.embed_tokens.weight", False, False)
    suffix = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    module = ".".join(parts[:-1])
    if parts[0] == "layers":
        return _Target(f"model.layers.{{i}}.{'.'.join(parts[1:-1])}.{suffix}", leaf == "kernel", True)
    if parts[0] in ("lm_head", "score"):
        return _Target(f"{module}.{suffix}", leaf == "kernel", False)
    return _Target(f"model.{module}.{suffix}", leaf == "kernel", False)


def _checkpoint_index(folder: Path) -> dict[str, Path]:
    """Maps every tensor name to the safetensors file holding it; refuses pickle checkpoints."""
    index_file, single = folder / INDEX_FILE, folder / SINGLE_FILE
    if index_file.exists():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index_file}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).exists()})
        if missing:
            raise CheckpointError(f"{index_file}: shard {missing[0]!r} is missing "
                                  f"({len(missing)} missing shard(s) in all)")
        return {name: folder / f for name, f in weight_map.items()}
    if single.exists():
        return {name: single for name in _tensor_names(single)}
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(others) == 1:
        return {name: folder / others[0] for name in _tensor_names(folder / others[0])}
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{folder / pickles[0]}: pickle checkpoints are never loaded (unpickling can run "
                              "arbitrary code); convert the checkpoint to safetensors")
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} found")


def _tensor_names(file: Path) -> list[str]:
    try:
        with safe_open(file, framework="numpy") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


class _Reader:
    """Reads tensors, or slices of them, from a set of safetensors files.

    Each read opens its file and closes it again: a file kept open stays memory-mapped, and the pages read
    through the map would count as a second copy of the weights in the process's resident memory.
    """

    def __init__(self, index: dict[str, Path]):
        self.index = index

    def shape(self, name: str) -> tuple[int, ...]:
        with self._open(name) as f:
            return tuple(f.get_slice(name).get_shape())

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        with self._open(name) as f:
            tensor = f.get_slice(name)
            return tensor[index] if index else tensor[:]

    def _open(self, name: str):
        if name not in self.index:
            raise CheckpointError(f"checkpoint has no tensor {name!r}")
        file = self.index[name]
        try:
            return safe_open(file, framework="numpy")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def _default_placer(shape, axes, read):
    del axes  # no mesh: one device holds everything
    return jnp.asarray(read(tuple(slice(None) for _ in shape)))


def checkpoint_folder(path: str | os.PathLike, param_dtype=jnp.float32) -> Path:
    """The local folder a model path names: a folder as it is, a hub id's snapshot (downloaded once into the hub's
    cache: models/hub.py), or a GGUF file's conversion in param_dtype (made once into the cache: gguf.convert)."""
    folder = hub.download(str(path)) if hub.is_hub_id(str(path)) else Path(path)
    return gguf.convert(folder, dtype=jnp.dtype(param_dtype).name) if gguf.is_gguf(folder) else folder


def from_pretrained(path: str | os.PathLike, dtype=jnp.float32, param_dtype=None, *, lora: LoraConfig | None = None,
                    attention: str = "xla", remat: str = "none", scan_layers: bool = False, seed: int = 0,
                    placer: Placer | None = None) -> Transformer:
    """Loads a Hugging Face checkpoint folder (config.json + safetensors, single file or sharded), a hub id
    (`org/name[@revision]`, downloaded once into the hub's cache: models/hub.py), or a GGUF file (converted once
    into $REFT_JAX_CACHE/gguf, default ~/.cache/reft-jax/gguf, and reused): see `checkpoint_folder`.

    dtype: compute dtype; param_dtype: storage dtype of the weights (default: dtype). lora: adapters to add
    (initialised from `seed`). placer(shape, axes, read) -> jax.Array places each parameter, reading only the
    slices it needs via read(index) (a mesh-aware placer reads just each device's shard); default: one device.
    """
    param_dtype = jnp.dtype(param_dtype or dtype)
    folder = checkpoint_folder(path, param_dtype)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder")
    cfg, _ = load_hf_config(folder)
    opts = RuntimeOptions(dtype=jnp.dtype(dtype), param_dtype=param_dtype, attention=attention, remat=remat,
                          scan_layers=scan_layers)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, opts, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    reader = _Reader(_checkpoint_index(folder))
    placer = placer or _default_placer

    used = set()
    for path_, variable in nnx.to_flat_state(state):
        target = _hf_target(path_)
        axes = variable.get_metadata().get("axes", ())
        read = _param_reader(reader, target, tuple(variable.shape), param_dtype, cfg.num_layers, used)
        variable.set_value(placer(tuple(variable.shape), axes, read))
    _check_unused(reader.index, used, cfg.tie_word_embeddings, folder)

    model = nnx.merge(graphdef, state)
    if lora:
        add_lora(model, lora, nnx.Rngs(seed))
    return model


def _param_reader(reader: _Reader, target: _Target, shape: tuple, dtype, num_layers: int, used: set):
    """A function index -> np.ndarray of the parameter's values at `index`, read from the checkpoint."""
    layer_shape = shape[1:] if target.stacked else shape
    expected = tuple(reversed(layer_shape)) if target.transpose else layer_shape
    names = [target.name.format(i=i) for i in range(num_layers)] if target.stacked else [target.name]
    for name in names:
        got = reader.shape(name)
        if got != expected:
            raise CheckpointError(f"{reader.index[name]}: tensor {name!r} has shape {got}, "
                                  f"expected {expected} from config.json")
        used.add(name)

    def read_one(name: str, index: tuple) -> np.ndarray:
        if target.transpose:  # read the transposed slice, then transpose it back (contiguous, so that
            # placing it on a device makes no further host copy)
            return np.ascontiguousarray(reader.read(name, tuple(reversed(index))).T, dtype=dtype)
        return np.asarray(reader.read(name, index), dtype=dtype)

    def read(index: tuple) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        if not target.stacked:
            return read_one(names[0], index)
        layers = range(num_layers)[index[0]]
        out = None
        for j, i in enumerate(layers):
            part = read_one(names[i], index[1:])
            if out is None:
                out = np.empty((len(layers), *part.shape), dtype)
            out[j] = part
        return out

    return read


def _check_unused(index: dict, used: set, tied: bool, folder: Path) -> None:
    unused = sorted(n for n in index if n not in used and not n.endswith(_IGNORED_SUFFIXES)
                    and not (tied and n == "lm_head.weight"))
    if unused:
        raise CheckpointError(f"{folder}: {len(unused)} tensor(s) the config does not account for, e.g. "
                              f"{unused[0]!r} (wrong model_type or architecture in config.json?)")


def host_array(value):
    """A parameter's whole value on this host: gathered when it is sharded across hosts (every process must
    call this for the same parameters, in the same order)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils  # deferred: multi-host runs only
        value = multihost_utils.process_allgather(value, tiled=True)
    return value


def _hf_tensors(model: Transformer, dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of the Hugging Face checkpoint, one at a time."""
    for path_, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        target = _hf_target(path_)
        value = host_array(variable[...])
        layers = [(target.name.format(i=i), value[i]) for i in range(value.shape[0])] if target.stacked \
            else [(target.name, value)]
        for name, array in layers:
            array = np.asarray(jax.device_get(array)).astype(dtype or array.dtype)
            yield name, np.ascontiguousarray(array.T if target.transpose else array)


def save_pretrained(model: Transformer, path: str | os.PathLike, *, dtype=None,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Writes config.json, generation_config.json (causal LMs) and safetensors (sharded with an index above
    max_shard_bytes) that transformers loads. LoRA adapters are merged into a copy first; `dtype` casts the weights (default: as stored).
    In a multi-process run every process must call it (weights spread over hosts are gathered); process 0
    writes."""
    if model.opts.lora is not None:
        model = merge_lora(nnx.clone(model))
    folder = Path(path)
    if jax.process_index() != 0:
        for _ in _hf_tensors(model, dtype):  # take part in the gathers, write nothing
            pass
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    dtype = jnp.dtype(dtype) if dtype is not None else None
    hf = to_hf_dict(model.cfg)
    hf["dtype"] = str(jnp.dtype(dtype or model.opts.param_dtype))
    (folder / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if not model.cfg.is_classifier:  # generate() reads its defaults (the special tokens) from here
        tokens = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
        (folder / GENERATION_CONFIG).write_text(json.dumps(tokens, indent=2) + "\n", encoding="utf-8")

    shards: list[dict[str, np.ndarray]] = [{}]
    size = total_size = 0
    files = []
    for name, array in _hf_tensors(model, dtype):
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            files.append(_write_shard(folder, shards[-1], len(files)))
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
        total_size += array.nbytes
    if not files:  # everything fits one file: no index
        (folder / INDEX_FILE).unlink(missing_ok=True)
        save_file(shards[-1], folder / SINGLE_FILE, metadata={"format": "pt"})
        return folder
    files.append(_write_shard(folder, shards[-1], len(files)))
    # Name shards model-0000k-of-0000n once n is known.
    weight_map, n = {}, len(files)
    for k, (tmp, names) in enumerate(files):
        final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tmp.rename(folder / final)
        weight_map.update({name: final for name in names})
    index = {"metadata": {"total_size": int(total_size)}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (folder / SINGLE_FILE).unlink(missing_ok=True)
    return folder


def _write_shard(folder: Path, tensors: dict, k: int):
    tmp = folder / f".shard-{k}.safetensors.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    names = list(tensors)
    tensors.clear()
    return tmp, names


def save_model(model: Transformer, tokenizer, folder: Path) -> None:
    """A Hugging Face folder with the tokenizer, whose special tokens generation_config.json names (a model
    from random init has none in its config); every process takes part (gathers), process 0 writes."""
    save_pretrained(model, folder)
    if jax.process_index() == 0:
        tokenizer.save_pretrained(str(folder))
        if not model.cfg.is_classifier:
            ids = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
            config = json.loads((folder / GENERATION_CONFIG).read_text())
            config.update({k: v for k, v in ids.items() if config.get(k) is None and v is not None})
            (folder / GENERATION_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
