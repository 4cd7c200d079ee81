"""The JAX side of the benchmark: reft-jax's own train steps (reft_jax.train.steps), compiled ahead of time.

Runs in a child process of `reft-jax bench` (see harness.py), so that its allocator and threads do not share
a process with PyTorch's. Memory is XLA's analysis of the compiled step: arguments (weights, optimizer state,
batches) + temporaries (activations) + outputs - donated buffers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from reft_jax.bench import profile, workload
from reft_jax.config.schema import RunConfig
from reft_jax.models import save_pretrained
from reft_jax.models.from_config import base_model, trainable
from reft_jax.runtime import parallel
from reft_jax.runtime.state import FrozenModel, create_train_state
from reft_jax.train import optim, steps


def _log(message: str) -> None:
    print(f"[bench jax] {message}", file=sys.stderr, flush=True)


def step_loss(cfg: RunConfig, case: workload.Case) -> steps.TeacherLoss | steps.StudentLoss:
    """The loss of the case's step, as the run configures it (it also counts the step's FLOPs)."""
    if case.step == "teacher":
        return steps.TeacherLoss.of(cfg, cfg.model.init["num_hidden_layers"])
    return steps.StudentLoss.of(cfg, cfg.distill.beta)


def step_shapes(cfg: RunConfig, case: workload.Case) -> list[tuple[int, int]]:
    """(rows, tokens) of each batch the case's step takes: the teacher an alignment batch, the student a user and
    an alignment batch."""
    shape = (cfg.bench.batch_size, cfg.bench.seq_len)
    return [shape] * (2 if case.step == "student" else 1)


def _build_step(cfg: RunConfig, case: workload.Case, data: dict, r, abstract: bool = False):
    """(jitted step, its arguments): a fresh train state for `case` and, for the student, a frozen teacher.
    abstract: shapes and dtypes only (nothing allocated), enough to compile for the memory analysis."""
    tx = optim.make_optimizer(cfg.optim, total_steps=cfg.bench.warmup + cfg.bench.iters + 1)
    loss = step_loss(cfg, case)

    def models():
        base = base_model(cfg)
        model = trainable(cfg, base, "teacher_adapters") if case.finetune == "lora" else base
        state = create_train_state(model, tx)
        # The student's teacher: a second, merged model.
        return state, (FrozenModel.of(base_model(cfg)) if case.step == "student" else None)

    state, teacher = jax.eval_shape(models) if abstract else models()
    put = (lambda x: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)) if abstract \
        else jax.device_put
    align = put(data["align"])
    if case.step == "teacher":
        return steps.make_step(tx, loss), (state, put(jnp.asarray(r)), align)
    return steps.make_step(tx, loss), (state, teacher, put(data["user"]), align)


def prepare(cfg: RunConfig, case: workload.Case) -> workload.Prepared:
    """Builds and compiles `case` and runs its warm-up calls (with bench.compile_only: compiles for the shapes
    and returns the memory analysis alone, nothing allocated or run)."""
    data = workload.batches(cfg.bench.batch_size, cfg.bench.seq_len, cfg.model.init["vocab_size"], cfg.seed)
    r = workload.refusal_direction(cfg.model.init["hidden_size"], cfg.seed)
    compile_only = cfg.bench.compile_only
    step, args = _build_step(cfg, case, data, r, abstract=compile_only)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    info = dict(compile_s=time.perf_counter() - t0, memory=parallel.executable_memory(compiled),
                memory_source="xla_compiled")
    info["peak_memory_bytes"] = info["memory"]["peak_bytes"]
    if compile_only:
        return workload.Prepared(lambda: None, lambda _: None, info)
    state, rest = args[0], args[1:]

    def call():
        nonlocal state
        state, metrics = compiled(state, *rest)
        return metrics

    try:
        metrics = call()
        info["first_loss"] = float(metrics["loss"])
        for _ in range(cfg.bench.warmup - 1):
            jax.block_until_ready(call())
    except Exception as e:  # keep XLA's memory analysis of a step that compiled but does not fit
        raise workload.CaseFailed(e, info) from e
    return workload.Prepared(call, jax.block_until_ready, info)


_CASES: dict = {}  # prepared cases of this process, kept between rounds


def measure(cfg: RunConfig, case: workload.Case, variant: str, keep: bool, weights_dir: str | None = None) -> dict:
    """One round of `case` in this (warm) process: see workload.measure_round. With bench.profile_dir, the
    case's first round ends with a profile of two more steps (profile.py)."""
    del variant, weights_dir  # JAX has one variant (jit) and builds its own init
    try:
        iters = 0 if cfg.bench.compile_only else cfg.bench.iters
        profile_now = case not in _CASES and cfg.bench.profile_dir and not cfg.bench.compile_only
        out = workload.measure_round(_CASES, case, lambda: prepare(cfg, case), iters, keep=True)
        if profile_now:
            out["profile"] = _profile(_CASES[case].step, Path(cfg.bench.profile_dir) / case.name.replace("/", "_"))
        return out
    except Exception as e:  # an out-of-memory case is a result (what does not fit), not a crash
        _log(f"{case.name}: failed: {workload.error_text(e)}")
        return dict(getattr(e, "info", {}), error=str(e) if isinstance(e, workload.CaseFailed)
                    else workload.error_text(e))
    finally:
        if not keep:
            _CASES.pop(case, None)
            jax.clear_caches()


def matmul_flops(platform: str, dtype) -> float:
    """Measured matmul throughput of the device in the compute dtype (FLOP/s), a candidate MFU denominator."""
    n = 1024 if platform == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    return 2 * n**3 / workload.matmul_seconds(lambda: matmul(a, b), jax.block_until_ready)


def _profile(step, folder: Path) -> list[dict]:
    profile.trace_steps(step, folder)
    ops = profile.op_times(folder)
    (folder / "op_times.json").write_text(json.dumps(ops, indent=1) + "\n")
    _log(f"profile in {folder}; top ops per step: " + "; ".join(
        f"{o['op'][:60]} {o['ms_per_step']:.2f} ms ({100 * o['share']:.1f}%)" for o in ops[:8]))
    return ops[:10]


def setup(cfg: RunConfig, weights_dir: str | None) -> dict:
    """Writes the random init to `weights_dir` for the PyTorch side (when given); returns this side's device,
    versions and measured matmul throughput."""
    device = jax.devices()[0]
    _log(f"{jax.device_count()} {device.platform} device(s), {device.device_kind}; timing on device 0")
    if weights_dir:
        save_pretrained(base_model(cfg), weights_dir)
    peak = None if cfg.bench.compile_only else matmul_flops(device.platform, jnp.dtype(cfg.model.dtype))
    return dict(measured_peak_flops=peak,
                device=dict(platform=device.platform, kind=device.device_kind, count=jax.device_count()),
                versions=workload.versions("jax", "jaxlib", "flax", "optax"))
