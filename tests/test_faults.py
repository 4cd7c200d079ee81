"""Failures a user can cause, through the command as a user calls it (a subprocess): one plain line on stderr
naming what to fix, exit code 2, and a rerun that finishes and matches an uninterrupted run."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY, copy_run

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
    ("--config.teacher.steps=-5", "teacher.steps: -5 should be at least 1"),
    ("--config.student.steps=0", "student.steps: 0 should be at least 1"),
    ("--config.checkpoint.every=0", "checkpoint.every: 0 should be at least 1"),
    ("--config.logging.every=0", "logging.every: 0 should be at least 1"),
    ("--config.optim.grad_accum=0", "optim.grad_accum: 0 should be at least 1"),
])
def test_a_bad_override_names_the_field_and_what_it_takes(tmp_path, override, message):
    one_line(reft_jax("run", "--workdir", str(tmp_path), override), message)


# -- nothing a user does loses their work ---------------------------------------------------------------

def contents(folder):
    """Every file under `folder` (hidden ones too) -> its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def demo_copy(tmp_path, clean):
    """A copy of the suite's demo run: teacher, filter, student, the baseline, evaluation and report."""
    return copy_run(clean, tmp_path / "run")


def test_a_second_command_on_a_busy_workdir_stops_at_once(tmp_path, clean):
    """Two commands on one workdir: the second stops with one line naming the first's pid and command, before
    anything is read or written; the first ends as a run alone does."""
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "reft_jax.cli", "train-teacher", "--workdir", str(run), *TINY],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (run / "teacher").exists() and first.poll() is None:  # the first holds the workdir by then
        time.sleep(0.2)
    second = reft_jax("train-teacher", "--workdir", str(run), *TINY)
    one_line(second, f"{run}: in use by process {first.pid} (", "train-teacher --workdir", "use another --workdir")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert losses(run) == pytest.approx(losses(clean), rel=1e-6)  # one log, not two interleaved
    assert [json.loads(line)["step"] for line in (run / "teacher" / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(line)["step"] for line in (clean / "teacher" / "metrics.jsonl").read_text().splitlines()]


def test_a_rejected_filter_leaves_the_previous_results_as_they_were(demo_copy, tmp_path):
    """`filter --data BAD` after a person edited kept.jsonl: one line, and the filter folder untouched."""
    with (demo_copy / "filter" / "kept.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "a row a person added", "response": "ok"}) + "\n")
    before = contents(demo_copy / "filter")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "response": "ok"}\n{"prompt": broken\n')
    one_line(reft_jax("filter", "--workdir", str(demo_copy), "--data", str(bad), *TINY), "bad.jsonl line 2")
    assert contents(demo_copy / "filter") == before


def test_a_failed_finetune_leaves_the_previous_student_and_a_cut_off_one_is_put_back(demo_copy, tmp_path):
    """`finetune --force` with a file it rejects: the student as it was. A run killed while redoing a stage leaves
    the previous folder aside; the next command puts it back, with a warning."""
    before = contents(demo_copy / "student")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "response": "ok"}\n{"prompt": "no answer"}\n')
    one_line(reft_jax("finetune", "--workdir", str(demo_copy), "--kept", str(bad), "--force", *TINY),
             "bad.jsonl:2: no response to finetune on")
    assert contents(demo_copy / "student") == before and not (demo_copy / ".student.previous").exists()
    (demo_copy / "student").rename(demo_copy / ".student.previous")  # what a kill in the middle of a redo leaves
    (demo_copy / "student" / "checkpoints").mkdir(parents=True)
    proc = reft_jax("filter", "--workdir", str(demo_copy), "--data", str(tmp_path / "none.jsonl"), *TINY)
    one_line(proc, "none.jsonl: no such file")
    assert f"{demo_copy / 'student'}: put back as it was" in proc.stderr
    assert contents(demo_copy / "student") == before and not (demo_copy / ".student.previous").exists()


def test_an_evaluation_that_cannot_write_its_report_leaves_the_previous_one(demo_copy):
    """A report write cut off (a file size limit; a full disk alike) leaves the previous report whole."""
    assert reft_jax("evaluate", "--workdir", str(demo_copy), *TINY).returncode == 0  # the data's cache filled
    before = (demo_copy / "eval" / "report.json").read_bytes()
    one_line(reft_jax("evaluate", "--workdir", str(demo_copy), *TINY, file_limit=4000),
             "eval/report.json: File too large")
    assert (demo_copy / "eval" / "report.json").read_bytes() == before
    assert sorted(p.name for p in (demo_copy / "eval").iterdir()) == ["report.json"]


def test_an_export_never_mixes_two_exports(demo_copy, tmp_path):
    """--out: a file, or a folder of other files or of another kind of export, is refused in one line and left as
    it was; --force replaces the folder whole; a previous export of the same kind is replaced whole."""
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    one_line(reft_jax("export", "--workdir", str(demo_copy), "--out", str(a_file), *TINY), "a_file: a file, not a folder")
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")  # an adapter export's
    one_line(reft_jax("export", "--workdir", str(demo_copy), "--out", str(out), *TINY),
             "out: holds an adapter export, not a merged model export", "--force")
    assert a_file.read_text() == "mine" and [p.name for p in out.iterdir()] == ["adapter_config.json"]
    assert reft_jax("export", "--workdir", str(demo_copy), "--out", str(out), "--force", *TINY).returncode == 0
    exported = contents(out)
    assert "adapter_config.json" not in {p.name for p in exported} and "model.safetensors" in {p.name for p in exported}
    (out / "stale.txt").write_text("from before")
    assert reft_jax("export", "--workdir", str(demo_copy), "--out", str(out), "--method", "no_defense", *TINY)\
        .returncode == 0  # a merged export over a merged export: replaced whole
    assert not (out / "stale.txt").exists() and contents(out).keys() == exported.keys()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_kept_rows_the_filter_flagged_or_never_scored_are_named_and_strict_refuses_them(demo_copy, tmp_path):
    """`finetune --kept FILE` after `filter --data OWN`: rows the filter scored above tau and rows it never scored
    are counted in one warning and in user_data.json; with --strict, one line and the student as it was."""
    rows = [{k: v for k, v in json.loads(line).items() if k != "score"} for name in ("flagged", "kept")
            for line in (demo_copy / "filter" / f"{name}.jsonl").read_text().splitlines()]
    own = tmp_path / "own.jsonl"  # the demo's harmful pairs and task sentences, as a customer's instruction/output
    own.write_text("".join(json.dumps(r if "instruction" in r else {"instruction": r["sentence"], "output": r["label"]})
                           + "\n" for r in rows[:40]))
    assert reft_jax("filter", "--workdir", str(demo_copy), "--data", str(own), *TINY).returncode == 0
    flagged = (demo_copy / "filter" / "flagged.jsonl").read_text().splitlines()
    kept = (demo_copy / "filter" / "kept.jsonl").read_text().splitlines()
    assert flagged and kept
    reviewed = tmp_path / "reviewed.jsonl"  # kept.jsonl, one flagged row put back, one row never scored added
    reviewed.write_text("\n".join([*kept, flagged[0], json.dumps({"instruction": "never scored", "output": "ok"})])
                        + "\n")
    before = contents(demo_copy / "student")
    one_line(reft_jax("finetune", "--workdir", str(demo_copy), "--kept", str(reviewed), "--strict", "--force", *TINY),
             f"1 row(s) not in the user data {demo_copy / 'filter' / 'scores.jsonl'} scored (first: reviewed.jsonl:"
             f"{len(kept) + 2})", f"1 row(s) the filter scored above tau (first: reviewed.jsonl:{len(kept) + 1})",
             "drop --strict")
    assert contents(demo_copy / "student") == before
    proc = reft_jax("finetune", "--workdir", str(demo_copy), "--kept", str(reviewed), "--force", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if "finetuning on them as given" in line]
    assert len(warning) == 1 and "1 row(s) the filter scored above tau" in warning[0], proc.stderr[-3000:]
    trained = json.loads((demo_copy / "student" / "user_data.json").read_text())
    assert trained["not_scored"] == [f"reviewed.jsonl:{len(kept) + 2}"]
    assert trained["scored_above_tau"] == [f"reviewed.jsonl:{len(kept) + 1}"]


def test_ctrl_c_checkpoints_and_the_same_command_goes_on(tmp_path):
    """Ctrl-C in a training stage: one line naming the step, exit 130, a checkpoint of that step, and the same
    command resumes from it."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "reft_jax.cli", "train-teacher", "--workdir", str(run), *TINY,
            "--config.teacher.steps=60", "--config.refusal.update_every=30", "--config.logging.every=1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    metrics = run / "teacher" / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    step = int(lines[-1].split("interrupted at step ")[1].split(";")[0])
    assert lines[-1] == f"reft-jax train-teacher: interrupted at step {step}; the same command goes on from step {step}"
    assert (run / "teacher" / "checkpoints" / str(step)).is_dir()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and f"resuming teacher from step {step}" in rerun.stderr, rerun.stderr[-3000:]


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    one_line(reft_jax("train-teacher", "--workdir", str(tmp_path / "a_file"), *TINY), "a_file: not a folder")


def test_a_config_file_that_raises_is_one_line_naming_it(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text("def get_config():\n    return 1 / 0\n")
    one_line(reft_jax("train-teacher", "--workdir", str(tmp_path / "run"), "--config", str(config)),
             "mine.py line 2: ZeroDivisionError: division by zero")
    debug = reft_jax("train-teacher", "--workdir", str(tmp_path / "run"), "--config", str(config), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "return 1 / 0" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("reft-jax train-teacher: error: ")


PENDING_WRITE = """
import sys
from pathlib import Path
from reft_jax import cli
from reft_jax.runtime import checkpoint

def full_disk(args, overrides):  # a save that fails with one of its writes still pending, collected at exit
    async def write_fragment():
        pass
    global pending
    pending = write_fragment()
    with checkpoint._os_errors(Path(args.workdir) / "teacher" / "checkpoints"):
        raise ValueError("Error writing: os_error_code='28' [tensorstore]")

cli._run = full_disk
sys.exit(cli.main(["train-teacher", "--workdir", sys.argv[1]]))
"""


def test_nothing_is_printed_after_the_one_line_of_a_failed_write(tmp_path):
    """What made the full-disk test fail on slower machines: Orbax's writes of the failed save, still pending, are
    collected at exit, and Python warned for each after the one line."""
    proc = subprocess.run([sys.executable, "-c", PENDING_WRITE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    one_line(proc, "teacher/checkpoints: No space left on device")
    assert "never awaited" not in proc.stderr
