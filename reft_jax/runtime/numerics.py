"""The one precision rule of the maths modules: softmax, cross-entropy, KL and cosine run in at least float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def at_least_f32(x: jax.Array) -> jax.Array:
    """Upcasts to at least float32 (bf16 -> f32; f64 stays f64, so that x64 gradient checks stay exact)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
