"""Sharding constraints on the model's activations, in force only while a step is traced for a device mesh.

The model names the logical axes of its large intermediates (the residual stream, attention's queries, keys
and values, the MLP's hidden layer, the logits) with `constrain`. Outside `sharded_activations` that is the
identity, so single-device code and tests see plain functions; inside it (reft_jax.runtime.parallel enters it for
the sharded train steps) each becomes `jax.lax.with_sharding_constraint` with the placement the
logical-axis rules give. Without them XLA guesses the layout between the explicitly sharded weights and
batches, and on a data x fsdp x tensor mesh it guessed layouts it then had to undo by rematerialising whole
arrays ("Involuntary full rematerialization").
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax

ToSharding = Callable[[Sequence[str | None], Sequence[int]], jax.sharding.Sharding]
_TO_SHARDING: contextvars.ContextVar[ToSharding | None] = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def sharded_activations(to_sharding: ToSharding | None):
    """Within this context `constrain(x, axes)` places x at to_sharding(axes, x.shape); None: no constraints."""
    token = _TO_SHARDING.set(to_sharding)
    try:
        yield
    finally:
        _TO_SHARDING.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """x with its logical axes' sharding (one name per dimension, None = replicated) when a mesh is in force."""
    to_sharding = _TO_SHARDING.get()
    return x if to_sharding is None else jax.lax.with_sharding_constraint(x, to_sharding(axes, x.shape))
