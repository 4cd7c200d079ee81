"""Results replaced only when the new ones are whole: a file is written beside its place and renamed onto it; a
folder is built in a sibling and renamed into place (an export), or a stage's previous folder waits whole in a
sibling while the stage writes anew, and comes back when the stage fails (the stages resume from checkpoints in
their own folder, so they write in place). Checkpoints are written the same way by Orbax."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PREVIOUS = ".previous"  # .NAME.previous: a stage's previous folder while it is redone
PARTIAL = ".partial"  # .NAME.partial: a folder being built


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def write_text(path: str | Path, text: str) -> None:
    """`path` holds `text` whole, or what it held before (a full disk, a kill): written beside it, then renamed."""
    path = Path(path)
    partial = _sibling(path, PARTIAL)
    try:
        partial.write_text(text)
    except OSError as e:  # named by the file it was for (a write error carries no name)
        partial.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.replace(partial, path)


@contextlib.contextmanager
def replacing(folder: Path, primary: bool = True):
    """The block writes new results into `folder` while the previous ones wait, whole, in a sibling: a block that
    fails (an error, a rejected input, Ctrl-C) gets them back exactly as they were, one that ends removes them. A
    process killed inside the block leaves both, and `recover` puts the previous ones back. primary: the process
    that moves files (process 0 of a multi-process run; the others only run the block)."""
    aside = _sibling(folder, PREVIOUS)
    if primary and folder.exists():
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
    try:
        yield
    except BaseException:
        if primary and aside.exists():
            _put_back(aside, folder)
        raise
    if primary:
        shutil.rmtree(aside, ignore_errors=True)


def _put_back(aside: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    aside.rename(folder)


def recover(root: Path) -> None:
    """Puts back the previous results that a killed process left aside (`replacing`) under the workdir `root`, so a
    run cut off while redoing a stage leaves the workdir as it was before; warns for each."""
    for aside in [*root.glob(f".*{PREVIOUS}"), *root.glob(f"*/.*{PREVIOUS}")]:
        folder = aside.with_name(aside.name[1:-len(PREVIOUS)])
        _put_back(aside, folder)
        log.warning("%s: put back as it was (a run redoing it was cut off)", folder)


@contextlib.contextmanager
def staged(out: Path, primary: bool = True):
    """Yields a folder to build `out` in (a sibling), renamed onto `out` when the block ends, replacing what was
    there whole; a block that fails leaves `out` as it was."""
    out = Path(out)
    partial, aside = _sibling(out, PARTIAL), _sibling(out, PREVIOUS)
    if primary:
        shutil.rmtree(partial, ignore_errors=True)  # a build cut off before
        partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        if primary:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if primary:
        if out.exists():
            out.rename(aside)
        partial.rename(out)
        shutil.rmtree(aside, ignore_errors=True)
