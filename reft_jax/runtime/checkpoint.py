"""Orbax checkpoints of a training run: the train state, extra arrays (e.g. the refusal feature) and metadata."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from reft_jax.errors import CheckpointError

log = logging.getLogger(__name__)


class _FailedWrites(logging.Filter):
    """Orbax's background threads log a failed write with its traceback before the save reports it; the OSError
    it becomes (see _os_errors) is what the user sees, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return "os_error_code=" not in record.getMessage() + str(error) + str(getattr(error, "__cause__", ""))


logging.getLogger("absl").addFilter(_FailedWrites())


READ_ERROR = "Encountered error while reading array index"  # Orbax's message for an array it cannot read


def _quiet_failed_reads(unraisable, previous=sys.unraisablehook) -> None:
    """Orbax reads a checkpoint's arrays in concurrent coroutines. When one read fails, the others' errors surface
    later, at garbage collection, as "Exception ignored in: <coroutine ...>" with TensorStore's whole spec (sixty
    lines); the failure is already reported once, by restore_latest's warning. Anything else goes on as before."""
    if READ_ERROR in str(unraisable.exc_value):
        log.debug("another read of the same failed checkpoint: %s", unraisable.exc_value)
        return
    previous(unraisable)


class _FailedReads(logging.Filter):
    """The same errors by the other way out: asyncio's "Task exception was never retrieved" for a read task."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("exception was never retrieved" in record.getMessage() and READ_ERROR in record.getMessage())


sys.unraisablehook = _quiet_failed_reads
logging.getLogger("asyncio").addFilter(_FailedReads())
CORRUPT = "corrupt-"  # a checkpoint that could not be read is moved to corrupt-STEP/ beside the others


@contextlib.contextmanager
def _os_errors(directory: Path):
    """Orbax and TensorStore report a failed write (disk full, file too large, read-only) as a ValueError whose
    text carries the OS error code; it is raised again as the OSError it is, which the CLI turns into one line."""
    try:
        yield
    except (ValueError, RuntimeError) as e:
        code = re.search(r"os_error_code='(\d+)'", str(e))
        if code is None:
            raise
        # The save's other writes are dropped unawaited; Python warns for each when it collects them (at exit, on a
        # slower machine after the one line): the failure is already reported, once.
        warnings.filterwarnings("ignore", r"coroutine .* was never awaited", RuntimeWarning)
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(directory)) from None


class Checkpointer:
    """Saves {"state": pytree, "extras": pytree} plus a JSON `meta` dict per step; keeps the last few."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, extras: Any, meta: dict) -> None:
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if jax.tree.leaves(extras):  # Orbax refuses empty trees
            items["extras"] = ocp.args.StandardSave(extras)
        with _os_errors(self.directory):  # an asynchronous save reports the previous one's failure here
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, state_like: Any, extras_like: Any) -> tuple[Any, Any, dict]:
        """Restores into the structure, shapes, dtypes and shardings of `state_like` / `extras_like`."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        items = dict(state=ocp.args.StandardRestore(abstract(state_like)), meta=ocp.args.JsonRestore())
        if jax.tree.leaves(extras_like):
            items["extras"] = ocp.args.StandardRestore(abstract(extras_like))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, FileNotFoundError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.directory}/{step}: cannot restore ({first_line})") from None
        extras = restored["extras"] if "extras" in items else extras_like
        return restored["state"], extras, dict(restored["meta"])

    def restore_latest(self, state_like: Any, extras_like: Any) -> tuple[int, Any, Any, dict] | None:
        """(step, state, extras, meta) of the newest checkpoint that reads. One that does not (truncated or missing
        files, bad metadata: any error from Orbax or TensorStore) is moved aside to corrupt-STEP/ (never deleted)
        with a warning naming the step and the reason, and the one before it is tried; None when none is left
        (the stage starts over, with a warning). A write that was cut off never shows here: Orbax writes into a
        temporary folder and renames it when complete."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return (step, *self.restore(step, state_like, extras_like))
            except Exception as e:  # noqa: BLE001 -- whatever made it unreadable, an older checkpoint may do
                reason = _reason(e)
                aside = self._move_aside(step)
                log.warning("%s/%d: cannot read this checkpoint (%s); moved to %s, trying the one before",
                            self.directory, step, reason, aside)
        if steps:
            log.warning("%s: no readable checkpoint left; the stage starts over from step 0", self.directory)
        return None

    def _move_aside(self, step: int) -> Path:
        aside = self.directory / f"{CORRUPT}{step}"
        n = 1
        while aside.exists():  # an earlier corrupt copy of the same step is kept too
            aside, n = self.directory / f"{CORRUPT}{step}.{n}", n + 1
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(aside)
        self.manager.reload()
        return aside

    def wait(self) -> None:
        with _os_errors(self.directory):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with _os_errors(self.directory):
            self.manager.wait_until_finished()
        self.manager.close()


def _reason(e: Exception) -> str:
    """The first line of an exception's message, without TensorStore's pointer to its details (a method's repr)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return text.splitlines()[0].split(" See full TensorStore details")[0].rstrip(". ")[:300]
