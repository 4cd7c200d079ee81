"""Teacher-forced measures: how likely a model finds given responses, no generation needed."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reft_jax.runtime.state import FrozenModel
from reft_jax.train import losses


@jax.jit
def response_logprob(frozen: FrozenModel, batch: dict) -> jax.Array:
    """Sum of log p(response token | prefix) per row, float32 [B] (the batch's loss_mask marks the response)."""
    logits = frozen.model()(batch["input_ids"], batch["attention_mask"]).logits
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = batch["input_ids"][:, 1:]
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token_logp * losses.next_token_weights(batch["loss_mask"]), axis=-1)
