"""What a train step carries: a model as an `nnx.GraphDef` (static) plus `nnx.State`s (arrays).

Every step is then a pure function of arrays that `jax.jit` compiles once and whose state it may donate. Under
LoRA only the adapters (`nnx.LoRAParam`) are trained; the base weights ride along in `frozen`, never
differentiated. This module sits below everything that places or runs these states (sharding, steps,
filters, evaluation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from reft_jax.models import Transformer


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: step calls so far (micro-batches under gradient accumulation)
    params: nnx.State  # what the optimizer updates: every parameter, or the LoRA adapters
    frozen: nnx.State  # the rest of the model (the base weights under LoRA); read-only
    opt_state: optax.OptState
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    def model(self) -> Transformer:
        return nnx.merge(self.graphdef, self.params, self.frozen)

    def checkpointed(self) -> dict:
        """What a checkpoint holds: the step, the trained parameters and the optimizer state. Not `frozen`: each
        stage rebuilds it from the base model before it resumes, and under LoRA it would make every checkpoint
        the size of the model (SmolLM2-135M's teacher: 384 MB per checkpoint with it, 51 MB without)."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


@struct.dataclass
class FrozenModel:
    """A model that is only run forward: the frozen teacher in the student step, or a scorer."""

    states: tuple[nnx.State, ...]
    graphdef: nnx.GraphDef = struct.field(pytree_node=False)

    @classmethod
    def of(cls, model: Transformer) -> "FrozenModel":
        graphdef, state = nnx.split(model)
        return cls((state,), graphdef)

    @classmethod
    def of_train_state(cls, state: "TrainState") -> "FrozenModel":
        return cls((state.params, state.frozen), state.graphdef)

    def model(self) -> Transformer:
        return nnx.merge(self.graphdef, *self.states)


def trainable_filter(model: Transformer):
    """LoRA adapters when the model has them, else every parameter."""
    return nnx.LoRAParam if model.opts.lora is not None else nnx.Param


def create_train_state(model: Transformer, tx: optax.GradientTransformation) -> TrainState:
    graphdef, params, frozen = nnx.split(model, trainable_filter(model), ...)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params),
                      graphdef=graphdef)
