"""Failures a user can cause, through the command as a user calls it (a subprocess): one plain line on stderr
naming what to fix, exit code 2, and a rerun that finishes and matches an uninterrupted run."""

import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
from conftest import TINY

from reft_jax import stages
from reft_jax.runtime.workdir import Workdir


def reft_jax(*args, file_limit: int | None = None):
    """`reft-jax ARGS` in a subprocess; file_limit: RLIMIT_FSIZE in bytes (what `ulimit -f` sets)."""
    def limit():
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "reft_jax.cli", *args], capture_output=True, text=True,
                          preexec_fn=limit, timeout=600,
                          env={**os.environ, **({"REFT_JAX_CACHE": "off"} if file_limit else {})})


def one_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    error = [line for line in lines if ": error: " in line]
    assert len(error) == 1 and error[0] == lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "\\n" not in error[0] and '\\"' not in error[0], proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in error[0], error[0]
    return error[0]


def losses(workdir, stage="teacher"):
    return [json.loads(line)["loss"] for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clean(demo_run):
    """The teacher stage run once without interruption (the suite's demo run): the reference of the reruns."""
    return demo_run


def test_a_full_disk_is_one_line_and_the_rerun_matches(tmp_path, clean):
    """A file size limit (EFBIG, as `ulimit -f` gives; a full disk is ENOSPC, handled alike) stops the teacher at
    its first checkpoint write; the rerun without it finishes with the losses of an uninterrupted run."""
    workdir = tmp_path / "run"
    line = one_line(reft_jax("train-teacher", "--workdir", str(workdir), *TINY, file_limit=300_000),
                    "teacher/checkpoints: File too large", "run the same command again")
    assert line.startswith("reft-jax train-teacher: error: ")
    assert reft_jax("train-teacher", "--workdir", str(workdir), *TINY).returncode == 0
    assert losses(workdir) == pytest.approx(losses(clean), rel=1e-6)


def test_a_damaged_last_checkpoint_falls_back_to_the_one_before(tmp_path, clean):
    """What a kill or a disk can leave: the stage not done and its last checkpoint unreadable (the largest file
    of its arrays truncated). The rerun warns once, naming the step and the reason, moves the checkpoint aside,
    resumes from the one before and ends with the losses of the uninterrupted run."""
    workdir = tmp_path / "run"
    shutil.copytree(clean, workdir)
    stages.STAGES["teacher"].marker(Workdir(workdir)).unlink()  # the stage stopped before its end
    checkpoints = workdir / "teacher" / "checkpoints"
    *_, before, last = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    arrays = [f for f in (checkpoints / str(last) / "state").rglob("*") if f.is_file()]
    max(arrays, key=lambda f: f.stat().st_size).write_bytes(b"")
    rerun = reft_jax("train-teacher", "--workdir", str(workdir), *TINY)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr[-3000:]
    warning = [line for line in rerun.stderr.splitlines() if f"checkpoints/{last}: cannot read" in line]
    assert len(warning) == 1 and f"moved to {checkpoints}/corrupt-{last}" in warning[0], rerun.stderr[-3000:]
    assert "bound method" not in warning[0]  # TensorStore's message, not its pointer to the details
    assert f"resuming teacher from step {before}" in rerun.stderr
    assert (checkpoints / f"corrupt-{last}" / "state").is_dir()  # kept for a person to look at
    assert losses(workdir) == pytest.approx(losses(clean), rel=1e-6)


def test_an_unwritable_workdir_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    one_line(reft_jax("train-teacher", "--workdir", str(tmp_path / "a_file" / "run"), *TINY),
             "a_file/run: Not a directory", "a writable --workdir")


@pytest.mark.parametrize("override,message", [
    ("--config.teacher.steps=abc", "--config.teacher.steps=abc: expected an integer"),
    ("--config.refusal.lam=high", "--config.refusal.lam=high: expected a number"),
    ("--config.logging.progress=maybe", "--config.logging.progress=maybe: expected true or false"),
    ("--config.train.steps=10", "--config.train.steps: unknown config field (did you mean teacher.steps?)"),
    ("--config.model.lora.rnak=4", "--config.model.lora.rnak: unknown config field (did you mean model.lora.rank?)"),
])
def test_a_bad_override_names_the_field_and_what_it_takes(tmp_path, override, message):
    one_line(reft_jax("run", "--workdir", str(tmp_path), override), message)
