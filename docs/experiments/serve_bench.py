"""The served filter against its PyTorch peer (issue 46, `reft-jax serve`): prompts/s of the same score on the same
model and batches, on one machine, one phase at a time.

    python docs/experiments/serve_bench.py BUNDLE_OR_WORKDIR OUT.json [--config FILE] [--config.a.b=value ...]
        [--prompts FILE] [--n N] [--seconds T]

BUNDLE_OR_WORKDIR: a filter bundle (`reft-jax export --filter --out DIR`), or a trained teacher's workdir with the
`--config` and overrides it was trained with, exported first into a temporary bundle. Prompts: N of
reft_jax.serve.loadtest.PROMPTS cycled, or of FILE's lines (one prompt a line). The phases, in order:

  jax    reft_jax.Filter.load(BUNDLE): its scoring programs compiled (`warm`, as the server does before ready), then
         `score` on the N prompts (prompts/s with tokenizing), the tokenizing alone, and the scoring of the tokenized
         prompts alone, batch by batch, in `score`'s batches (shortest first; prompts/s and batch times); then all of
         it again with every batch whole (`share_prefix` False: the template's opening run in every row, the peer's
         work; "whole");
  torch  the PyTorch peer (reft_jax.bench.filter_peer.TorchFilter: transformers, float32, SDPA) on the same prompts
         and batches, measured the same way after a batch of each bucket; torch's thread count left at its default;
  serve  `reft-jax serve --filter BUNDLE` in a subprocess on a free local port, once /healthz is 200:
         reft_jax.serve.loadtest at 1, 8 and 32 clients (one prompt a request); with --memory-requests M, then
         rounds of 8 clients until M more requests were answered, the server's resident memory (VmRSS) read after
         each round (does it stay flat over a long run?); then SIGTERM.

Each measurement repeats whole passes over the prompts until T seconds have passed (at least one pass); each load
test lasts T seconds. OUT.json holds every figure, the scores' largest gaps between the phases, the commit, the
machine (and the share of its CPUs that other work took before each phase: a busy machine's figures are not the
code's) and the command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from reft_jax.runtime import malloc
from reft_jax.serve import bundle, loadtest
from reft_jax.serve.teacher_filter import shortest_first

REPO = Path(__file__).resolve().parents[2]
CLIENTS = (1, 8, 32)
READY_TIMEOUT_S = 1800  # loading and compiling a real model's buckets on a CPU takes minutes
THREAD_ENV = ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")  # recorded


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a filter bundle, or a teacher's workdir (with --config and overrides)")
    p.add_argument("out", help="the JSON file to write")
    p.add_argument("--config", help="the workdir's config file (default: the CLI's, configs/demo.py)")
    p.add_argument("--prompts", help="a text file, one prompt a line (default: reft_jax.serve.loadtest.PROMPTS)")
    p.add_argument("--n", type=int, default=256, help="prompts per pass, cycled from the prompts (default 256)")
    p.add_argument("--seconds", type=float, default=10.0, help="least time of each measurement and load test")
    p.add_argument("--memory-requests", type=int, default=0,
                   help="after the load tests, answer this many more requests and read the server's RSS as they go")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    return args, overrides


def _prompts(path: str | None, n: int) -> list[str]:
    base = loadtest.PROMPTS
    if path:
        base = [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]
    return [base[i % len(base)] for i in range(n)]


def _bundle(source: str, config: str | None, overrides: list[str], tmp: Path) -> Path:
    """The bundle to measure: `source` itself, or the export of the teacher in the workdir `source`."""
    if bundle.is_bundle(source):
        return Path(source)
    out = tmp / "filter"
    command = [sys.executable, "-m", "reft_jax.cli", "export", "--filter", "--workdir", source,
               *(["--config", config] if config else []), "--out", str(out), *overrides]
    print("exporting:", shlex.join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    return out


def _passes(fn, seconds: float) -> list[float]:
    """The wall time of each call of fn, called until `seconds` have passed (at least once)."""
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def _rate(n: int, times: list[float]) -> float:
    return round(n * len(times) / sum(times), 2)


def _measure(filt, prompts: list[str], seconds: float) -> tuple[dict, np.ndarray]:
    """The batch path's figures of a filter (TeacherFilter or TorchFilter: the same PromptBatches) and its scores."""
    began = time.perf_counter()
    filt.warm()  # JAX compiles each bucket's program here; torch runs its first batches
    warm_s = time.perf_counter() - began
    n, size = len(prompts), filt.batch_size
    end_to_end = _passes(lambda: filt.score(prompts), seconds)
    tokenizing = _passes(lambda: filt.tokenize(filt.examples(prompts)), seconds)
    ids = filt.tokenize(filt.examples(prompts)).prompt_ids
    order = shortest_first(ids)  # the batches `score` makes
    chunks = [[ids[j] for j in order[i: i + size]] for i in range(0, n, size)]
    batch_times, scores = [], np.zeros(n, np.float32)

    def one_pass():
        for i, chunk in enumerate(chunks):
            began = time.perf_counter()
            scores[order[i * size: (i + 1) * size]] = filt.score_rows(chunk)
            batch_times.append(time.perf_counter() - began)

    scoring = _passes(one_pass, seconds)
    ms = np.asarray(batch_times) * 1e3
    figures = {
        "warm_s": round(warm_s, 3),
        "prompts_per_s": _rate(n, end_to_end),  # tokenizing and scoring, as Filter.score
        "scoring_prompts_per_s": _rate(n, scoring),  # the tokenized prompts' batches alone
        "tokenizing_prompts_per_s": _rate(n, tokenizing),
        "passes": {"end_to_end": len(end_to_end), "tokenizing": len(tokenizing), "scoring": len(scoring)},
        "batch_size": size,
        "batches_per_pass": len(chunks),
        "bucket_lengths": sorted({int(filt.batch(chunk)["input_ids"].shape[1]) for chunk in chunks}),
        "batch_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "mean": round(float(ms.mean()), 2),
                     "min": round(float(ms.min()), 2), "max": round(float(ms.max()), 2)},
    }
    return figures, scores


def _busy(phase: str, seconds: float = 2.0) -> float | None:
    """The share of the machine's CPU time that other work takes while this benchmark waits `seconds` before a phase
    (Linux's /proc/stat; None elsewhere), with a warning from 10 %: on a busy machine torch's OpenMP threads wait on
    each other and its figures swing many-fold from pass to pass. (The load average would count the previous phase.)"""
    def ticks():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest time is inside user)
        return sum(v) - v[3] - v[4], sum(v)  # busy (all but idle and iowait), total

    try:
        busy0, total0 = ticks()
        time.sleep(seconds)
        busy1, total1 = ticks()
    except OSError:
        return None
    share = round((busy1 - busy0) / max(total1 - total0, 1), 3)
    if share >= 0.1:
        print(f"serve_bench: other work took {share:.0%} of the CPUs before the {phase} phase: its figures are the "
              "machine's, not only the code's", file=sys.stderr, flush=True)
    return share


def jax_phase(path: Path, prompts: list[str], seconds: float) -> tuple[dict, np.ndarray]:
    import jax

    import reft_jax

    began = time.perf_counter()
    filt = reft_jax.Filter.load(path)
    load_s = time.perf_counter() - began
    figures, scores = _measure(filt, prompts, seconds)
    filt.share_prefix = False  # every batch whole, as the peer runs it: the same work
    whole, whole_scores = _measure(filt, prompts, seconds)
    whole["max_abs_diff_vs_shared"] = float(np.abs(whole_scores - scores).max())
    return {"load_s": round(load_s, 3), "devices": [str(d) for d in jax.devices()], "scorer": filt.scorer,
            "layers": list(filt.layers), "dtype": filt.serving.dtype, "prefix_tokens": len(filt.prefix_ids),
            "suffix_buckets": list(filt.suffix_buckets), **figures, "whole": whole}, scores


def torch_phase(path: Path, prompts: list[str], seconds: float) -> tuple[dict, np.ndarray]:
    import torch

    from reft_jax.bench.filter_peer import TorchFilter

    began = time.perf_counter()
    peer = TorchFilter(path)
    load_s = time.perf_counter() - began
    figures, scores = _measure(peer, prompts, seconds)
    return {"load_s": round(load_s, 3), "device": str(peer.device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "dtype": "float32", **figures}, scores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (ConnectionError, urllib.error.URLError):
        return None


def _rss_mb(pid: int) -> float | None:
    """A process's resident memory in MB (Linux's /proc; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def memory_phase(url: str, pid: int, prompts: list[str], requests: int, seconds: float) -> dict:
    """The server's RSS after the load tests, then after each round of 8 clients until `requests` more requests were
    answered: (requests answered in this phase, RSS in MB) pairs, and the errors."""
    rounds, done, errors = [(0, _rss_mb(pid))], 0, 0
    while done < requests:
        report = loadtest.run(url, prompts, clients=8, seconds=seconds)
        done, errors = done + report["requests"], errors + report["errors"]
        rounds.append((done, _rss_mb(pid)))
        print(f"serve_bench: {done} requests, server RSS {rounds[-1][1]} MB", file=sys.stderr, flush=True)
    rss = [mb for _, mb in rounds if mb is not None]
    return {"requests": done, "errors": errors, "rss_mb": rounds,
            "growth_mb": round(rss[-1] - rss[0], 1) if rss else None}


def serve_phase(path: Path, prompts: list[str], seconds: float, want: dict[str, float], log: Path,
                memory_requests: int = 0) -> dict:
    """The server's load tests, and the largest gap between its scores and the batch path's (`want`); with
    memory_requests, its memory over that many more requests (`memory_phase`)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "reft_jax.cli", "serve", "--filter", str(path), "--port", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        began = time.perf_counter()
        while _health(url) != 200:
            if server.poll() is not None or time.perf_counter() - began > READY_TIMEOUT_S:
                raise RuntimeError(f"the server did not become ready; its log:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        ready_s = time.perf_counter() - began
        tests, gap = [], 0.0
        for clients in CLIENTS:
            report = loadtest.run(url, prompts, clients=clients, seconds=seconds)
            for text, scores in report.pop("scores").items():
                gap = max(gap, *(abs(s - want[text]) for s in scores))
            tests.append(report)
        memory = memory_phase(url, server.pid, prompts, memory_requests, seconds) if memory_requests else None
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
    return {"command": shlex.join(command), "ready_s": round(ready_s, 3), "load_tests": tests,
            "max_abs_diff_vs_jax": gap, "exit_code": code, **({"memory": memory} if memory else {})}


def _commit() -> dict:
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main(argv=None) -> int:
    args, overrides = _args(argv)
    prompts = _prompts(args.prompts, args.n)
    report = {"command": shlex.join([sys.executable, *sys.argv]), **_commit(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                          "python": platform.python_version(), "malloc": malloc.loaded(),
                          "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}},
              "prompts": {"n": len(prompts), "distinct": len(set(prompts)), "file": args.prompts},
              "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        path = _bundle(args.source, args.config, overrides, Path(tmp))
        report["bundle"] = str(path)
        report["busy_before"] = {"jax": _busy("jax")}
        report["jax"], jax_scores = jax_phase(path, prompts, args.seconds)
        gc.collect()  # the JAX filter's model is freed before the peer loads its own
        report["busy_before"]["torch"] = _busy("torch")
        report["torch"], torch_scores = torch_phase(path, prompts, args.seconds)
        report["torch"]["max_abs_diff_vs_jax"] = float(np.abs(torch_scores - jax_scores).max())
        gc.collect()
        report["busy_before"]["serve"] = _busy("serve")
        want = {p: float(s) for p, s in zip(prompts, jax_scores)}
        report["serve"] = serve_phase(path, prompts, args.seconds, want, Path(tmp) / "serve.log",
                                      args.memory_requests)
    # the target: >= 1, JAX's prompts/s at least the peer's
    report["jax_over_torch"] = {k: round(report["jax"][k] / report["torch"][k], 3)
                                for k in ("prompts_per_s", "scoring_prompts_per_s")}
    report["jax_over_torch"]["whole_scoring_prompts_per_s"] = round(
        report["jax"]["whole"]["scoring_prompts_per_s"] / report["torch"]["scoring_prompts_per_s"], 3)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    summary = {"jax_over_torch": report["jax_over_torch"],
               **{f"{side} prompts/s": report[side]["prompts_per_s"] for side in ("jax", "torch")},
               **{f"serve, {t['clients']} clients, prompts/s": t["prompts_per_s"]
                  for t in report["serve"]["load_tests"]}}
    print(json.dumps(summary, indent=2))
    memory = report["serve"].get("memory")
    if memory:
        print(f"serve RSS over {memory['requests']} requests: {memory['rss_mb'][0][1]} -> {memory['rss_mb'][-1][1]} MB")
    failed = any(t["errors"] for t in report["serve"]["load_tests"]) or (memory or {}).get("errors")
    return 1 if failed else 0


if __name__ == "__main__":
    malloc.run_on_tcmalloc()  # as the `reft-jax` command runs itself, so each phase has the server's malloc
    sys.exit(main())
