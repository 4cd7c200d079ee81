"""The model's parameters on a device mesh: the mesh, the logical-axis rules that place each parameter on it, and
loading a checkpoint straight into that placement.

The mesh has three named axes (MaxText's vocabulary, reduced to what a dense decoder needs):

  data    plain data parallelism: every device of the axis holds the whole model and its own rows;
  fsdp    fully sharded data parallelism (ZeRO-3): rows are split as on `data`, and weights and optimizer
          state are split too, XLA all-gathering each weight just before its use;
  tensor  tensor (Megatron) parallelism: attention heads, MLP columns and the vocabulary are split, so one
          matmul runs on several devices at once.

Every parameter carries its logical axis names (`axes` metadata, e.g. ("embed", "mlp")); LOGICAL_RULES maps
each name to mesh axes, and that one table places parameters, optimizer state, the frozen teacher and the
batches (reft_jax.runtime.parallel builds the run's shardings from it). A dimension that the mesh axes do not
divide is replicated (see `logical_to_spec`), so any model runs on any mesh, only less sharded. They live here,
below the runtime, because the loader places each parameter by them as it reads it (`mesh_placer`,
models.from_config).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reft_jax.errors import ConfigError
from reft_jax.models.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes it is split over, in order. Why these (the MaxText defaults, reduced):
# - batch over data and fsdp: both axes are data parallel; fsdp only adds weight sharding on top.
# - embed over fsdp: the model dimension appears in every weight, so splitting it shards all of them
#   (ZeRO-3); it is never split over tensor, which would need a collective after every norm.
# - heads, kv_heads, mlp over tensor: Megatron's split, the column-parallel q/k/v/gate/up projections
#   followed by the row-parallel o/down projections, one all-reduce per attention and per MLP.
# - vocab over tensor: the embedding table and the LM head are the largest single weights of small models.
# - length, head_dim, layers replicated: attention needs every key of a sequence (no sequence parallelism
#   here), a head is the unit of tensor parallelism, and the stacked layer axis is scanned or looped over.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "length": (),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "layers": (),
}

Rules = Mapping[str, tuple[str, ...]]
Units = Mapping[str, int] | None


# ----------------------------------------------------------------------------------------------------- mesh

def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) from a config with those fields; one of them may be -1, meaning the rest."""
    sizes = [int(_field(mesh_cfg, name)) for name in MESH_AXES]
    described = " x ".join(f"{name}={size}" for name, size in zip(MESH_AXES, sizes))
    if any(size == 0 or size < -1 for size in sizes) or sizes.count(-1) > 1:
        raise ConfigError(f"mesh: sizes must be positive with at most one -1 (the rest), got {described}")
    fixed = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ConfigError(f"mesh: {described} does not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(f"mesh: {described} = {fixed} devices, but there are {num_devices} "
                          "(set one axis to -1 to take the rest)")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default: all), with automatic sharding
    propagation (AxisType.Auto) so that unannotated intermediates are left to XLA."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _field(cfg, name: str):
    return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)


# -------------------------------------------------------------------------------------------------- rules

def head_units(cfg: ModelConfig) -> dict[str, int]:
    """Our q/k/v/o kernels fuse heads and head_dim into one axis of size heads * head_dim; splitting it in
    whole heads keeps every head on one device, so its size must be counted in units of head_dim."""
    return {"heads": cfg.head_dim, "kv_heads": cfg.head_dim}


def logical_to_spec(axes, shape, mesh: Mesh, rules: Rules = LOGICAL_RULES, units: Units = None) -> PartitionSpec:
    """PartitionSpec of an array with logical `axes` and `shape` on `mesh`.

    Stacked parameters have leading axes that `axes` does not name (the layer axis): they are replicated.
    Each dimension takes the longest prefix of its rule's mesh axes whose total size divides it, counted in
    `units` when given (head_dim for "heads"); when none divides, the dimension is replicated: 2 kv heads
    on tensor=4 stay whole. A mesh axis taken by an earlier dimension, or absent from the mesh, is skipped.
    """
    axes = tuple(axes or ())
    if len(axes) > len(shape):
        raise ValueError(f"logical axes {axes} have more entries than the shape {tuple(shape)}")
    axes = ("layers",) * (len(shape) - len(axes)) + axes
    used: set[str] = set()
    entries = []
    for name, size in zip(axes, shape):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule (known: {', '.join(rules)})")
        # Mesh axes an earlier dimension took, or that this mesh lacks, are skipped.
        candidates = [a for a in (rules[name] if name is not None else ()) if a not in used and a in mesh.shape]
        chosen = _dividing_prefix(candidates, size, (units or {}).get(name, 1), mesh)
        used.update(chosen)
        entries.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*entries)


def _dividing_prefix(mesh_axes: list[str], size: int, unit: int, mesh: Mesh) -> list[str]:
    if size % unit:
        return []
    count = size // unit
    for n in range(len(mesh_axes), 0, -1):
        if count % math.prod(mesh.shape[a] for a in mesh_axes[:n]) == 0:
            return mesh_axes[:n]
    return []



# -------------------------------------------------------------------------------------------- loading

def mesh_placer(mesh: Mesh, rules: Rules = LOGICAL_RULES, units: Units = None):
    """A `placer` for models.from_pretrained: each parameter is built straight into its sharded layout,
    reading from the checkpoint only the slices this process's devices hold, each distinct slice once."""
    def place(shape: tuple, axes: tuple, read: Callable[[tuple], np.ndarray]) -> jax.Array:
        sharding = NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules, units))
        cache: dict[tuple, np.ndarray] = {}  # devices that replicate a slice share one read

        def read_once(index: tuple) -> np.ndarray:
            key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
            if key not in cache:
                cache[key] = read(index)
            return cache[key]

        return jax.make_array_from_callback(shape, sharding, read_once)

    return place
