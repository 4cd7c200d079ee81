"""What each stage of a run costs: wall time, accelerator-seconds, model FLOPs and, for a training stage, the
median seconds per step (`STAGE_DIR/cost.json`).

Accelerator-seconds are wall seconds times the devices the stage held (all of them, for every stage). FLOPs
are model FLOPs (reft_jax.models.flops) of the batches the stage ran, padded shapes included since the hardware
computes them; a resumed stage counts the FLOPs of all its steps but the wall time of its last invocation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import jax

from reft_jax.data import Batch
from reft_jax.models import ModelConfig, flops
from reft_jax.runtime import parallel
from reft_jax.runtime.workdir import COST, METRICS


class StageCost:
    """with StageCost(folder, "teacher") as stage: ...; stage.flops = ...  -> folder/cost.json (process 0)."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name, self.flops = Path(folder), name, 0

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and jax.process_index() == 0:
            wall = time.perf_counter() - self._t0
            devices = jax.device_count()
            record = {"stage": self.name, "wall_s": wall, "device_s": wall * devices, "devices": devices,
                      "platform": jax.devices()[0].platform, "flops": int(self.flops)}
            step_s = _step_seconds(self.folder / METRICS)
            if step_s is not None:
                record["step_s"] = step_s
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / COST).write_text(json.dumps(record, indent=2) + "\n")
        return False


def _step_seconds(metrics: Path) -> float | None:
    """A trained stage's median step time (its loop's last record), None for a stage without a loop."""
    if not metrics.exists():
        return None
    lines = metrics.read_text().splitlines()
    return json.loads(lines[-1]).get("step_s") if lines else None


def read(folder: Path) -> dict | None:
    path = Path(folder) / COST
    return json.loads(path.read_text()) if path.exists() else None


def forward_passes(cfg: ModelConfig, batch_at: Callable[[int], Batch], steps: int) -> int:
    """Forward passes (a frozen teacher, a scoring pass) over `steps` batches."""
    return forward_passes_of(cfg, (parallel.global_shape(batch_at(i)) for i in range(steps)))


def forward_passes_of(cfg: ModelConfig, shapes: Iterable[tuple[int, int]]) -> int:
    """Forward passes over batches of the given (rows, tokens) shapes, e.g. one per judged sequence."""
    return sum(flops.forward_flops(cfg, b, t) for b, t in shapes)


def total(stages: list[dict | None]) -> dict:
    """Sum of stage costs; a stage without a cost record makes the totals None."""
    if any(s is None for s in stages):
        return {"wall_s": None, "device_s": None, "flops": None}
    return {k: sum(s[k] for s in stages) for k in ("wall_s", "device_s", "flops")}
