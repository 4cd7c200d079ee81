"""tcmalloc under the `reft-jax` command (reft_jax/runtime/malloc.py): a process started without it starts itself
again with it, once, and not when it is turned off; the demo run's command ends up on it (its /proc/self/maps)."""

import ctypes.util
import subprocess
import sys

import pytest
from conftest import TCMALLOC, without_preload

from reft_jax.runtime import malloc

needs_tcmalloc = pytest.mark.skipif(not TCMALLOC,
                                    reason="tcmalloc not installed (apt-get install libtcmalloc-minimal4)")

# Prints a line, restarts on tcmalloc as the command does, then prints the library mapped and the argv it got.
PROGRAM = ("import sys; print('started', flush=True); from reft_jax.runtime import malloc; "
           "malloc.run_on_tcmalloc(); print('loaded', malloc.loaded(), sys.argv[1:])")


def _run(**env):
    out = subprocess.run([sys.executable, "-c", PROGRAM, "a", "--b=c"], capture_output=True, text=True,
                         env=without_preload(**env), timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@needs_tcmalloc
def test_a_process_restarts_once_on_tcmalloc_with_its_arguments():
    lines = _run()
    assert lines[:2] == ["started", "started"]  # the same command line, run again
    assert lines[2].startswith("loaded /") and malloc.LIBRARY in lines[2] and lines[2].endswith("['a', '--b=c']")
    assert len(lines) == 3


def test_the_line_names_the_malloc_the_process_has(tmp_path):
    def maps(library):  # a memory map as Linux writes it
        path = tmp_path / library
        path.write_text(f"7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/{library}\n"
                        "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
        return str(path)

    assert malloc.describe("gpu", maps("libtcmalloc_minimal.so.4.5.10")).startswith(
        "memory allocator: tcmalloc (/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10; REFT_JAX_TCMALLOC=off")
    assert malloc.describe("cpu", maps("libjemalloc.so.2")) == \
        "memory allocator: /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (preloaded)"
    assert "glibc's malloc; a CPU run is faster on tcmalloc" in malloc.describe("cpu", maps("libm.so.6"))
    assert malloc.describe("gpu", maps("libm.so.6")) is None  # a device's memory is not malloc's: nothing to say
    assert malloc.loaded(str(tmp_path / "absent")) is None


@needs_tcmalloc
def test_only_the_command_restarts_not_a_script_that_calls_main():
    script = ("import sys; print('started', flush=True); sys.argv[1:] = ['--help']; "
              "from reft_jax.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=without_preload())
    assert out.returncode == 0 and out.stdout.count("started") == 1 and "usage: reft-jax" in out.stdout, out.stderr
    command = subprocess.run([sys.executable, "-m", "reft_jax.cli", "--help"], capture_output=True, text=True,
                             env=without_preload(PYTHONVERBOSE="1"))  # prints each import: twice when restarted
    assert command.returncode == 0, command.stderr[-2000:]
    assert command.stderr.count("import 'reft_jax.runtime.malloc'") == 2


@needs_tcmalloc
def test_no_restart_when_preloaded_or_turned_off():
    preloaded = _run(LD_PRELOAD=ctypes.util.find_library(malloc.LIBRARY))
    assert preloaded[0] == "started" and preloaded[1].startswith("loaded /") and len(preloaded) == 2
    assert _run(**{malloc.ENV: "off"}) == ["started", "loaded None ['a', '--b=c']"]


def test_the_preload_keeps_what_was_there(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: f"lib{name}.so.4")
    env = malloc.preload_env({"LD_PRELOAD": "libother.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == "libother.so libtcmalloc_minimal.so.4" and env["PATH"] == "/bin"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 40)  # no line per weight tensor over 1 GiB
    assert malloc.preload_env({"LD_PRELOAD": "/x/libtcmalloc_minimal.so.4"}) is None
    assert malloc.preload_env({"LD_PRELOAD": "libjemalloc.so.2"}) is None  # the user's own malloc stays alone
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert malloc.preload_env({}) is None  # not installed: glibc's malloc, no restart


@needs_tcmalloc
def test_the_demo_command_ran_on_tcmalloc(demo_run):
    """conftest starts the demo run without LD_PRELOAD: the command restarted itself and said so."""
    stderr = (demo_run.parent / "demo_tiny.stderr").read_text()
    assert "memory allocator: tcmalloc (/" in stderr and stderr.count("memory allocator:") == 1


# 400 MB freed, then a block that takes 200 MB: the block's peak must show them, not reuse the freed memory unseen.
HOST_PEAK = ("import numpy as np; from reft_jax.bench.workload import HostPeak\n"
             "a = np.ones(50_000_000); del a\n"
             "with HostPeak() as peak:\n    b = np.ones(25_000_000); del b\n"
             "print(peak.bytes)")


@pytest.mark.parametrize("preload", [pytest.param(True, marks=needs_tcmalloc), False], ids=["tcmalloc", "glibc"])
def test_the_benchmarks_host_peak_sees_a_block_after_a_larger_free(preload):
    """`reft-jax bench`'s PyTorch memory on a CPU: tcmalloc keeps freed memory, which glibc's malloc_trim cannot
    hand back (the block read 0 bytes on tcmalloc before `malloc.release_free_memory`)."""
    env = without_preload(**({"LD_PRELOAD": ctypes.util.find_library(malloc.LIBRARY)} if preload else {}))
    out = subprocess.run([sys.executable, "-c", HOST_PEAK], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 180 * 2**20 < int(out.stdout) < 260 * 2**20  # the 200 MB (190.7 MiB) block, and little else
