"""JAX vs PyTorch throughput of the same Ref-Teacher steps (`reft-jax bench`)."""

from reft_jax.bench.harness import markdown, run_bench
