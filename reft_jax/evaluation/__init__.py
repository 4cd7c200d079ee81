"""Evaluation: KV-cache generation, Harmful-Score judges, task and filter metrics, likelihood measures."""

from reft_jax.evaluation.generate import GenerationConfig, decode, generate, generate_text, generate_tokens
from reft_jax.evaluation.judges import (
                                        REFUSAL_PHRASES,
                                        BeaverTailsJudge,
                                        Judge,
                                        KeywordJudge,
                                        LlamaGuardJudge,
                                        harmful_score,
)
from reft_jax.evaluation.metrics import finetune_accuracy
from reft_jax.refusal.metrics import filter_metrics
