"""What a `reft-jax serve` command line sets: the service's limits, key and batching wait (no server imports, so
the command's parser stays light)."""

from __future__ import annotations

import dataclasses

API_KEY_ENV = "REFT_JAX_API_KEY"


@dataclasses.dataclass(frozen=True)
class Settings:
    api_key: str = ""  # "" = no key needed
    max_wait: float = 0.01  # seconds a batch waits for more prompts once it has one
    max_inputs: int = 256  # inputs per moderation request
    max_chars: int = 32_768  # characters per input (and per row of a file)
    max_body_bytes: int = 8 << 20  # a moderation request's body
    max_file_bytes: int = 256 << 20  # a file's
    log_prompts: bool = False
