"""Reading the refusal feature from a model: which hidden states it is read at (`feature_layer` for the
regulariser, `filter_layers` for the filter) and the jitted passes that read features and scores
(`make_feature_fn`, `make_score_fn`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reft_jax.data import Batch
from reft_jax.errors import ConfigError
from reft_jax.refusal.feature import SCORERS, gather_last_prompt
from reft_jax.runtime.state import FrozenModel


def feature_layer(layer: int, num_layers: int) -> int:
    """The hidden_states index the refusal feature is read at: `layer` (refusal.layer in the config), where -1
    means the middle block, num_layers // 2."""
    return num_layers // 2 if layer < 0 else layer


def filter_layers(span, layer: int, num_layers: int) -> tuple[int, ...]:
    """The hidden_states indices the filter's score averages over (filter.layer_span): from the fraction
    span[0] of the depth to span[1], end excluded, rounded to layers, at least one layer and never the embeddings
    (index 0); an empty span: the regulariser's layer alone (`feature_layer`, the paper's single-layer filter)."""
    if not span:
        return (feature_layer(layer, num_layers),)
    lo, hi = (float(x) for x in span) if len(span) == 2 else (1.0, 0.0)
    if not 0 <= lo < hi <= 1:
        raise ConfigError(f"filter.layer_span: {tuple(span)} is not (start, end) with 0 <= start < end <= 1")
    first = max(1, int(lo * num_layers + 0.5))
    last = min(num_layers, max(first, int(hi * num_layers + 0.5) - 1))
    return tuple(range(first, last + 1))


def make_feature_fn(layer: int | tuple[int, ...]):
    """features(frozen_model, batch, prefix=None) -> [B, D] float32: hidden state `layer` at each last prompt token;
    for a tuple of layers, [len(layers), B, D] from one forward pass (only the blocks up to the deepest run)."""
    layers = (layer,) if isinstance(layer, int) else tuple(layer)

    @jax.jit
    def features(frozen: FrozenModel, batch: Batch, prefix=None) -> jax.Array:
        states = frozen.model().hidden_states_at(batch["input_ids"], batch["attention_mask"], layers, prefix)
        stacked = jnp.stack([gather_last_prompt(h, batch["prompt_end"]) for h in states]).astype(jnp.float32)
        return stacked[0] if isinstance(layer, int) else stacked

    return features


def make_score_fn(layers: tuple[int, ...], scorer: str = "cosine"):
    """score(frozen_model, batch, *params, prefix=None) -> [B] float32: the filter's score of each row, by `scorer`
    (a name of `SCORERS`): "cosine" with params (R [len(layers), D],), the paper's `mean_cosine_scores`; "probe" with
    (w [len(layers), D], b), `probe_scores`. The parameters are arguments, not constants: one compilation serves any
    values of them. Only the scores leave the device. `prefix`: the batch's rows are the tokens after a prefix whose
    keys and values these are (`Transformer.hidden_states_at`)."""
    features, fn = make_feature_fn(tuple(layers)), SCORERS[scorer]

    @jax.jit
    def score(frozen: FrozenModel, batch: Batch, *params, prefix=None) -> jax.Array:
        return fn(features(frozen, batch, prefix), *params)

    return score
