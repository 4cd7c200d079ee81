"""reft-jax: Refusal-Teacher (Ref-Teacher) guided safe LLM finetuning in JAX/Flax.

    import reft_jax
    config = reft_jax.load_config("configs/demo.py", ["--config.teacher.steps=100"])
    report = reft_jax.run(config, "runs/mine")    # every stage, evaluation, report.json / report.md, plots

The stages one at a time: reft_jax.experiment.context.RunContext and reft_jax.stages (README, "Python API").
"""

__version__ = "0.1.0"

from reft_jax.config.files import load_config  # a config file (`FILE[:ARG]`) with `--config.a.b=value` overrides


def run(config, workdir, *, force: bool = False) -> dict:
    """The whole pipeline of `config` (a ConfigDict or a reft_jax.config.schema.RunConfig) in `workdir`, as
    `reft-jax run` does; returns the report (also in WORKDIR/report.json)."""
    from reft_jax import pipeline  # deferred: `import reft_jax` stays light

    return pipeline.run(config, workdir, force=force)
