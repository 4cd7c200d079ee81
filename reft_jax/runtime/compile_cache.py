"""JAX's persistent compilation cache, on for every run: a program compiled once (a train step, a generation
step) is read back from disk by later stages, reruns and other processes instead of being compiled again.

Where: config `compile_cache` if set, else the `jax` folder of reft-jax's cache root (reft_jax.config.cache):
$REFT_JAX_CACHE/jax, by default $XDG_CACHE_HOME/reft-jax/jax (~/.cache/...); "off" in either disables it. JAX
keys each entry by the program, the jax/jaxlib version, the backend and its version, the XLA flags and the
compile options, so one folder is safe to share between runs, processes and installs: an entry made under other
settings is never read. JAX reads an entry that fails to decompress (a truncated or damaged file) as a miss with
a warning and compiles again; a folder that cannot be written falls back to no cache with one warning.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import jax

from reft_jax.config import cache

ENV = cache.ENV
MAX_BYTES = 8 << 30  # least recently used entries are evicted past this; a bound also makes JAX lock the folder
# JAX's own setting of the bound, which wins when set (-1: no bound). With a bound JAX reads every entry's size and
# access time at each write: about 0.1 s per compiled program in a folder of 3,000 (the test suite sets -1).
MAX_SIZE_ENV = "JAX_COMPILATION_CACHE_MAX_SIZE"
_PROBE_BYTES = 1 << 20  # what a cache entry of a real step program weighs, about: a full disk fails this write

_enabled: Path | None = None


def cache_dir(setting: str = "") -> Path | None:
    """The cache folder a run uses: `setting` (config `compile_cache`), else $REFT_JAX_CACHE/jax, else the
    default; None when the one that applies says off."""
    if setting.strip():
        return None if cache.is_off(setting) else Path(setting.strip()).expanduser()
    return None if cache.is_off(os.environ.get(ENV, "")) else cache.cache_folder("jax")


def _writable(folder: Path) -> str:
    """"" when an entry-sized file can be written in folder, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e.strerror or str(e)
    return ""


def enable(setting: str = "", *, log: bool = True) -> Path | None:
    """Turns the cache on for this process (before its first compilation; later calls keep the first folder).
    Returns the folder, or None when off or not writable (then a warning says why and the run goes on)."""
    global _enabled
    if _enabled is not None:
        return _enabled
    folder = cache_dir(setting)
    if folder is None:
        return None
    problem = _writable(folder)
    if problem:
        warnings.warn(f"compilation cache: cannot write to {folder} ({problem}); compiling without a cache "
                      f"(set {ENV} or config compile_cache to another folder, or 'off')", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # keep every program
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if MAX_SIZE_ENV not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _enabled = folder
    if log and jax.process_index() == 0:
        print(f"compilation cache: {folder} ({ENV}=off disables it)", file=sys.stderr, flush=True)
    return folder
