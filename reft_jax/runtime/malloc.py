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
import functools
import os
import sys
from collections.abc import Mapping

ENV = "REFT_JAX_TCMALLOC"
OFF = ("off", "none", "0", "false")
LIBRARY = "tcmalloc_minimal"  # Debian/Ubuntu: libtcmalloc-minimal4; the full gperftools library profiles too
# tcmalloc prints a "large alloc" line for every allocation over 1 GiB, which a real model's weights are.
QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def preload_env(environ: Mapping[str, str]) -> dict[str, str] | None:
    """environ with tcmalloc added to LD_PRELOAD; None when it is there already, turned off, or not installed."""
    if environ.get(ENV, "").strip().lower() in OFF or LIBRARY in environ.get("LD_PRELOAD", ""):
        return None
    library = ctypes.util.find_library(LIBRARY)
    if not library:
        return None
    return {**QUIET, **environ, "LD_PRELOAD": f"{environ.get('LD_PRELOAD', '')} {library}".strip()}


def run_on_tcmalloc() -> None:
    """Starts this process's command line again on tcmalloc (same interpreter, flags and arguments; the same pid,
    so schedulers and signals see no change), or returns when there is nothing to do."""
    env = preload_env(os.environ)
    if env is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def loaded() -> str | None:
    """The tcmalloc library mapped into this process, if any (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    return next((line.split()[-1] for line in maps.splitlines() if LIBRARY in line), None)


def describe(backend: str) -> str | None:
    """The line a run prints about its malloc: which one, and how to change it where that matters (CPU)."""
    library = loaded()
    if library:
        return f"memory allocator: tcmalloc ({library}; {ENV}=off keeps glibc's malloc)"
    if backend == "cpu" and sys.platform == "linux":
        return ("memory allocator: glibc's malloc; a CPU run is faster on tcmalloc (apt-get install "
                "libtcmalloc-minimal4: the reft-jax command then uses it)")
    return None


@functools.cache  # once per process, as the compilation cache's line
def report(backend: str) -> None:
    line = describe(backend)
    if line:
        print(line, file=sys.stderr, flush=True)
