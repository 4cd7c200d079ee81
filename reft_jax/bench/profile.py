"""Where a compiled step spends its device time: a `jax.profiler` trace of a few steps, summed per XLA op.

`reft-jax bench --config.bench.profile_dir=DIR` traces each JAX case after its timed steps into DIR/<case>/ (open
it in TensorBoard's profile plugin or Perfetto) and writes the per-op summary of `op_times` beside it.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path
from typing import Callable

import jax


def trace_steps(step: Callable[[], object], folder: Path, steps: int = 2) -> None:
    """Profiles `steps` synchronised calls of step() into `folder` (a Perfetto trace included)."""
    folder.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(folder), create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(step())


def op_times(folder: Path, steps: int = 2, top: int = 30) -> list[dict]:
    """The `top` ops by time per step on the accelerator (on a CPU: on XLA's own threads), each with its
    milliseconds per step and share of the summed op time."""
    traces = sorted(folder.glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"{folder}: no perfetto_trace.json.gz (was it written by trace_steps?)")
    data = json.load(gzip.open(traces[-1]))
    events = data["traceEvents"] if isinstance(data, dict) else data
    lanes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    device = {pid for pid, name in lanes.items() if name.startswith("/device:")}

    def is_op(e) -> bool:
        if device:
            return e["pid"] in device
        # XLA:CPU runs its ops on its own threads (tf_XLAEigen, and tf_XLAPjRtCpuClient for small programs);
        # the Python thread holds Python frames, and ThunkExecutor events are the runtime's wrappers.
        return threads.get((e["pid"], e.get("tid")), "").startswith("tf_XLA") and "Thunk" not in e["name"]

    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and is_op(e):
            totals[e["name"]] += float(e.get("dur", 0.0))  # microseconds
    whole = sum(totals.values()) or 1.0
    return [dict(op=name, ms_per_step=us / 1e3 / steps, share=us / whole) for name, us in totals.most_common(top)]
