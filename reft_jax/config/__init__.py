"""The run configuration: `defaults.default_config()` (the ml_collections ConfigDict users override with
`--config.a.b=value`) and `schema.RunConfig` (its typed, validated view that the code reads).

Config files start from `from reft_jax.config import default_config`."""

from reft_jax.config.defaults import default_config
