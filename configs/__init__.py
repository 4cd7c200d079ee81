"""Run configurations (each a Python file with get_config()); installed with the package as reft_jax.configs, so
that `--config configs/demo.py` works from a checkout and after a plain `pip install`."""
