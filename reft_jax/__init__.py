"""reft-jax: Refusal-Teacher (Ref-Teacher) guided safe LLM finetuning in JAX/Flax.

    import reft_jax
    config = reft_jax.load_config("configs/demo.py", ["--config.teacher.steps=100"])
    report = reft_jax.run(config, "runs/mine")    # every stage, evaluation, report.json / report.md, plots

The stages one at a time: reft_jax.context.RunContext and reft_jax.stages (README, "Python API").
"""

__version__ = "0.1.0"


def load_config(path: str, overrides=()):
    """A config file (`FILE[:ARG]`; `configs/NAME.py` is found in the installed package too) with
    `--config.a.b=value` overrides, as the command line reads it (an ml_collections ConfigDict)."""
    from reft_jax.cli import load_config as load  # deferred: `import reft_jax` stays light

    return load(path, list(overrides))


def run(config, workdir, *, force: bool = False) -> dict:
    """The whole pipeline of `config` (a ConfigDict or a reft_jax.run_config.RunConfig) in `workdir`, as
    `reft-jax run` does; returns the report (also in WORKDIR/report.json)."""
    from reft_jax import pipeline  # deferred: `import reft_jax` stays light

    return pipeline.run(config, workdir, force=force)
