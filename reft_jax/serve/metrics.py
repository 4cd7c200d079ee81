"""What `GET /metrics` reports, in Prometheus' text format (the official client library), on a registry of the
server's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, batch_size: int):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("reft_jax_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"],
                                registry=r)
        self.prompts = Counter("reft_jax_prompts", "prompts scored, by endpoint", ["endpoint"], registry=r)
        self.flagged = Counter("reft_jax_flagged", "prompts flagged (score > tau), by endpoint", ["endpoint"],
                               registry=r)
        self.latency = Histogram("reft_jax_request_seconds", "seconds from a request to its response (for the file "
                                 "endpoint: to its first line)", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        sizes = sorted({1, *(2 ** k for k in range(batch_size.bit_length()) if 2 ** k < batch_size), batch_size})
        self.batch_rows = Histogram("reft_jax_batch_rows", f"prompts in each scored batch (of {batch_size} rows)",
                                    buckets=sizes, registry=r)
        self.in_flight = Gauge("reft_jax_requests_in_flight", "scoring requests being answered", registry=r)
        self.ready = Gauge("reft_jax_ready", "1 once the filter is loaded and compiled", registry=r)
        self.compiled = Gauge("reft_jax_compiled_programs", "scoring programs compiled (one per bucket)", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
