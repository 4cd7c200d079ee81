"""Finetune Accuracy, in the shape the evaluation report writes it (the filter's metrics are
`reft_jax.refusal.filter_metrics`, re-exported by `reft_jax.evaluation`)."""

from __future__ import annotations

from collections.abc import Sequence

from reft_jax.data.tasks import Task, accuracy, get_task


def finetune_accuracy(task: str | Task, predictions: Sequence[str], labels: Sequence[str | None]) -> dict:
    """Task accuracy of generated answers: the class name for SST2 / AGNEWS, the final number for GSM8K,
    exact match of the first line for other tasks (the rules of `reft_jax.data.accuracy`)."""
    task = get_task(task)
    missing = [i for i, label in enumerate(labels) if label is None]
    if missing:
        raise ValueError(f"task {task.name!r}: {len(missing)} example(s) without a reference label "
                         f"(first: {missing[0]}); finetune accuracy needs one per example")
    return {"finetune_accuracy": accuracy(task, predictions, labels), "task": task.name,
            "n": len(labels)}
