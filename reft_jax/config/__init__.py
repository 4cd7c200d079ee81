"""The run configuration: `schema` declares every field once (type, default, meaning) as the dataclass
`RunConfig`; `default_config()` is that declaration as the ml_collections ConfigDict users override with
`--config.a.b=value`, and `RunConfig.of` its typed, validated view that the code reads; `typed` holds how a field
is declared and how the two forms convert.

Config files start from `from reft_jax.config import default_config`."""

from reft_jax.config.schema import default_config
