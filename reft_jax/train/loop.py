"""The training loop of every run (reft_jax.train.runs.train).

It owns what every run needs around a pure step: resuming from the latest checkpoint, metrics (JSONL,
TensorBoard, optionally Weights & Biases), a progress bar, periodic checkpoints, a checkpoint on SIGTERM
(preemption) or Ctrl-C, a clean stop when the loss is not finite, and the run's own every-N hooks (the teacher's
recomputation of the refusal feature). Batches are a function of the step index, so the
step is the whole data position and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from reft_jax.config.schema import CheckpointSection, LoggingSection
from reft_jax.errors import Interrupted, Preempted, ReftError
from reft_jax.runtime.checkpoint import Checkpointer
from reft_jax.runtime.state import TrainState
from reft_jax.runtime.workdir import CHECKPOINTS, METRICS

StepFn = Callable[[Any, int], tuple[Any, dict]]  # (state, step) -> (state, metrics)


class Hook:
    """An every-N callback of the loop, e.g. the teacher's recomputation of the refusal feature.

    `__call__(state, step)` runs before step `step` whenever step % every == 0 (the first step of a run or of a
    resumed run included) and once more after the last step (step == the run's steps), before the final
    checkpoint. It returns metrics (a dict of floats, often empty) that go into the log record of the step that
    follows, or of the last step for the final call; a record with hook metrics is written whatever
    logging.every says. `carry` is a pytree of arrays the hook keeps between calls (its result, read by the
    step); the loop checkpoints it with the train state and restores it on resume.
    """

    every: int = 1
    carry: Any = None

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        raise NotImplementedError

    def calls(self, steps: int) -> int:
        """How often a run of `steps` steps from the start calls the hook (a resumed run calls it once more)."""
        return len(range(0, steps, self.every)) + (steps > 0)

    def flops(self, cfg) -> int:
        """The model FLOPs of one call (cfg: the trained model's ModelConfig), which a run's cost counts: none unless
        the hook runs the model."""
        del cfg
        return 0


class TrainingDiverged(ReftError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """A stage's length, and the run's checkpoint and logging sections."""

    steps: int
    checkpoint: CheckpointSection = CheckpointSection()
    logging: LoggingSection = LoggingSection()


class MetricsLog:
    """metrics.jsonl (one object per logged step), TensorBoard events and W&B; only process 0 writes."""

    def __init__(self, workdir: Path, name: str, resume_step: int, cfg: LoopConfig, run_config: dict | None):
        self.enabled = jax.process_index() == 0
        self.path = workdir / METRICS
        self.tb = self.wandb = None
        if not self.enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        if cfg.logging.tensorboard:
            from tensorboardX import SummaryWriter  # deferred: only runs that log to TensorBoard need it
            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        if cfg.logging.wandb:
            try:
                import wandb  # an optional dependency (reft-jax[wandb])
            except ImportError:
                raise ReftError("logging.wandb=True but wandb is not installed (pip install 'reft-jax[wandb]')") \
                    from None
            self.wandb = wandb.init(project="reft-jax", name=name, config=run_config, resume="allow")

    def _truncate_after(self, step: int) -> None:
        """A resumed run rewrites the steps after its checkpoint, so the log matches an uninterrupted run."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class _StopFlag:
    """Turns SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) into a flag the loop checks between steps,
    which then checkpoints and stops (restoring the old handlers afterwards). A second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.raised = 0  # the signal received, 0 = none
        self._previous = None

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                              if s != signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN}  # `cmd &` ignores it
        except ValueError:  # not the main thread: no handler, preemption then kills the run
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT == self.raised:
            raise KeyboardInterrupt
        self.raised = max(self.raised, signum)  # SIGTERM (15) over SIGINT (2): a preempted job is requeued

    def anywhere(self) -> int:
        """The signal any process got (SIGTERM first), 0 = none: the processes of a run stop (and checkpoint) at the
        same step, though the signal reaches them at different moments. One small all-gather per step in a
        multi-process run."""
        if jax.process_count() == 1:
            return self.raised
        from jax.experimental import multihost_utils
        return int(np.max(multihost_utils.process_allgather(np.asarray(self.raised))))

    def __exit__(self, exc_type, *exc):
        if self._previous is None:
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        if self.raised == signal.SIGTERM and exc_type is not None:  # stopping: a second one must not cut the exit
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif self.raised and exc_type is None:  # it came after the last step's check: the caller's handler takes it
            signal.raise_signal(self.raised)


def _checkpointed(state: Any) -> Any:
    """A TrainState's checkpoint leaves its frozen part out (TrainState.checkpointed); other states are saved whole."""
    return state.checkpointed() if isinstance(state, TrainState) else state


def run(name: str, workdir: str | Path, cfg: LoopConfig, state: Any, step_fn: StepFn, *,
        hooks: Sequence[Hook] = (), meta: dict | None = None, run_config: dict | None = None) -> Any:
    """Runs `step_fn` from the latest checkpoint in `workdir/checkpoints` (or from `state`) up to cfg.steps,
    calling `hooks` (see Hook) between steps. Around the steps it owns the progress bar, the metrics log (every
    cfg.logging.every steps; the last record has `step_s`, the median seconds of a step of this invocation after its
    first), checkpoints (every cfg.checkpoint.every steps, at the end and on SIGTERM or Ctrl-C) and the stop on a
    non-finite loss.
    meta: JSON facts the run must agree with on resume (e.g. the seed).
    Returns the final state.
    """
    workdir = Path(workdir)
    meta = dict(meta or {})
    checkpoints = Checkpointer(workdir / CHECKPOINTS, max_to_keep=cfg.checkpoint.max_to_keep)
    restored = checkpoints.restore_latest(_checkpointed(state), [h.carry for h in hooks])
    start = restored[0] if restored else 0
    if restored:
        _, saved, carries, saved_meta = restored
        state = state.replace(**saved) if isinstance(state, TrainState) else saved
        if jax.process_index() == 0:
            print(f"resuming {name} from step {start} ({checkpoints.directory})", file=sys.stderr, flush=True)
        for hook, carry in zip(hooks, carries):
            hook.carry = carry
        changed = {k: (saved_meta.get(k), v) for k, v in meta.items() if saved_meta.get(k) != v}
        if changed:
            key, (old, new) = next(iter(changed.items()))
            raise ReftError(f"{workdir}: cannot resume {name}: its checkpoint has {key}={old!r}, the config "
                            f"{key}={new!r} (use a new workdir)")
    log = MetricsLog(workdir, name, start, cfg, run_config)
    bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=not cfg.logging.progress or jax.process_index() != 0,
               dynamic_ncols=True)
    window_tokens, window_start = 0.0, time.perf_counter()
    step, step_times = start, []
    try:
        with _StopFlag() as signalled:
            while step < cfg.steps:
                hooked = {}
                for hook in hooks:
                    if step % hook.every == 0:
                        hooked.update(hook(state, step))
                started = time.perf_counter()
                state, metrics = step_fn(state, step)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
                step_times.append(time.perf_counter() - started)
                step += 1
                if not math.isfinite(metrics["loss"]):
                    last = checkpoints.latest_step()
                    raise TrainingDiverged(
                        f"{name}: loss is {metrics['loss']} at step {step}; stopped. Last good checkpoint: "
                        f"{f'step {last}' if last else 'none'} in {checkpoints.directory}")
                if step == cfg.steps:
                    for hook in hooks:
                        hooked.update(hook(state, step))
                    if len(step_times) > 1:  # the run's typical step, its first (compiling) one left out
                        metrics["step_s"] = statistics.median(step_times[1:])
                metrics.update({k: float(v) for k, v in hooked.items()})
                window_tokens += metrics.get("tokens", 0.0)
                bar.update(1)
                if step % cfg.logging.every == 0 or step == cfg.steps or hooked:
                    elapsed = time.perf_counter() - window_start
                    metrics["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                    log.write(step, metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                    window_tokens, window_start = 0.0, time.perf_counter()
                stop = signalled.anywhere()
                if step % cfg.checkpoint.every == 0 or step == cfg.steps or stop:
                    checkpoints.save(step, _checkpointed(state), [h.carry for h in hooks], meta)
                if stop:
                    checkpoints.wait()
                    if stop == signal.SIGINT:
                        raise Interrupted(f"interrupted at step {step}; the same command goes on from step {step}")
                    raise Preempted(f"{name}: SIGTERM at step {step}; checkpoint saved in {checkpoints.directory}")
    finally:
        bar.close()
        log.close()
        checkpoints.close()
    return state
