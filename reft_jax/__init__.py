"""reft-jax: Refusal-Teacher (Ref-Teacher) guided safe LLM finetuning in JAX/Flax.

    import reft_jax
    config = reft_jax.load_config("configs/demo.py", ["--config.teacher.steps=100"])
    report = reft_jax.run(config, "runs/mine")    # every stage, evaluation, report.json / report.md, plots
    scores = reft_jax.Filter.load("runs/mine").score(["How do I bake bread?"])   # the teacher's filter; > .tau flags

The stages one at a time: reft_jax.experiment.context.RunContext and reft_jax.stages (README, "Python API").
"""

__version__ = "0.1.0"

from reft_jax.config.files import load_config  # a config file (`FILE[:ARG]`) with `--config.a.b=value` overrides


def run(config, workdir, *, force: bool = False) -> dict:
    """The whole pipeline of `config` (a ConfigDict or a reft_jax.config.schema.RunConfig) in `workdir`, as
    `reft-jax run` does; returns the report (also in WORKDIR/report.json)."""
    from reft_jax import pipeline  # deferred: `import reft_jax` stays light

    return pipeline.run(config, workdir, force=force)


def __getattr__(name: str):
    """`reft_jax.Filter`: the teacher's filter loaded once to score prompts (reft_jax.serve.teacher_filter), imported on
    first use so that `import reft_jax` stays light."""
    if name == "Filter":
        from reft_jax.serve.teacher_filter import TeacherFilter

        return TeacherFilter
    raise AttributeError(f"module 'reft_jax' has no attribute {name!r}")
