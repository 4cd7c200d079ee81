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
import platform
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from reft_jax import flops, pipeline
from reft_jax.bench import workload
from reft_jax.errors import ConfigError
from reft_jax.models.config import from_hf_dict

FRAMEWORKS = ("jax", "torch")
TORCH_VARIANTS = ("eager", "compile")


def _subset(value, allowed, field: str) -> tuple:
    value = tuple(value)
    bad = [v for v in value if v not in allowed]
    if bad or not value:
        raise ConfigError(f"{field}: {value!r} must be a non-empty selection of {allowed}")
    return value


def validate(cfg) -> None:
    b = cfg.bench
    _subset(b.frameworks, FRAMEWORKS, "bench.frameworks")
    _subset(b.torch_variants, TORCH_VARIANTS, "bench.torch_variants")
    _subset(b.steps, workload.STEPS, "bench.steps")
    _subset(b.finetune, workload.FINETUNES, "bench.finetune")
    if cfg.model.path:
        raise ConfigError("model.path: the benchmark builds a random init from model.init; leave model.path empty")
    if int(cfg.model.init.vocab_size) <= 0:
        raise ConfigError("model.init.vocab_size: the benchmark needs an explicit vocabulary size")
    model = from_hf_dict(cfg.model.init.to_dict(), where="config model.init")
    if "lora" in b.finetune and int(cfg.model.lora.rank) <= 0:
        raise ConfigError("model.lora.rank: bench.finetune has 'lora' but the rank is 0")
    if int(b.batch_size) < 1 or int(b.seq_len) < 2:
        raise ConfigError(f"bench: batch_size {b.batch_size} and seq_len {b.seq_len} must be >= 1 and >= 2")
    max_len = int(cfg.model.init.get("max_position_embeddings", 0) or 0)
    if max_len and int(b.seq_len) > max_len:
        raise ConfigError(f"bench.seq_len: {b.seq_len} is longer than max_position_embeddings {max_len}")
    if int(b.iters) < 1 or int(b.warmup) < 1:
        raise ConfigError("bench: warmup and iters must be >= 1 (the first call compiles and is never timed)")
    layer = int(cfg.refusal.layer)
    if layer >= model.num_layers:
        raise ConfigError(f"refusal.layer: {layer} is not below num_hidden_layers {model.num_layers}")


def _child(framework: str, cfg_dict: dict, cases: list, weights_dir: str | None) -> dict:
    if framework == "jax":
        from reft_jax.bench import jax_side as side
    else:
        from reft_jax.bench import torch_side as side
    return side.run(cfg_dict, cases, weights_dir)


def _in_child(framework: str, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_child, framework, *args).result()


def _complete(result: dict, cfg, peak: float) -> dict:
    """Adds tokens/s, model FLOPs and MFU to one timed result (None where the case failed)."""
    b = cfg.bench
    model = from_hf_dict(cfg.model.init.to_dict(), where="config model.init")
    lora = pipeline.lora_config(cfg) if result["finetune"] == "lora" else None
    step_flops = flops.step_flops(result["step"], model, b.batch_size, b.seq_len, lora)
    out = dict(result, tokens_per_step=flops.trained_tokens(result["step"], b.batch_size, b.seq_len),
               model_flops_per_step=step_flops)
    seconds = result.get("step_ms") and result["step_ms"] / 1e3
    out["tokens_per_s"] = out["tokens_per_step"] / seconds if seconds else None
    out["model_tflops_per_s"] = step_flops / seconds / 1e12 if seconds else None
    out["mfu"] = step_flops / seconds / peak if seconds and peak else None
    out.setdefault("step_ms", None)
    out.setdefault("peak_memory_bytes", None)
    return out


def ratios(results: list[dict]) -> list[dict]:
    """JAX tokens/s over each PyTorch variant's, per step and finetune mode."""
    out = []
    for j in results:
        if j["framework"] != "jax" or not j.get("tokens_per_s"):
            continue
        for t in results:
            if t["framework"] == "torch" and (t["step"], t["finetune"]) == (j["step"], j["finetune"]) \
                    and t.get("tokens_per_s"):
                out.append(dict(step=j["step"], finetune=j["finetune"], jax_variant=j["variant"],
                                torch_variant=t["variant"], ratio=j["tokens_per_s"] / t["tokens_per_s"]))
    return out


def run_bench(cfg, workdir: Path, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    """Runs the benchmark of `cfg` (fields under cfg.bench) and writes workdir/bench.json and bench.md."""
    validate(cfg)
    b = cfg.bench
    cases = workload.cases(b)
    workdir.mkdir(parents=True, exist_ok=True)
    frameworks = [f for f in FRAMEWORKS if f in b.frameworks]  # JAX first: it writes the shared weights
    weights_dir = None
    if b.same_weights and frameworks == list(FRAMEWORKS):
        weights_dir = workdir / "bench_weights"
        shutil.rmtree(weights_dir, ignore_errors=True)
    cfg_dict = cfg.to_dict()
    children = {}
    try:
        for framework in frameworks:
            log(f"reft-jax bench: {framework}: {', '.join(c.name for c in cases)}")
            children[framework] = _in_child(framework, cfg_dict, cases, weights_dir and str(weights_dir))
    finally:
        if weights_dir:
            shutil.rmtree(weights_dir, ignore_errors=True)
    measured = {f: c["measured_peak_flops"] for f, c in children.items()}
    peak = float(b.peak_flops) or max(measured.values())
    results = [_complete(r, cfg, peak) for c in children.values() for r in c["results"]]
    report = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        workload=dict(batch_size=int(b.batch_size), seq_len=int(b.seq_len), dtype=cfg.model.dtype,
                      param_dtype=cfg.model.param_dtype, remat=cfg.model.remat, lora_rank=int(cfg.model.lora.rank),
                      model=cfg.model.init.to_dict(), warmup=int(b.warmup), iters=int(b.iters),
                      same_weights=weights_dir is not None),
        peak_flops=dict(value=peak, source="config" if float(b.peak_flops) else "measured_matmul",
                        measured=measured),
        devices={f: c["device"] for f, c in children.items()},
        versions=dict(python=platform.python_version(), **{k: v for c in children.values()
                                                           for k, v in c["versions"].items()}),
        results=results, ratios=ratios(results))
    (workdir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (workdir / "bench.md").write_text(markdown(report))
    return report


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    """The results as a Markdown table (what docs/benchmarks.md shows)."""
    w = report["workload"]
    lines = [f"batch {w['batch_size']} x seq {w['seq_len']}, compute {w['dtype']}, params {w['param_dtype']}, "
             f"remat {w['remat']}, LoRA rank {w['lora_rank']}; peak {report['peak_flops']['value'] / 1e12:.3g} "
             f"TFLOP/s ({report['peak_flops']['source']})", "",
             "| step | finetune | framework | variant | tokens/s | step ms (min-max) | TFLOP/s | MFU | peak memory |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(report["results"], key=lambda r: (r["step"], r["finetune"], r["framework"] != "jax")):
        if r.get("error"):
            lines.append(f"| {r['step']} | {r['finetune']} | {r['framework']} | {r['variant']} | "
                         f"failed: {r['error'][:60]} | | | | |")
            continue
        memory = r["peak_memory_bytes"]
        lines.append(
            f"| {r['step']} | {r['finetune']} | {r['framework']} | {r['variant']} | {_fmt(r['tokens_per_s'], ',.0f')} "
            f"| {r['step_ms']:.1f} ({r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}) "
            f"| {_fmt(r['model_tflops_per_s'], '.3g')} | {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}% "
            f"| {'-' if memory is None else f'{memory / 2**20:,.0f} MiB'} |")
    if report["ratios"]:
        lines += ["", "| step | finetune | JAX / PyTorch " + " | JAX / PyTorch ".join(
            sorted({r["torch_variant"] for r in report["ratios"]})) + " |"]
        variants = sorted({r["torch_variant"] for r in report["ratios"]})
        lines.append("| --- | --- |" + " ---: |" * len(variants))
        for key in sorted({(r["step"], r["finetune"]) for r in report["ratios"]}):
            by = {r["torch_variant"]: r["ratio"] for r in report["ratios"] if (r["step"], r["finetune"]) == key}
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(_fmt(by.get(v), ".2f") + "x" for v in variants) + " |")
    return "\n".join(lines) + "\n"
