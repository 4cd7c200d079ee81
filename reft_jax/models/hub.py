"""Models named by their Hugging Face hub id: `org/name`, or `org/name@revision` (a branch, tag or commit).

`download` fetches the config, the tokenizer and the safetensors weights (never pickle checkpoints) into the
hub's cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub), with its progress bars, and returns the local
snapshot folder, which then loads like any model folder. A second call reuses the cache; with
`HF_HUB_OFFLINE=1` only the cache is read (how the tests run: no hub is reachable from them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from reft_jax.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a model folder needs; weights in safetensors only.
_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def is_hub_id(path: str) -> bool:
    """`org/name[@revision]` that names no local file or folder."""
    path = str(path)
    return (bool(_HUB_ID.match(path)) and not path.startswith((".", "/", "~"))
            and not os.path.exists(os.path.expanduser(path.split("@")[0])))


def split_id(hub_id: str) -> tuple[str, str | None]:
    """("org/name", revision or None)."""
    repo, _, revision = hub_id.partition("@")
    return repo, revision or None


def download(hub_id: str) -> Path:
    """The local snapshot folder of a hub model (downloaded once; the cache reused)."""
    from huggingface_hub import snapshot_download  # deferred: only hub ids need the client

    repo, revision = split_id(hub_id)
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=_FILES))
    except Exception as e:  # the hub client raises many types (offline, not found, gated): one line says which
        message = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise CheckpointError(f"{hub_id}: cannot download from the hub ({type(e).__name__}: {message})") from None
    if not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"{hub_id}: no safetensors weights on the hub (pickle checkpoints are refused)")
    return folder
