"""What both frameworks run: the cases, the synthetic batches, and how a case is timed and its memory read.

Both sides get the same NumPy batches (the layout of reft_jax.data.batching, unpadded rows of random tokens
whose first quarter is the prompt), so the work per step is identical by construction.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable

import numpy as np

from reft_jax.config.streams import seed_of
from reft_jax.runtime import malloc

STEPS = ("student", "teacher")
FINETUNES = ("full", "lora")


@dataclasses.dataclass(frozen=True)
class Case:
    step: str  # "student" or "teacher"
    finetune: str  # "full" or "lora"

    @property
    def name(self) -> str:
        return f"{self.step}/{self.finetune}"


def cases(bench_cfg) -> list[Case]:
    return [Case(s, f) for s in bench_cfg.steps for f in bench_cfg.finetune]


def batches(batch_size: int, seq_len: int, vocab_size: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """A user batch and an alignment batch of full-length rows; half of the alignment prompts are harmful."""
    rng = np.random.default_rng(seed_of(seed, "bench_batches"))
    prompt = max(seq_len // 4, 1)
    loss_mask = np.zeros([batch_size, seq_len], np.int32)
    loss_mask[:, prompt:] = 1

    def one(harmful: np.ndarray) -> dict[str, np.ndarray]:
        return dict(input_ids=rng.integers(0, vocab_size, [batch_size, seq_len], dtype=np.int32),
                    attention_mask=np.ones([batch_size, seq_len], np.int32), loss_mask=loss_mask.copy(),
                    prompt_end=np.full([batch_size], prompt - 1, np.int32),
                    example_weight=np.ones([batch_size], np.float32), harmful=harmful.astype(np.int32))

    return dict(user=one(np.full([batch_size], -1)), align=one(np.arange(batch_size) % 2))


def refusal_direction(hidden_size: int, seed: int) -> np.ndarray:
    """A fixed unit vector standing in for R_l (the teacher step's cost does not depend on its value)."""
    r = np.random.default_rng(seed_of(seed, "bench_direction")).standard_normal(hidden_size).astype(np.float32)
    return r / np.linalg.norm(r)


def time_steps(step: Callable[[], object], sync: Callable[[object], None], warmup: int, iters: int):
    """Runs step() warmup times untimed, then iters times, each synchronised; returns (first-call seconds,
    timed seconds, first output). The first call includes compilation (jit, torch.compile)."""
    t0 = time.perf_counter()
    first = step()
    sync(first)
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        sync(step())
    return first_s, timed(step, sync, iters), first


def timed(step: Callable[[], object], sync: Callable[[object], None], iters: int) -> list[float]:
    """Seconds of `iters` synchronised calls of step()."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - t0)
    return times


@dataclasses.dataclass
class Prepared:
    """A case built, compiled and warmed up in a framework's process, kept there between rounds."""

    step: Callable[[], object]
    sync: Callable[[object], None]
    info: dict  # compile_s, first_loss, peak_memory_bytes, memory_source, ...


def measure_round(cache: dict, key, prepare: Callable[[], Prepared], iters: int, keep: bool) -> dict:
    """One round of a case: `prepare()` it on its first round (compile, warm-up: the `info` fields come back
    then), else one untimed call first (the other frameworks ran in between); then `iters` timed calls.
    keep: hold the prepared case for the next round, else free it now."""
    first = key not in cache
    if first:
        cache[key] = prepare()
    case = cache[key]
    if not first:
        case.sync(case.step())
    out = dict(case.info) if first else {}
    out["times_ms"] = [t * 1e3 for t in timed(case.step, case.sync, iters)]
    if not keep:
        del cache[key]
    return out


def time_stats(times) -> dict[str, float]:
    """Median and spread of step times (seconds in), in milliseconds."""
    ms = np.asarray(times) * 1e3
    return dict(step_ms=float(np.median(ms)), step_ms_min=float(ms.min()), step_ms_max=float(ms.max()),
                step_ms_std=float(ms.std()), timed_steps=len(ms))


def matmul_seconds(run: Callable[[], object], sync: Callable[[object], None], iters: int = 10) -> float:
    """Median seconds of one call of `run` after two warm-up calls."""
    return float(np.median(time_steps(run, sync, warmup=2, iters=iters)[1]))


class CaseFailed(Exception):
    """A case that compiled but failed to run (out of memory, say), with what was learnt before (`info`)."""

    def __init__(self, error: Exception, info: dict):
        super().__init__(error_text(error))
        self.info = info


def error_text(e: Exception) -> str:
    """One line for a case that failed (out of memory, say): a result, not a crash."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# Host memory, for CPU runs where no device allocator keeps statistics.

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class HostPeak:
    """Peak resident memory over a block, above the resident memory at its start (Linux: VmHWM reset through
    /proc/self/clear_refs). `bytes` is None where the kernel does not allow the reset. Memory that earlier
    blocks freed is first handed back to the system (by glibc or tcmalloc), else the block would reuse it unseen."""

    def __enter__(self):
        self.bytes = None
        gc.collect()
        malloc.release_free_memory()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._start = _status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM")
        if self._start is not None and peak is not None:
            self.bytes = max(peak - self._start, 0) * 1024
        return False


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of `packages` (None for one that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
