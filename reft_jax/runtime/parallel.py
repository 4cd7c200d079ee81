"""A run on a device mesh: multi-host setup, the shardings of its state, batches and activations, their
placement, and memory planning.

The mesh ("data", "fsdp", "tensor") and the logical-axis rules that every sharding here follows are in
reft_jax.models.sharding, where the checkpoint loader reads them too; they are imported here under their
old names (parallel.make_mesh, parallel.LOGICAL_RULES, ...), which the run's code and the tests use.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reft_jax.config.schema import DistributedSection
from reft_jax.errors import ConfigError
from reft_jax.models import Transformer
from reft_jax.models.sharding import (LOGICAL_RULES, MESH_AXES, Rules, Units, head_units,  # noqa: F401 (re-exported)
                                      logical_to_spec, make_mesh, mesh_placer, mesh_shape)
from reft_jax.runtime.state import FrozenModel, TrainState, trainable_filter


# ------------------------------------------------------------------------------------------- multi-host

def _cluster_environment() -> str | None:
    """The multi-host environment jax.distributed can configure itself from, if any."""
    env = os.environ
    if env.get("REFT_JAX_MULTIHOST") == "1":  # set by launch/tpu_pod.sh: JAX finds the pod's workers itself
        return "launcher"
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu pod"
    return None


def initialize_distributed(cfg: DistributedSection) -> None:
    """Joins the processes of a multi-host run (before any other JAX call that touches devices).

    With distributed.coordinator_address set, from the config fields; else, with auto_detect, from a TPU
    pod's or Slurm's environment; else this is a single-process run and nothing happens.
    """
    if jax.distributed.is_initialized():
        return
    if cfg.coordinator_address:
        if not 0 <= cfg.process_id < cfg.num_processes:
            raise ConfigError(f"distributed.process_id={cfg.process_id} is not in [0, num_processes="
                              f"{cfg.num_processes})")
        jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id)
    elif cfg.auto_detect and _cluster_environment():
        jax.distributed.initialize()


def sync(name: str) -> None:
    """A barrier across processes (no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def check_same(values: dict[str, object], what: str) -> None:
    """Every process holds the same `values` (name -> value), else a ConfigError on every process naming the first
    name whose value differs, before anything runs that would deadlock or mix results on it. Compared by hash:
    one all-gather of a 32-bit digest per name."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    names = sorted(values)
    digests = np.array([int.from_bytes(hashlib.sha256(repr(values[n]).encode()).digest()[:4], "little", signed=True)
                        for n in names], np.int32)
    gathered = np.asarray(multihost_utils.process_allgather(digests))  # [processes, names]
    differs = (gathered != gathered[:1]).any(axis=0)
    if differs.any():
        first = int(np.argmax(differs))
        name, process = names[first], int(np.argmax(gathered[:, first] != gathered[0, first]))
        raise ConfigError(f"{name}: the processes disagree ({what}; process {process}'s value differs from process "
                          f"0's, this process has {values[name]!r}); give every process the same config and overrides")



def activation_sharding(mesh: Mesh, rules: Rules = LOGICAL_RULES):
    """The placement of an activation from its logical axes (models.activations.constrain): the parameters'
    rules, with every dimension named per element (a head axis counts heads, so no units)."""
    def to_sharding(axes, shape) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

    return to_sharding


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                      units: Units = None) -> NamedSharding:
    """The sharding of one nnx variable from its `axes` metadata (replicated when it has none)."""
    axes = variable.get_metadata().get("axes")
    if axes is None:
        return replicated(mesh)
    return NamedSharding(mesh, logical_to_spec(axes, variable.shape, mesh, rules, units))


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def tree_sharding(tree, mesh: Mesh, rules: Rules = LOGICAL_RULES, units: Units = None):
    """NamedShardings for a pytree holding nnx Variables (an nnx.State, or an optax state built from one):
    each Variable by its axes, every other leaf replicated. The result is a pytree prefix of `tree` (one
    sharding per Variable node), which jax.jit and jax.device_put accept as they are."""
    def one(leaf):
        return variable_sharding(leaf, mesh, rules, units) if _is_variable(leaf) else replicated(mesh)

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def opt_state_sharding(opt_state, params: nnx.State, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                       units: Units = None):
    """Shardings of an optax state: it mirrors the parameter tree, so each moment follows its parameter.

    optax builds its state with tree maps over the params, which keep our Variables and their axes; a leaf
    that lost them is matched to the parameter whose path ends its own path and whose shape it has;
    anything else (step counts, scalars) is replicated.
    """
    by_path = {}
    for path, variable in nnx.to_flat_state(params):
        by_path[tuple(str(p) for p in path)] = variable_sharding(variable, mesh, rules, units), variable.shape

    def one(path, leaf):
        if _is_variable(leaf):
            return variable_sharding(leaf, mesh, rules, units)
        keys = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        for start in range(len(keys)):
            match = by_path.get(keys[start:])
            if match and tuple(match[1]) == tuple(getattr(leaf, "shape", ())):
                return match[0]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, opt_state, is_leaf=_is_variable)


def train_state_sharding(state: TrainState, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                         units: Units = None) -> TrainState:
    """A TrainState of NamedShardings (a prefix of `state`): the jitted steps' in/out shardings."""
    return state.replace(step=replicated(mesh), params=tree_sharding(state.params, mesh, rules, units),
                         frozen=tree_sharding(state.frozen, mesh, rules, units),
                         opt_state=opt_state_sharding(state.opt_state, state.params, mesh, rules, units))


def frozen_model_sharding(frozen: FrozenModel, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                          units: Units = None) -> FrozenModel:
    return frozen.replace(states=tuple(tree_sharding(s, mesh, rules, units) for s in frozen.states))


def batch_sharding(batch: Mapping[str, Any], mesh: Mesh, rules: Rules = LOGICAL_RULES) -> dict:
    """Rows over ("data", "fsdp"), everything else whole: [B, T] arrays as (batch, length), [B] as (batch,)."""
    def one(value) -> NamedSharding:
        ndim = np.ndim(value)
        axes = (("batch", "length") + (None,) * ndim)[:ndim]
        return NamedSharding(mesh, logical_to_spec(axes, np.shape(value), mesh, rules))

    return {key: one(value) for key, value in batch.items()}


# -------------------------------------------------------------------------------------------- placement

def shard_train_state(state: TrainState, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                      units: Units = None) -> TrainState:
    """Moves every array of the state to its place on the mesh (arrays already there are not copied)."""
    return jax.device_put(state, train_state_sharding(state, mesh, rules, units))


def shard_frozen_model(frozen: FrozenModel, mesh: Mesh, rules: Rules = LOGICAL_RULES,
                       units: Units = None) -> FrozenModel:
    return jax.device_put(frozen, frozen_model_sharding(frozen, mesh, rules, units))


def global_shape(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(rows, tokens) of a batch over every process (a process's batch function gives its own rows): what a step
    computes on, for counting FLOPs."""
    b, t = batch["input_ids"].shape[:2]
    return b * jax.process_count(), t


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, rules: Rules = LOGICAL_RULES) -> dict:
    """Global arrays from this process's rows (all rows when there is one process)."""
    shardings = batch_sharding(batch, mesh, rules)
    return {key: jax.make_array_from_process_local_data(shardings[key], np.asarray(value))
            for key, value in batch.items()}


def create_sharded_train_state(model: Transformer, tx: optax.GradientTransformation, mesh: Mesh,
                               rules: Rules = LOGICAL_RULES, units: Units = None) -> TrainState:
    """Like state.create_train_state, but the optimizer state is created in place on the mesh (jitted with
    out_shardings), so that no device ever holds a whole moment of a large model."""
    graphdef, params, frozen = nnx.split(model, trainable_filter(model), ...)
    params = jax.device_put(params, tree_sharding(params, mesh, rules, units))
    frozen = jax.device_put(frozen, tree_sharding(frozen, mesh, rules, units))
    abstract = jax.eval_shape(tx.init, params)
    opt_state = jax.jit(tx.init, out_shardings=opt_state_sharding(abstract, params, mesh, rules, units))(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh))
    return TrainState(step=step, params=params, frozen=frozen, opt_state=opt_state, graphdef=graphdef)


# ---------------------------------------------------------------------------------------- memory planning

def compiled_memory(jitted, *args) -> dict[str, int]:
    """Per-device memory of `jitted` compiled for `args` (the compiled executable's own analysis, bytes).

    `peak_bytes`, what one call needs on each device: arguments + outputs - donated aliases + temporaries +
    code, or XLA's own peak estimate when that is larger (the CPU's leaves the arguments out). Compiles once
    more: jit's cache is not shared with lower().compile().
    """
    return executable_memory(jitted.lower(*args).compile())


def executable_memory(compiled) -> dict[str, int]:
    """`compiled_memory` of an already compiled executable (`jitted.lower(...).compile()`)."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise RuntimeError("this backend gives no memory analysis of compiled programs")
    out = dict(argument_bytes=stats.argument_size_in_bytes, output_bytes=stats.output_size_in_bytes,
               alias_bytes=stats.alias_size_in_bytes, temp_bytes=stats.temp_size_in_bytes,
               code_bytes=stats.generated_code_size_in_bytes)
    total = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"] + out["code_bytes"]
    out["xla_peak_bytes"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    out["peak_bytes"] = max(out["xla_peak_bytes"], total)
    return {k: int(v) for k, v in out.items()}


def device_memory_bytes(device=None) -> int | None:
    """Memory one device can hold, or None where the backend does not say (the CPU)."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def check_memory_fits(memory: Mapping[str, int], available: int | None = None, *, what: str = "train step",
                      device=None) -> str:
    """A one-line report of `what`'s memory per device; raises ConfigError when its peak exceeds
    `available` bytes (default: the device's limit). Without a known limit the check is skipped."""
    available = device_memory_bytes(device) if available is None else available
    need = memory["peak_bytes"]
    report = (f"{what}: {_human(need)} per device (arguments {_human(memory['argument_bytes'])}, temporaries "
              f"{_human(memory['temp_bytes'])}, outputs {_human(memory['output_bytes'])})")
    if available is None:
        platform = (device or jax.local_devices()[0]).platform
        return f"{report}; device memory unknown on {platform}, fit check skipped"
    if need > available:
        raise ConfigError(f"mesh: the {what} needs {need} bytes ({_human(need)}) per device but a device has "
                          f"{available} bytes ({_human(available)}); shard more (mesh.fsdp / mesh.tensor), use a "
                          "smaller batch, LoRA or model.remat")
    return f"{report} of {_human(available)} available"


def plan_memory(jitted, *args, what: str = "train step", available: int | None = None,
                log: Callable[[str], Any] = print) -> dict[str, int]:
    """Before training: compiles the step, logs its memory per device and fails early if it cannot fit."""
    memory = compiled_memory(jitted, *args)
    log(check_memory_fits(memory, available, what=what))
    return memory


def _human(n: int) -> str:
    """Bytes for people: 1.50 GiB, 700.0 KiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} B"
