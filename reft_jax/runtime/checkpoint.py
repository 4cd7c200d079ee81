"""Orbax checkpoints of a training run: the train state, extra arrays (e.g. the refusal feature) and metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from reft_jax.errors import CheckpointError


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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
