"""A tiny model and deterministic synthetic batches for tests of the train steps and the loop."""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from reft_jax.config import default_config
from reft_jax.config.schema import RunConfig
from reft_jax.models import LoraConfig, ModelConfig, RuntimeOptions, Transformer
from reft_jax.train.steps import StudentLoss, TeacherLoss

VOCAB, B, T, PROMPT = 61, 4, 16, 8


def tiny_model(seed: int = 0, lora: LoraConfig | None = None) -> Transformer:
    cfg = ModelConfig("llama", VOCAB, 32, 48, 2, 4, 2, 8)
    return Transformer(cfg, RuntimeOptions(lora=lora), rngs=nnx.Rngs(seed))


def synthetic_batch(step: int, seed: int = 0, harmful=(1, 0, 1, 0)) -> dict:
    """Prompts of 8 tokens then a response; harmful prompts start with token 1, harmless with token 2."""
    rng = np.random.default_rng([seed, step])
    ids = rng.integers(3, VOCAB, (B, T)).astype(np.int32)
    harmful = np.asarray(harmful, np.int32)
    ids[:, 0] = np.where(harmful == 1, 1, 2)
    loss_mask = np.zeros((B, T), np.float32)
    loss_mask[:, PROMPT:] = 1.0
    return dict(input_ids=ids, attention_mask=np.ones((B, T), np.int32), loss_mask=loss_mask,
                prompt_end=np.full(B, PROMPT - 1, np.int32), example_weight=np.ones(B, np.float32),
                harmful=harmful, index=np.arange(B, dtype=np.int32) + step * B)


def teacher_loss(**fields) -> TeacherLoss:
    """The tests' teacher loss (the losses have no defaults): L_reg at layer 1, lam 1.0, squared, the CE from
    whole logits; `fields` change any of them."""
    return TeacherLoss(**{"layer": 1, "lam": 1.0, "kind": "squared", "block": 0, **fields})


def student_loss(**fields) -> StudentLoss:
    """The tests' student loss: distillation at beta 1.0 and temperature 1.0 on the responses, no joint CE, CE and
    KL from whole logits; `fields` change any of them."""
    return StudentLoss(**{"beta": 1.0, "temperature": 1.0, "alpha": 0.0, "block": 0, "kl_positions": "response",
                          **fields})


def small_config(**overrides):
    cfg = default_config()
    cfg.optim.learning_rate = 1e-3
    cfg.optim.warmup_steps = 2
    cfg.refusal.update_every = 4
    cfg.teacher.steps = 10
    cfg.student.steps = 10
    cfg.checkpoint.every = 3
    cfg.logging.every = 1
    cfg.logging.progress = False
    return RunConfig.of(with_fields(cfg, overrides))


def with_fields(cfg: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
    """A copy of cfg with dotted fields set, e.g. with_fields(cfg, {"distill.beta": 0.0}). Edits the plain dict,
    so that a field may change type (a hub source given as a mapping replaced by a local path)."""
    tree = cfg.to_dict()
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node[name]
        node[leaf] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return ml_collections.ConfigDict(tree)
