"""The JAX side of the benchmark: reft-jax's own train steps (reft_jax.train.steps), compiled ahead of time.

Runs in a child process of `reft-jax bench` (see harness.py), so that its allocator and threads do not share
a process with PyTorch's. Memory is XLA's analysis of the compiled step: arguments (weights, optimizer state,
batches) + temporaries (activations) + outputs - donated buffers.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from reft_jax import parallel, pipeline
from reft_jax.bench import workload
from reft_jax.models import save_pretrained
from reft_jax.train import optim, steps
from reft_jax.train.runs import refusal_layer


def _log(message: str) -> None:
    print(f"[bench jax] {message}", file=sys.stderr, flush=True)


def _build_step(cfg, case: workload.Case, data: dict, r):
    """(jitted step, its arguments): a fresh train state for `case` and, for the student, a frozen teacher."""
    tx = optim.make_optimizer(cfg.optim, total_steps=cfg.bench.warmup + cfg.bench.iters + 1)
    base = pipeline.base_model(cfg)
    layer = refusal_layer(cfg, base)
    model = pipeline.trainable(cfg, base, salt=1) if case.finetune == "lora" else base
    state = steps.create_train_state(model, tx)
    align = jax.device_put(data["align"])
    if case.step == "teacher":
        step = steps.make_teacher_step(tx, steps.TeacherLoss(layer, float(cfg.refusal.lam), cfg.refusal.kind))
        return step, (state, align, jnp.asarray(r))
    teacher = steps.FrozenModel.of(pipeline.base_model(cfg))  # a second, merged model: the teacher
    step = steps.make_student_step(tx, steps.StudentLoss(float(cfg.distill.beta), float(cfg.distill.temperature)))
    return step, (state, teacher, jax.device_put(data["user"]), align)


def run_case(cfg, case: workload.Case, data: dict, r) -> dict:
    step, args = _build_step(cfg, case, data, r)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    memory = parallel.executable_memory(compiled)
    state, rest = args[0], args[1:]

    def call():
        nonlocal state
        state, metrics = compiled(state, *rest)
        return state, metrics

    _, times, (_, metrics) = workload.time_steps(call, jax.block_until_ready, cfg.bench.warmup, cfg.bench.iters)
    return dict(compile_s=compile_s, first_loss=float(metrics["loss"]), peak_memory_bytes=memory["peak_bytes"],
                memory_source="xla_compiled", **workload.time_stats(times))


def matmul_flops(platform: str, dtype) -> float:
    """Measured matmul throughput of the device in the compute dtype (FLOP/s), a candidate MFU denominator."""
    n = 1024 if platform == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    return 2 * n**3 / workload.matmul_seconds(lambda: matmul(a, b), jax.block_until_ready)


def run(cfg_dict: dict, cases: list[workload.Case], weights_dir: str | None) -> dict:
    """Every case, one after the other; `weights_dir`: write the random init there for the PyTorch side."""
    cfg = ConfigDict(cfg_dict)
    device = jax.devices()[0]
    _log(f"{jax.device_count()} {device.platform} device(s), {device.device_kind}; timing on device 0")
    if weights_dir:
        save_pretrained(pipeline.base_model(cfg), weights_dir)
    data = workload.batches(cfg.bench.batch_size, cfg.bench.seq_len, int(cfg.model.init.vocab_size), cfg.seed)
    r = workload.refusal_direction(int(cfg.model.init.hidden_size), cfg.seed)
    results = []
    for case in cases:
        _log(f"{case.name}: compiling and timing {cfg.bench.iters} steps")
        try:
            result = run_case(cfg, case, data, r)
        except Exception as e:  # an out-of-memory case is a result (what does not fit), not a crash
            result = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            _log(f"{case.name}: failed: {result['error']}")
        results.append(dict(framework="jax", variant="jit", step=case.step, finetune=case.finetune, **result))
        jax.clear_caches()
    compute = jnp.dtype(cfg.model.dtype)
    return dict(results=results, measured_peak_flops=matmul_flops(device.platform, compute),
                device=dict(platform=device.platform, kind=device.device_kind, count=jax.device_count()),
                versions=workload.versions("jax", "jaxlib", "flax", "optax"))
