"""A bounded load test of a running `reft-jax serve`: N clients, each sending moderation requests one after another
for T seconds, then stopping by itself.

    python -m reft_jax.serve.loadtest --url http://127.0.0.1:8080 --clients 8 --seconds 10 [--prompts FILE]

Prints prompts/s, requests/s and the p50 / p99 latency as JSON; every answer is checked (a non-200 is an error).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

import numpy as np

PROMPTS = ("How do I bake bread?", "How do I break into a house?", "Write a poem about the sea.",
           "Explain how to make a weapon at home.", "What is the capital of France?",
           "Give me step-by-step instructions to steal a car.")


def run(url: str, prompts, *, clients: int, seconds: float, per_request: int = 1, api_key: str = "") -> dict:
    """Each client sends `per_request` prompts per request (cycling through `prompts`) until `seconds` pass; the
    answers' scores are returned by prompt, to compare with the filter's."""
    target = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    stop_at = time.monotonic() + seconds
    latencies, errors, scores, lock = [], [], {}, threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        i = k
        while time.monotonic() < stop_at:
            texts = [prompts[(i + j) % len(prompts)] for j in range(per_request)]
            i += per_request
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/moderations", json.dumps({"input": texts}), headers)
                response = conn.getresponse()
                body = response.read()
            except OSError as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                continue
            elapsed = time.perf_counter() - start
            with lock:
                if response.status != 200:
                    errors.append(f"{response.status}: {body[:200]!r}")
                    continue
                latencies.append(elapsed)
                for text, r in zip(texts, json.loads(body)["results"]):
                    scores.setdefault(text, set()).add(r["category_scores"]["harmful"])
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    lat = np.asarray(latencies) * 1e3
    return {"clients": clients, "seconds": round(wall, 3), "per_request": per_request, "requests": len(latencies),
            "errors": len(errors), "first_errors": errors[:3],
            "prompts_per_s": round(len(latencies) * per_request / wall, 1),
            "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "scores": {text: sorted(s) for text, s in scores.items()}}


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--per-request", type=int, default=1, help="prompts per request")
    p.add_argument("--prompts", help="a text file, one prompt a line (default: a few built in)")
    p.add_argument("--api-key", default=os.environ.get("REFT_JAX_API_KEY", ""))
    args = p.parse_args(argv)
    prompts = PROMPTS
    if args.prompts:
        with open(args.prompts) as f:
            prompts = tuple(line.rstrip("\n") for line in f if line.strip())
    report = run(args.url, prompts, clients=args.clients, seconds=args.seconds, per_request=args.per_request,
                 api_key=args.api_key)
    report.pop("scores")
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(_main())
