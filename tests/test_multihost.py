"""Two processes joined by jax.distributed (2 CPU devices each, gloo collectives) finetune the student with the
same losses as one process with 4 devices, and their checkpoint restores in a one-process run."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import TCMALLOC, TINY, copy_run, without_preload


STUDENT_STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def finetune(workdir, devices, extra=(), process=None):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = without_preload(XLA_FLAGS=flags, JAX_PLATFORMS="cpu")  # each process restarts on tcmalloc, as a user's
    args = [sys.executable, "-m", "reft_jax.cli", "finetune", "--workdir", str(workdir), *TINY,
            f"--config.student.steps={STUDENT_STEPS}", "--config.checkpoint.every=3", "--config.logging.every=1",
            *extra]
    if process is not None:
        index, count, port = process
        args += [f"--config.distributed.coordinator_address=localhost:{port}",
                 f"--config.distributed.num_processes={count}", f"--config.distributed.process_id={index}"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait(*procs) -> str:
    """Waits for the processes; returns the first one's output (stdout, then stderr)."""
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out + err)
    return outputs[0]


def losses(workdir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (workdir / "student" / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, demo_run):
    """A workdir after `train-teacher` and `filter` (TINY): the suite's demo run without its finetunings."""
    base = tmp_path_factory.mktemp("multihost")
    return base, copy_run(demo_run, base / "prepared", ("student", "no_defense", "eval", "report.*", "*.png"))


def test_two_processes_match_one_process_and_restore_in_one(prepared):
    base, prepared_dir = prepared
    one, two = base / "one", base / "two"
    for target in (one, two):
        shutil.copytree(prepared_dir, target)
    out = wait(finetune(one, 4))
    assert "1 process(es), 4 cpu device(s)" in out
    assert f"compilation cache: {os.path.join(os.environ['REFT_JAX_CACHE'], 'jax')}" in out  # the suite's (conftest)
    port = free_port()
    out = wait(finetune(two, 2, process=(0, 2, port)), finetune(two, 2, process=(1, 2, port)))
    assert "2 process(es), 4 cpu device(s)" in out
    assert ("memory allocator: tcmalloc (" in out) == TCMALLOC and out.count("memory allocator:") == 1  # process 0
    reference, distributed = losses(one), losses(two)
    assert [s for s, _ in reference] == [s for s, _ in distributed] == list(range(1, STUDENT_STEPS + 1))
    for (_, a), (_, b) in zip(reference, distributed):
        assert b == pytest.approx(a, rel=1e-5)
    # The two-process checkpoint of step 3 restores in a one-process run on 1 device, which carries on to the
    # same losses (the later checkpoint and the model removed, as a stage stopped after step 3 leaves it).
    shutil.rmtree(two / "student" / "checkpoints" / str(STUDENT_STEPS))
    shutil.rmtree(two / "student" / "model")
    out = wait(finetune(two, 1))
    assert "resuming ref_teacher from step 3" in out  # the run is named after its method
    resumed = losses(two)
    assert [s for s, _ in resumed] == list(range(1, STUDENT_STEPS + 1)) and resumed[:3] == distributed[:3]
    for (_, a), (_, b) in zip(distributed[3:], resumed[3:]):
        assert b == pytest.approx(a, rel=1e-5)


def test_processes_that_disagree_on_the_config_stop_before_the_first_step(tmp_path):
    """One task given another override (a launcher's mistake): every process stops with one line naming the field,
    and nothing is written: the workdir is not even created."""
    port, workdir = free_port(), tmp_path / "run"
    procs = [finetune(workdir, 1, extra, process=(i, 2, port))
             for i, extra in enumerate([(), ("--config.student.steps=7",)])]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        assert err.strip().splitlines()[-1].startswith("reft-jax finetune: error: student.steps: the processes "
                                                       "disagree"), err[-3000:]
        assert "process 1's value differs from process 0's" in err and "Traceback" not in err
    assert not workdir.exists()
