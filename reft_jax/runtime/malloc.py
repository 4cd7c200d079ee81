"""tcmalloc under the `reft-jax` command, where it is installed.

glibc's malloc gives a large freed buffer back to the system and the next step faults it in again page by page:
XLA's CPU buffers are that pattern (a warm demo run: 11.4 M page faults, 11.8 s of system time in 30.9 s; on
tcmalloc 0.4 M, 1.0 s, 25.2 s; docs/benchmarks.md). A malloc is chosen when a process starts (LD_PRELOAD), so the
command starts itself again with tcmalloc preloaded, before it has done anything. $REFT_JAX_TCMALLOC=off keeps
glibc's malloc; the Python API runs on whatever malloc its process was started with.

This module imports nothing heavy: the command calls it first thing.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping

ENV = "REFT_JAX_TCMALLOC"
OFF = ("off", "none", "0", "false")
LIBRARY = "tcmalloc_minimal"  # Debian/Ubuntu: libtcmalloc-minimal4; the full gperftools library profiles too
# A malloc the user preloads is kept: two in one process would each take part of it.
MALLOCS = ("tcmalloc", "jemalloc", "mimalloc")
# tcmalloc prints a "large alloc" line for every allocation over 1 GiB, which a real model's weights are.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def preload_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """environ with tcmalloc added to LD_PRELOAD; None when it is turned off, not installed, or LD_PRELOAD names a
    malloc already (this one or the user's), or off Linux."""
    preload = environ.get("LD_PRELOAD", "")
    if (environ.get(ENV, "").strip().lower() in OFF or any(name in preload for name in MALLOCS)
            or sys.platform != "linux"):
        return None
    library = ctypes.util.find_library(LIBRARY)
    if not library:
        return None
    return {**QUIET, **environ, "LD_PRELOAD": f"{preload} {library}".strip()}


def run_on_tcmalloc() -> None:
    """Starts this process's command line again on tcmalloc (same interpreter, flags and arguments; the same pid,
    so schedulers and signals see no change), or returns when there is nothing to do."""
    env = preload_env(os.environ)
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def loaded(maps: str = "/proc/self/maps") -> str | None:
    """The malloc library preloaded into this process (tcmalloc, or the user's jemalloc / mimalloc), if any;
    maps: the process's memory map (Linux)."""
    try:
        with open(maps) as f:
            paths = {line.split()[-1] for line in f if "/lib" in line}
    except OSError:
        return None
    return next((p for p in sorted(paths) if any(f"/lib{name}" in p for name in MALLOCS)), None)


def describe(backend: str, maps: str = "/proc/self/maps") -> str | None:
    """The line a run prints about its malloc: which one, and how to change it where that matters (CPU)."""
    library = loaded(maps)
    if library and "tcmalloc" in library:
        return f"memory allocator: tcmalloc ({library}; {ENV}=off keeps glibc's malloc)"
    if library:
        return f"memory allocator: {library} (preloaded)"
    if backend == "cpu" and sys.platform == "linux":
        return ("memory allocator: glibc's malloc; a CPU run is faster on tcmalloc (apt-get install "
                "libtcmalloc-minimal4: the reft-jax command then uses it)")
    return None


def release_free_memory() -> None:
    """Hands what this process has freed back to the system, from whichever malloc holds it: tcmalloc keeps freed
    memory for reuse (glibc's malloc_trim does not reach it), glibc keeps some in its arenas."""
    process = ctypes.CDLL(None)
    release = getattr(process, "MallocExtension_ReleaseFreeMemory", None)  # tcmalloc's (gperftools) C API
    if release is not None:
        release()
        return
    trim = getattr(process, "malloc_trim", None)  # glibc
    if trim is not None:
        trim(0)


def report(backend: str, *, log: bool = True) -> None:
    """Prints `describe`'s line once per process: the first call decides (log=False: never), as the compilation
    cache's line."""
    global _reported
    if not _reported and log and (line := describe(backend)):
        print(line, file=sys.stderr, flush=True)
    _reported = True


_reported = False
