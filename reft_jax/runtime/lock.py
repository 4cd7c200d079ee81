"""One process per workdir: a process that runs in a workdir holds an advisory lock on its folder (flock) for the
rest of its life, and a second one stops at once with one line naming the holder. The lock dies with its holder
(nothing stale is left behind, even after a kill) and nothing is written into the workdir for it: the holder is
found in /proc/locks. In a multi-process run (jax.distributed) process 0 holds it for the job."""

from __future__ import annotations

import fcntl
import os
import shlex
from pathlib import Path

from reft_jax.errors import ReftError

_held: dict[Path, int] = {}  # workdir -> the descriptor that holds its lock, for the life of the process


def hold(root: str | Path) -> None:
    """Locks the folder `root` (which exists) for this process; ReftError naming the holder when another has it.
    Holding it already is fine (a command's stages, or the Python API, create several run contexts)."""
    root = Path(root).resolve()
    if root in _held:
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(os.fstat(fd))
        os.close(fd)
        raise ReftError(f"{root}: in use by {holder}; wait for it to end, or use another --workdir") from None
    _held[root] = fd


def _holder(st: os.stat_result) -> str:
    """'process PID (COMMAND)' of the flock on the file `st`, from /proc/locks (Linux); 'another process' else."""
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for line in locks:
        fields = line.split()
        if "->" not in fields and "FLOCK" in fields and device in fields:
            pid = fields[fields.index(device) - 1]
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                return f"process {pid}"
            command = shlex.join(a for a in argv if a)
            return f"process {pid} ({command if len(command) <= 200 else command[:197] + '...'})"
    return "another process"
