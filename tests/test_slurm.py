"""launch/slurm.sbatch on a real one-node Slurm cluster (launch/slurm_local.sh), on the demo config: a 2-task CPU
job sent SIGTERM mid-teacher requeues itself, fails when one of its tasks is killed, and, submitted again,
finishes with the losses and numbers of one process.
Skipped with its reason only where Slurm is not installed and this is not CI (.ci/run installs it)."""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TCMALLOC, TINY

from reft_jax import stages
from reft_jax.runtime.workdir import Workdir

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = all(shutil.which(c) for c in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol"))
pytestmark = pytest.mark.skipif(not INSTALLED and os.environ.get("CI") != "true",
                                reason="Slurm is not installed (apt-get install slurm-wlm munge)")


KILL_WAIT = 5  # seconds between srun's SIGTERM and SIGKILL to the tasks left (Slurm's default is 30)
REQUEUE_WAIT = 10  # seconds a requeued job waits before it may start again (its credential's life; Slurm's: 120)


def _free_pair() -> int:
    """A port p with p and p + 1 free (slurmctld's and slurmd's)."""
    for _ in range(100):
        port = random.randint(20000, 40000)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(folder), "SLURM_LOCAL_PORT": str(_free_pair()),
           "SLURM_LOCAL_KILL_WAIT": str(KILL_WAIT), "SLURM_LOCAL_REQUEUE_WAIT": str(REQUEUE_WAIT)}
    started = subprocess.run(["bash", "launch/slurm_local.sh", "start"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    env["SLURM_CONF"] = str(folder / "slurm.conf")
    yield env
    stopped = subprocess.run(["bash", "launch/slurm_local.sh", "stop"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    for _ in range(20):  # a killed process leaves the process table a moment later on a loaded machine
        left = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.5)
    assert left == [], f"daemons still running: {left}"  # stop ends exactly the daemons start started


@pytest.fixture(scope="module")
def one_process(demo_run):
    """The reference: the whole demo run (`reft-jax run`) in one process, the suite's."""
    return demo_run


def submit(cluster, workdir: Path, *sbatch_args) -> str:
    """sbatch of launch/slurm.sbatch on the demo config with STAGES=run; returns the job id."""
    proc = subprocess.run(["sbatch", "--parsable", "--ntasks=2", f"--chdir={ROOT}", f"--output={workdir}.out",
                           *sbatch_args, "launch/slurm.sbatch", "configs/demo.py", str(workdir), *TINY],
                          cwd=ROOT, env={**cluster, "STAGES": "run", "LD_PRELOAD": ""}, capture_output=True, text=True,
                          timeout=900)  # no LD_PRELOAD: each task restarts itself on tcmalloc, as a user's does
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_state(cluster, job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=cluster, capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")


def wait_for(cluster, job: str, timeout: float = 900) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(cluster, job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(2)
    subprocess.run(["scancel", job], env=cluster)
    raise AssertionError(f"job {job} still {job_state(cluster, job)} after {timeout} s")


def losses(workdir: Path, stage: str) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(reference: Path, workdir: Path) -> None:
    """The losses of every trained stage to the multi-process test's tolerance, and the report's numbers."""
    for stage in ("teacher", "student", "no_defense"):
        assert losses(workdir, stage) == pytest.approx(losses(reference, stage), rel=1e-5), stage
    a, b = (json.loads((w / "report.json").read_text()) for w in (reference, workdir))
    for name in a["methods"]:
        for key in ("harmful_score", "finetune_accuracy"):
            assert b["methods"][name][key] == a["methods"][name][key], (name, key)
    for key in ("precision", "recall", "auroc", "num_flagged"):
        assert b["filter"][key] == pytest.approx(a["filter"][key], abs=1e-6), key


def wait_until(condition, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)


def task_pid(workdir: Path, task: int) -> int:
    """The pid of the job's task `task` (its reft-jax process, not srun)."""
    for pid in subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True).stdout.split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if b"srun" not in command[0] and f"SLURM_PROCID={task}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no task {task} running on {workdir}")


def test_a_preempted_job_and_a_job_with_a_dead_task_both_end_as_one_process(cluster, one_process, tmp_path):
    """A 2-task job's life. SIGTERM mid-teacher (to every task, as preemption does): the tasks checkpoint, the job
    requeues itself and resumes. Then one task killed (kill -9) after the teacher: srun stops the other and the job
    fails, not requeued, within the cluster's KillWait; submitted again, it goes on without redoing the
    teacher. The result equals the one-process run."""
    workdir, out = tmp_path / "two", Path(f"{tmp_path / 'two'}.out")
    job = submit(cluster, workdir)
    metrics = workdir / "teacher" / "metrics.jsonl"
    # the teacher's step 5 is done, its checkpoint of step 4 written; 16 steps in all
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, "teacher step 5")
    assert job_state(cluster, job) == "RUNNING", out.read_text()[-3000:]
    subprocess.run(["scancel", "--signal=TERM", job], env=cluster, check=True)

    teacher_done = stages.STAGES["teacher"].marker(Workdir(workdir))
    wait_until(teacher_done.exists, "finished teacher after the requeue")
    log = out.read_text()
    assert "teacher: SIGTERM at step" in log and "preempted (exit 75)" in log and f"requeueing job {job}" in log
    assert "(restart 1)" in log and "resuming teacher from step" in log
    os.kill(task_pid(workdir, 1), signal.SIGKILL)
    killed = time.time()
    assert wait_for(cluster, job, timeout=120) == "FAILED", out.read_text()[-3000:]
    assert time.time() - killed < KILL_WAIT + 25  # KillWait and the polling
    log = out.read_text()
    # the other task ends on srun's SIGTERM (143) or KillWait's SIGKILL (137): either way not 75, no requeue
    assert "task 1: Killed" in log and re.search(r"run: failed \(exit 1(37|43)\)", log), log[-3000:]
    assert log.count("requeueing job") == 1

    finished = teacher_done.stat().st_mtime
    job = submit(cluster, workdir)  # what a user does after a failure
    assert wait_for(cluster, job) == "COMPLETED", out.read_text()[-3000:]
    log = out.read_text()
    assert "2 task(s), 0 GPU(s) per task" in log and "reft-jax run: 2 process(es), 2 cpu device(s)" in log
    assert ("memory allocator: tcmalloc (" in log) == TCMALLOC
    assert teacher_done.stat().st_mtime == finished  # the finished teacher was not redone
    assert_same_run(one_process, workdir)
