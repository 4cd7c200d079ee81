"""`reft-jax bench`: the same Ref-Teacher steps timed in JAX and in PyTorch, in one run.

Each framework runs in its own child process (spawned, one after the other), so that neither framework's
allocator, thread pools or compile caches are shared with the other's, and a GPU is the whole framework's
while it runs. The parent only counts FLOPs and assembles the report: per framework, variant, step and
finetune mode, step time (median and spread over the timed steps), tokens/s, model FLOPs per step (see
flops.py), MFU, peak memory, and the JAX/PyTorch tokens/s ratios.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats

from reft_jax.bench import jax_side, workload
from reft_jax.config.schema import RunConfig
from reft_jax.errors import ConfigError
from reft_jax.models.config import ModelConfig, from_hf_dict
from reft_jax.models.from_config import lora_config
from reft_jax.runtime import malloc

FRAMEWORKS = ("jax", "torch")
TORCH_VARIANTS = ("eager", "compile")


def _check_subset(value: tuple, allowed: tuple, field: str) -> None:
    bad = [v for v in value if v not in allowed]
    if bad or not value:
        raise ConfigError(f"{field}: {value!r} must be a non-empty selection of {allowed}")


def validate(cfg: RunConfig) -> None:
    b = cfg.bench
    _check_subset(b.frameworks, FRAMEWORKS, "bench.frameworks")
    _check_subset(b.torch_variants, TORCH_VARIANTS, "bench.torch_variants")
    _check_subset(b.steps, workload.STEPS, "bench.steps")
    _check_subset(b.finetune, workload.FINETUNES, "bench.finetune")
    if cfg.model.path:
        raise ConfigError("model.path: the benchmark builds a random init from model.init; leave model.path empty")
    if cfg.model.init.get("vocab_size", 0) <= 0:
        raise ConfigError("model.init.vocab_size: the benchmark needs an explicit vocabulary size")
    model = init_config(cfg)
    if "lora" in b.finetune and cfg.model.lora.rank <= 0:
        raise ConfigError("model.lora.rank: bench.finetune has 'lora' but the rank is 0")
    if b.batch_size < 1 or b.seq_len < 2:
        raise ConfigError(f"bench: batch_size {b.batch_size} and seq_len {b.seq_len} must be >= 1 and >= 2")
    max_len = cfg.model.init.get("max_position_embeddings") or 0
    if max_len and b.seq_len > max_len:
        raise ConfigError(f"bench.seq_len: {b.seq_len} is longer than max_position_embeddings {max_len}")
    if b.iters < 1 or b.warmup < 1:
        raise ConfigError("bench: warmup and iters must be >= 1 (the first call compiles and is never timed)")
    if b.rounds < 1:
        raise ConfigError(f"bench.rounds: {b.rounds} must be >= 1")
    if cfg.refusal.layer >= model.num_layers:
        raise ConfigError(f"refusal.layer: {cfg.refusal.layer} is not below num_hidden_layers {model.num_layers}")


def init_config(cfg: RunConfig) -> ModelConfig:
    """The architecture of the benchmark's random init (model.init)."""
    return from_hf_dict(dict(cfg.model.init), where="config model.init")


def _child(framework: str, function: str, *args):
    if framework == "jax":
        from reft_jax.bench import jax_side as side
    else:
        from reft_jax.bench import torch_side as side
    return getattr(side, function)(*args)


class _Worker:
    """One framework's own warm process (spawned): its cases stay compiled in it between rounds."""

    def __init__(self, framework: str):
        self.framework = framework
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def __call__(self, function: str, *args):
        return self.pool.submit(_child, self.framework, function, *args).result()

    def close(self):
        self.pool.shutdown()


def _complete(result: dict, cfg: RunConfig, peak: float | None) -> dict:
    """Adds time statistics, tokens/s, model FLOPs and MFU to one case's rounds (None where it failed)."""
    model = init_config(cfg)
    lora = lora_config(cfg) if result["finetune"] == "lora" else None
    case = workload.Case(result["step"], result["finetune"])
    shapes = jax_side.step_shapes(cfg, case)
    step_flops = jax_side.step_loss(cfg, case).flops(model, lora, *shapes)
    out = dict(result, tokens_per_step=sum(rows * tokens for rows, tokens in shapes), model_flops_per_step=step_flops)
    if result.get("times_ms"):
        out.update(workload.time_stats(np.asarray(result["times_ms"]) / 1e3))
    seconds = out.get("step_ms") and out["step_ms"] / 1e3
    out["tokens_per_s"] = out["tokens_per_step"] / seconds if seconds else None
    out["model_tflops_per_s"] = step_flops / seconds / 1e12 if seconds else None
    out["mfu"] = step_flops / seconds / peak if seconds and peak else None
    out.setdefault("step_ms", None)
    out.setdefault("peak_memory_bytes", None)
    return out


def ratio_interval(jax_round_ms, torch_round_ms, level: float = 0.95):
    """JAX's speed over PyTorch's per round (rounds paired in order: both ran within minutes of each other),
    and a `level` confidence interval of their geometric mean (Student's t on the log ratios); None for the
    interval with fewer than two rounds."""
    n = min(len(jax_round_ms), len(torch_round_ms))
    per_round = np.asarray(torch_round_ms[:n]) / np.asarray(jax_round_ms[:n])
    if n < 2:
        return per_round.tolist(), None
    logs = np.log(per_round)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * logs.std(ddof=1) / np.sqrt(n)
    return per_round.tolist(), [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]


def ratios(results: list[dict]) -> list[dict]:
    """JAX tokens/s over each PyTorch variant's, per step and finetune mode, with the per-round ratios and the
    interval of ratio_interval."""
    out = []
    for j in results:
        if j["framework"] != "jax" or not j.get("tokens_per_s"):
            continue
        for t in results:
            if t["framework"] == "torch" and (t["step"], t["finetune"]) == (j["step"], j["finetune"]) \
                    and t.get("tokens_per_s"):
                per_round, interval = ratio_interval(j["round_ms"], t["round_ms"])
                out.append(dict(step=j["step"], finetune=j["finetune"], jax_variant=j["variant"],
                                torch_variant=t["variant"], ratio=j["tokens_per_s"] / t["tokens_per_s"],
                                ratio_ci95=interval, round_ratios=per_round))
    return out


def run_bench(cfg: RunConfig, workdir: Path, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Runs the benchmark of `cfg` (fields under cfg.bench) and writes workdir/bench.json and bench.md, again
    after every measured case (a run cut short keeps what it measured; `complete` is then false).

    bench.rounds > 1 interleaves the frameworks: each round times every case in JAX, then in PyTorch eager
    and torch.compile, each framework in its own process kept warm (its cases compiled once) between rounds,
    so that a slow minute of the machine hits both sides. With one round each framework's process runs alone
    and frees each case before the next (what a GPU needs: two warm frameworks would share its memory)."""
    validate(cfg)
    b = cfg.bench
    cases = workload.cases(b)
    workdir.mkdir(parents=True, exist_ok=True)
    compile_only = b.compile_only
    frameworks = ["jax"] if compile_only else [f for f in FRAMEWORKS if f in b.frameworks]  # JAX first: weights
    variants = {"jax": ("jit",), "torch": tuple(b.torch_variants)}
    rounds = 1 if compile_only else b.rounds
    weights_dir = None
    if b.same_weights and frameworks == list(FRAMEWORKS):
        weights_dir = workdir / "bench_weights"
        shutil.rmtree(weights_dir, ignore_errors=True)
    measured: dict[tuple, dict] = {}  # (framework, variant, step, finetune) -> first round's fields + rounds
    sides: dict[str, dict] = {}
    workers: dict[str, _Worker] = {}
    report = None
    try:
        for i in range(rounds):
            for framework in frameworks:
                if framework not in workers:
                    log(f"reft-jax bench: {framework}: {', '.join(c.name for c in cases)}")
                    workers[framework] = _Worker(framework)
                    sides[framework] = workers[framework]("setup", cfg, weights_dir and str(weights_dir))
                for case, variant in ((c, v) for c in cases for v in variants[framework]):
                    key = (framework, variant, case.step, case.finetune)
                    if "error" in measured.get(key, {}):
                        continue
                    out = workers[framework]("measure", cfg, case, variant, rounds > 1,
                                             weights_dir and str(weights_dir))
                    entry = measured.setdefault(key, dict(zip(("framework", "variant", "step", "finetune"), key),
                                                          round_ms=[], times_ms=[]))
                    times = out.pop("times_ms", [])
                    entry.update(out)
                    entry["times_ms"] += times
                    if times:
                        entry["round_ms"].append(float(np.median(times)))
                    report = _report(cfg, sides, measured, weights_dir is not None, complete=False)
                    _write(workdir, report)
                    log(_progress_line(report, key, i, rounds))
                if rounds == 1:
                    workers.pop(framework).close()
    finally:
        for worker in workers.values():
            worker.close()
        if weights_dir:
            shutil.rmtree(weights_dir, ignore_errors=True)
    report = _report(cfg, sides, measured, weights_dir is not None, complete=True)
    _write(workdir, report)
    return report


def _report(cfg: RunConfig, sides: dict, measured: dict, same_weights: bool, complete: bool) -> dict:
    b = cfg.bench
    peaks = {f: s["measured_peak_flops"] for f, s in sides.items()}
    known = [p for p in peaks.values() if p]
    peak = b.peak_flops or (max(known) if known else None)
    results = [_complete(r, cfg, peak) for r in measured.values()]
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        complete=complete,
        workload=dict(batch_size=b.batch_size, seq_len=b.seq_len, dtype=cfg.model.dtype,
                      param_dtype=cfg.model.param_dtype, remat=cfg.model.remat, lora_rank=cfg.model.lora.rank,
                      loss_block=cfg.model.loss_block, attention=cfg.model.attention, model=dict(cfg.model.init),
                      warmup=b.warmup, iters=b.iters, rounds=1 if b.compile_only else b.rounds,
                      compile_only=b.compile_only, same_weights=same_weights),
        peak_flops=dict(value=peak, source="config" if b.peak_flops else "measured_matmul", measured=peaks),
        devices={f: s["device"] for f, s in sides.items()},
        host=dict(processor=processor(), cpu_count=os.cpu_count(),
                  malloc=malloc.loaded() or "default"),  # both sides' too: they inherit its LD_PRELOAD
        versions=dict(python=platform.python_version(), **{k: v for s in sides.values()
                                                           for k, v in s["versions"].items()}),
        results=results, ratios=ratios(results))


def _write(workdir: Path, report: dict) -> None:
    (workdir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (workdir / "bench.md").write_text(markdown(report))


def _progress_line(report: dict, key: tuple, i: int, rounds: int) -> str:
    r = next(r for r in report["results"] if (r["framework"], r["variant"], r["step"], r["finetune"]) == key)
    what = f"reft-jax bench: {' '.join(key[:2])} {'/'.join(key[2:])} round {i + 1}/{rounds}: "
    if r.get("error"):
        return what + "failed: " + r["error"]
    memory = r["peak_memory_bytes"]
    memory = "-" if memory is None else f"{memory / 2**20:,.0f} MiB"
    if not r.get("round_ms"):
        return what + f"peak memory {memory}"
    return what + f"{r['round_ms'][-1]:.1f} ms, {r['tokens_per_step'] / r['round_ms'][-1] * 1e3:,.0f} tokens/s, " \
                  f"peak memory {memory}"


def processor() -> str:
    """The host processor's model name (the CPU table depends on it), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    """The results as a Markdown table (what docs/benchmarks.md shows)."""
    w = report["workload"]
    peak = report["peak_flops"]["value"]
    rounds = f"{w['rounds']} interleaved rounds of {w['iters']} timed steps" if w["rounds"] > 1 \
        else f"{w['iters']} timed steps"
    lines = [f"batch {w['batch_size']} x seq {w['seq_len']}, compute {w['dtype']}, params {w['param_dtype']}, "
             f"remat {w['remat']}, LoRA rank {w['lora_rank']}, loss block {w['loss_block']}; "
             + ("compiled only (XLA's memory analysis), not run" if w["compile_only"] else
                f"{rounds}; peak {_fmt(peak and peak / 1e12, '.3g')} TFLOP/s ({report['peak_flops']['source']})"),
             "",
             "| step | finetune | framework | variant | tokens/s | step ms (min-max) | TFLOP/s | MFU | peak memory |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(report["results"], key=lambda r: (r["step"], r["finetune"], r["framework"] != "jax")):
        memory = r["peak_memory_bytes"]
        if r.get("error"):  # the memory of a step that compiled but did not fit is still known
            lines.append(f"| {r['step']} | {r['finetune']} | {r['framework']} | {r['variant']} | "
                         f"failed: {r['error'][:60]} | | | | {'-' if memory is None else f'{memory / 2**20:,.0f} MiB'} |")
            continue
        times = "-" if r["step_ms"] is None else f"{r['step_ms']:.1f} ({r['step_ms_min']:.1f}-{r['step_ms_max']:.1f})"
        lines.append(
            f"| {r['step']} | {r['finetune']} | {r['framework']} | {r['variant']} | {_fmt(r['tokens_per_s'], ',.0f')} "
            f"| {times} | {_fmt(r['model_tflops_per_s'], '.3g')} | {_fmt(r['mfu'], '.1%')} "
            f"| {'-' if memory is None else f'{memory / 2**20:,.0f} MiB'} |")
    if report["ratios"]:
        variants = sorted({r["torch_variant"] for r in report["ratios"]})
        lines += ["", "| step | finetune | " + " | ".join(f"JAX / PyTorch {v} (95% CI)" for v in variants) + " |",
                  "| --- | --- |" + " ---: |" * len(variants)]
        for key in sorted({(r["step"], r["finetune"]) for r in report["ratios"]}):
            by = {r["torch_variant"]: r for r in report["ratios"] if (r["step"], r["finetune"]) == key}
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(_ratio_cell(by.get(v)) for v in variants) + " |")
    return "\n".join(lines) + "\n"


def _ratio_cell(ratio: dict | None) -> str:
    if ratio is None:
        return "-"
    interval = ratio.get("ratio_ci95")
    return f"{ratio['ratio']:.2f}x" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")
