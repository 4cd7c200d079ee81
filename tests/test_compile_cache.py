"""The persistent compilation cache (reft_jax.runtime.compile_cache): where it lives, that a second process reads what the
first compiled, that what JAX's key covers keeps entries apart, and that damage or an unwritable folder costs a
warning, not the run. Each case is a fresh process: JAX decides on its cache at its first compilation."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reft_jax.runtime import compile_cache

# Compiles one program (f) through compile_cache.enable, prints its result and the persistent cache hits seen.
PROGRAM = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from reft_jax.runtime import compile_cache
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
    {patch}
    folder = compile_cache.enable(sys.argv[1], log=False)

    @jax.jit
    def f(x):
        for _ in range(8):
            x = jnp.tanh(x @ x.T) + 1.0
        return x.sum()

    print("result", float(f(jnp.eye(16))), "hits", len(hits), "folder", folder)
""")


def _run(folder, patch: str = "", env: dict | None = None, prefix: str = "", unset: tuple[str, ...] = ()):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    for name in (compile_cache.ENV, *unset):
        env.pop(name, None)
    code = PROGRAM.format(patch=patch)
    cmd = f"{prefix}{sys.executable} -c {_quote(code)} {folder}"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    fields = out.stdout.split()
    return {"result": float(fields[1]), "hits": int(fields[3]), "folder": fields[5], "stderr": out.stderr}


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _entries(folder: Path, name: str = "jit_f") -> list[Path]:
    return sorted(folder.glob(f"{name}-*-cache"))


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "reft-jax" / "jax"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))  # the root of reft-jax's caches
    assert compile_cache.cache_dir() == tmp_path / "env" / "jax"
    assert compile_cache.cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"  # the config field wins
    assert compile_cache.cache_dir("off") is None
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_dir() is None


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    first = _run(tmp_path)
    assert first["hits"] == 0 and first["folder"] == str(tmp_path)
    assert len(_entries(tmp_path)) == 1
    second = _run(tmp_path)
    assert second["hits"] >= 1 and second["result"] == first["result"]
    assert len(_entries(tmp_path)) == 1


def test_the_size_bound_is_on_unless_jaxs_own_setting_says_otherwise(tmp_path):
    """JAX keeps an access-time file beside each entry only under a bound (it evicts by them): a default run has
    one; JAX's own JAX_COMPILATION_CACHE_MAX_SIZE wins over the default (-1: none, what the suite runs with)."""
    for name, env, unset in (("bounded", {}, (compile_cache.MAX_SIZE_ENV,)),
                             ("unbounded", {compile_cache.MAX_SIZE_ENV: "-1"}, ())):
        _run(tmp_path / name, env=env, unset=unset)
        entries, atimes = (list((tmp_path / name).glob(f"*-{kind}")) for kind in ("cache", "atime"))
        assert len(_entries(tmp_path / name)) == 1
        assert len(atimes) == (len(entries) if name == "bounded" else 0), (name, entries, atimes)


def test_what_the_key_covers_keeps_entries_apart(tmp_path):
    """Entries written under another jaxlib version or other XLA flags are never read: each gets its own."""
    base = _run(tmp_path)
    other_flags = _run(tmp_path, env={"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"})
    assert other_flags["hits"] == 0 and len(_entries(tmp_path)) == 2
    other_jaxlib = _run(tmp_path, patch="import jax._src.cache_key as k; k.jaxlib_version_str = '0.0.0+other'")
    assert other_jaxlib["hits"] == 0 and len(_entries(tmp_path)) == 3
    assert other_jaxlib["result"] == base["result"]
    assert _run(tmp_path)["hits"] >= 1  # the original settings still find theirs


def test_a_damaged_entry_is_a_miss_with_a_warning(tmp_path):
    expected = _run(tmp_path)["result"]
    for entry in tmp_path.glob("*-cache"):
        data = entry.read_bytes()
        entry.write_bytes(data[: len(data) // 2])  # truncated, as by a kill or a full disk mid-write
    damaged = _run(tmp_path)
    assert damaged["result"] == expected and damaged["hits"] == 0
    assert "Error reading persistent compilation cache entry" in damaged["stderr"]
    for entry in tmp_path.glob("*-cache"):
        data = bytearray(entry.read_bytes())
        data[len(data) // 3] ^= 0xFF  # one flipped byte: the entry's checksum catches it
        entry.write_bytes(bytes(data))
    assert _run(tmp_path)["result"] == expected


@pytest.mark.parametrize("case", ["not a folder", "full disk"])
def test_an_unwritable_folder_falls_back_to_no_cache(tmp_path, case):
    if case == "not a folder":  # (chmod does not stop root; a path under a file fails for everyone)
        (tmp_path / "file").write_text("")
        folder, prefix = tmp_path / "file" / "cache", ""
    else:  # writes past 64 KiB fail with EFBIG, as on a full disk
        folder, prefix = tmp_path / "cache", "ulimit -f 64; "
    out = _run(folder, prefix=prefix)
    assert out["folder"] == "None" and out["result"] == _run(tmp_path / "ok")["result"]
    warnings = [line for line in out["stderr"].splitlines() if "compilation cache: cannot write" in line]
    assert len(warnings) == 1, out["stderr"]
    assert not (folder.is_dir() and list(folder.glob("*-cache")))
