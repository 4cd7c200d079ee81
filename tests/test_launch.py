"""The launchers: valid bash, shellcheck-clean, XLA flags the installed XLA accepts, and the commands the
launch README documents (checked by running them against stand-ins for reft-jax, srun and gcloud)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["common.sh", "gpu_node.sh", "gpu_session.sh", "slurm.sbatch", "slurm_local.sh", "tpu_pod.sh"]
README = (LAUNCH / "README.md").read_text()


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(LAUNCH / script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", "-x", *(f"launch/{s}" for s in SCRIPTS)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout


def test_gpu_xla_flags_are_known_to_xla():
    text = (LAUNCH / "gpu_node.sh").read_text()
    flags = " ".join(re.findall(r"--xla_\S+", text)).replace('"', "")
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def stand_ins(tmp_path):
    """A bin folder whose reft-jax, srun and gcloud append their argv (one line per call) to calls.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    for name in ("reft-jax", "srun", "gcloud"):
        tool = bin_dir / name
        tool.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n')
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def documented(command_start):
    """The command lines of the README that start with `command_start`, whitespace-normalised."""
    lines = re.findall(r"`(%s[^`]*)`" % re.escape(command_start), README)
    lines += [line for line in README.splitlines() if line.startswith(command_start)]
    return {" ".join(line.split()).split(" (and so on")[0] for line in lines}


def test_gpu_node_runs_the_documented_commands(tmp_path):
    env, log = stand_ins(tmp_path)
    subprocess.run(["bash", "launch/gpu_node.sh", "configs/literature.py:llama2-7b,sst2", "runs/l2_sst2",
                    "--config.model.path=/models/llama-2-7b"], cwd=ROOT, env=env, check=True)
    calls = log.read_text().splitlines()
    assert [c.split()[1] for c in calls] == ["train-teacher", "filter", "finetune"]
    assert calls[0] in documented("reft-jax train-teacher")


def test_slurm_runs_the_documented_commands(tmp_path):
    env, log = stand_ins(tmp_path)
    subprocess.run(["bash", "launch/slurm.sbatch", "configs/literature.py:qwen2-7b,gsm8k", "/shared/runs/q2_gsm8k",
                    "--config.model.path=/shared/models/qwen2-7b"], cwd=ROOT, env={**env, "SLURM_GPUS_ON_NODE": "8"},
                   check=True)  # what `--gpus-per-node=8` sets
    calls = log.read_text().splitlines()
    assert len(calls) == 3 and all(c.startswith("srun --kill-on-bad-exit=1 reft-jax ") for c in calls)
    assert calls[0] in documented("srun --kill-on-bad-exit=1 reft-jax train-teacher")


def test_tpu_pod_runs_the_documented_commands(tmp_path):
    env, log = stand_ins(tmp_path)
    subprocess.run(["bash", "launch/tpu_pod.sh", "my-pod", "us-west4-a", "configs/literature.py:gemma2-9b,agnews",
                    "/mnt/shared/runs/g2_agnews", "--config.model.path=/mnt/shared/models/gemma-2-9b"],
                   cwd=ROOT, env={**env, "CREATE": "1"}, check=True)
    create, ssh = log.read_text().splitlines()
    assert create.startswith("gcloud compute tpus tpu-vm create my-pod --zone us-west4-a")
    assert ssh.startswith("gcloud compute tpus tpu-vm ssh my-pod --zone us-west4-a --worker=all --command ")
    assert "REFT_JAX_MULTIHOST=1" in ssh
    # The remote loop's command with the stage filled in is the one the README documents.
    remote = ssh.split("do reft-jax $stage ", 1)[1].split(" || exit 1", 1)[0]
    assert f"reft-jax train-teacher {remote}" in documented("reft-jax train-teacher")
