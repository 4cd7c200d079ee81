"""Train steps and the loop: one compilation, zero influence of weight-0 examples, exact resume, clean stops."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import small_config, student_loss, synthetic_batch, teacher_loss, tiny_model

from reft_jax.config.schema import CheckpointSection, LoggingSection
from reft_jax.models import flops
from reft_jax.models import LoraConfig
from reft_jax.runtime import parallel
from reft_jax.runtime.state import FrozenModel, create_train_state
from reft_jax.train import loop, runs
from reft_jax.train.optim import make_optimizer
from reft_jax.train.steps import make_step

HERE = Path(__file__).parent


def read_losses(workdir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=2)])
def test_teacher_and_student_steps_compile_once(tmp_path, lora):
    cfg = small_config()
    tx = make_optimizer(cfg.optim, 10)
    teacher_step = make_step(tx, teacher_loss())
    state = create_train_state(tiny_model(lora=lora), tx)
    r = jnp.ones((32,), jnp.float32)
    for i in range(4):
        state, metrics = teacher_step(state, r, synthetic_batch(i))
    assert teacher_step._cache_size() == 1
    student_step = make_step(tx, student_loss())
    student = create_train_state(tiny_model(seed=1, lora=lora), tx)
    teacher = FrozenModel.of_train_state(state)
    losses = []
    for i in range(4):
        student, metrics = student_step(student, teacher, synthetic_batch(i), synthetic_batch(100 + i))
        losses.append(float(metrics["loss"]))
    assert student_step._cache_size() == 1
    assert all(np.isfinite(losses))


def test_weight_zero_examples_do_not_change_the_update():
    """A flagged (or padding) row has weight 0: perturbing its tokens leaves the student update unchanged."""
    cfg = small_config(**{"optim.warmup_steps": 0, "optim.schedule": "constant"})  # lr > 0 at the first step
    tx = make_optimizer(cfg.optim, 10)
    step = make_step(tx, student_loss())
    teacher = FrozenModel.of(tiny_model(seed=7))
    user, align = synthetic_batch(0), synthetic_batch(1)
    user["example_weight"][2] = 0.0
    perturbed = {k: v.copy() for k, v in user.items()}
    perturbed["input_ids"][2] = np.random.default_rng(5).integers(3, 61, perturbed["input_ids"].shape[1])

    def update(batch):
        state = create_train_state(tiny_model(seed=1), tx)
        before = jax.tree.map(np.asarray, state.params)
        state, _ = step(state, teacher, batch, align)
        delta = jax.tree.map(lambda a, b: np.asarray(a) - b, state.params, before)
        assert max(float(np.abs(d).max()) for d in jax.tree.leaves(delta)) > 0
        return delta

    base, other = update(user), update(perturbed)
    jax.tree.map(np.testing.assert_array_equal, base, other)
    # ...whereas perturbing a kept row does change it.
    perturbed["input_ids"][1] = perturbed["input_ids"][2]
    changed = update(perturbed)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), base, changed))
    assert max(diffs) > 0


def test_teacher_run_learns_and_logs(tmp_path):
    cfg = small_config(**{"teacher.steps": 12, "refusal.update_every": 4})
    pool = [synthetic_batch(10_000 + i) for i in range(2)]
    r = runs.train_teacher(cfg, tiny_model(), tmp_path, synthetic_batch, pool).r
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r_["step"] for r_ in records] == list(range(1, 13))
    assert {"loss", "ce", "reg", "grad_norm", "tokens_per_s", "cos_harmful", "cos_harmless"} <= set(records[0])
    assert records[-1]["reg"] < records[0]["reg"]
    assert records[-1]["cos_harmful"] > records[-1]["cos_harmless"]
    assert r.shape == (32,) and np.isfinite(r).all()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def run_teacher(workdir, steps, pause_after=None):
    args = [sys.executable, str(HERE / "run_teacher.py"), str(workdir), str(steps)]
    if pause_after is not None:
        args.append(str(pause_after))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(HERE)})


def damage(checkpoint, how):
    """What a disk or a person can do to a checkpoint: truncate its largest array file, or delete its metadata."""
    if how == "truncate":
        files = [f for f in (checkpoint / "state").rglob("*") if f.is_file()]
        max(files, key=lambda f: f.stat().st_size).write_bytes(b"")
    elif how == "metadata":
        (checkpoint / "state" / "_METADATA").unlink()


STEPS = 10


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The losses of a teacher run of STEPS steps that was never interrupted (the kill tests' reference)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _, err = (proc := run_teacher(workdir, STEPS)).communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return read_losses(workdir)


def assert_same_losses(reference, workdir):
    losses = read_losses(workdir)
    assert reference.keys() == losses.keys() == set(range(1, STEPS + 1))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


@pytest.mark.parametrize("damaged", [None, "truncate", "metadata"])
def test_resume_after_sigkill_gives_the_same_losses(tmp_path, damaged, uninterrupted):
    """Killed after its checkpoint at step 6, the run resumes from it; with that checkpoint damaged, from the
    one before (3), after moving the damaged one aside with a warning. Either way the losses equal a run that
    was never interrupted."""
    interrupted = run_teacher(tmp_path / "b", STEPS, pause_after=6)
    assert interrupted.stdout.readline().strip() == "PAUSED"
    deadline = time.time() + 60
    while not (tmp_path / "b" / "checkpoints" / "6").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let the asynchronous save finish its metadata
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert read_losses(tmp_path / "b").keys() == set(range(1, 7))
    checkpoints = tmp_path / "b" / "checkpoints"
    damage(checkpoints / "6", damaged)
    _, err = (resumed := run_teacher(tmp_path / "b", STEPS)).communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    if damaged:
        assert (checkpoints / "corrupt-6" / "state").is_dir()  # kept for a person to look at
        assert "checkpoints/6: cannot read this checkpoint (" in err and "moved to" in err, err[-2000:]
        assert "bound method" not in err  # the reason is TensorStore's message, not its pointer to the details
        assert "resuming teacher from step 3" in err
    else:
        assert "resuming teacher from step 6" in err
    assert_same_losses(uninterrupted, tmp_path / "b")


def test_a_lora_checkpoint_holds_the_adapters_not_the_base_and_resumes_exactly(tmp_path):
    """Under LoRA a checkpoint holds the step, the adapters and their optimizer state, not the frozen base weights
    (the stage rebuilds those); resumed from it with the base rebuilt, the run's losses equal an uninterrupted one."""
    cfg = small_config(**{"teacher.steps": 6, "refusal.update_every": 2})
    pool = [synthetic_batch(10_000 + i) for i in range(2)]
    lora = LoraConfig(rank=2)
    runs.train_teacher(cfg, tiny_model(lora=lora), tmp_path / "a", synthetic_batch, pool)

    def stops_at_4(step):
        if step == 4:
            raise KeyboardInterrupt  # after the checkpoint at step 3
        return synthetic_batch(step)

    with pytest.raises(KeyboardInterrupt):
        runs.train_teacher(cfg, tiny_model(lora=lora), tmp_path / "b", stops_at_4, pool)
    state = create_train_state(tiny_model(lora=lora), make_optimizer(cfg.optim, 6))
    from reft_jax.runtime.checkpoint import Checkpointer

    checkpoints = Checkpointer(tmp_path / "b" / "checkpoints")
    assert checkpoints.latest_step() == 3
    restored = checkpoints.restore(3, state.checkpointed(), [np.zeros(32, np.float32)])[0]
    checkpoints.close()
    assert set(restored) == {"step", "params", "opt_state"} and int(restored["step"]) == 3
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().metadata(tmp_path / "b" / "checkpoints" / "3" / "state").item_metadata
    assert set(saved) == {"step", "params", "opt_state"}  # what is on disk: no "frozen"
    runs.train_teacher(cfg, tiny_model(lora=lora), tmp_path / "b", synthetic_batch, pool)
    reference, resumed = read_losses(tmp_path / "a"), read_losses(tmp_path / "b")
    assert reference.keys() == resumed.keys() == set(range(1, 7))
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


def _toy_loop(tmp_path, step_fn, steps=8, hooks=(), log_every=1):
    cfg = loop.LoopConfig(steps, CheckpointSection(every=3), LoggingSection(every=log_every, tensorboard=False,
                                                                            progress=False))
    state = {"w": jnp.zeros((3,))}
    return loop.run("toy", tmp_path, cfg, state, step_fn, hooks=hooks)


class CountingHook(loop.Hook):
    """Records when it runs; its carry counts its calls (checkpointed with the state)."""

    def __init__(self, every):
        self.every, self.carry, self.calls = every, jnp.zeros(()), []

    def __call__(self, state, step):
        self.calls.append((step, float(state["w"][0])))
        self.carry = self.carry + 1
        return {"hook_step": float(step)}


def test_hooks_run_every_n_steps_before_the_step_and_after_the_last(tmp_path):
    hook = CountingHook(every=3)
    _toy_loop(tmp_path / "a", lambda state, i: ({"w": state["w"] + 1}, {"loss": 1.0}), hooks=[hook], log_every=100)
    # Before steps 1, 4 and 7 (when 0, 3 and 6 steps are done), and once after the last (8 done).
    assert hook.calls == [(0, 0.0), (3, 3.0), (6, 6.0), (8, 8.0)] and float(hook.carry) == 4
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # Each call's metrics go into the next record written, which is written whatever log_every says.
    assert [(r["step"], r.get("hook_step")) for r in records] == [(1, 0.0), (4, 3.0), (7, 6.0), (8, 8.0)]


def test_a_hooks_carry_is_checkpointed_and_restored(tmp_path):
    def step_fn(state, i):
        if i == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"w": state["w"] + 1}, {"loss": 1.0}

    with pytest.raises(loop.Preempted):
        _toy_loop(tmp_path, step_fn, hooks=[CountingHook(every=2)])
    resumed = CountingHook(every=2)
    _toy_loop(tmp_path, lambda state, i: ({"w": state["w"] + 1}, {"loss": 1.0}), hooks=[resumed])
    # Calls before steps 1, 3 and 5 were saved with step 5's checkpoint; then before 7, and after the last.
    assert [step for step, _ in resumed.calls] == [6, 8] and float(resumed.carry) == 5


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def step_fn(state, i):
        loss = jnp.nan if i == 4 else 1.0 / (i + 1)
        return {"w": state["w"] + 1}, {"loss": loss}

    with pytest.raises(loop.TrainingDiverged, match="step 5; stopped. Last good checkpoint: step 3"):
        _toy_loop(tmp_path, step_fn)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path):
    def step_fn(state, i):
        if i == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"w": state["w"] + 1}, {"loss": 1.0}

    with pytest.raises(loop.Preempted, match="SIGTERM at step 5"):
        _toy_loop(tmp_path, step_fn)
    assert (tmp_path / "checkpoints" / "5").exists()
    # Resuming continues from step 5 with the saved state.
    seen = []

    def resume_fn(state, i):
        seen.append((i, float(state["w"][0])))
        return {"w": state["w"] + 1}, {"loss": 1.0}

    _toy_loop(tmp_path, resume_fn)
    assert seen[0] == (5, 5.0) and len(seen) == 3


def _half(batch, part):
    rows = slice(0, 2) if part == 0 else slice(2, 4)
    return {k: v[rows] for k, v in batch.items()}


def test_a_sigterm_after_the_last_check_reaches_the_callers_handler(tmp_path, monkeypatch):
    """SIGTERM during the final checkpoint write (after the loop's last look at its flag) is not swallowed: the
    loop ends and hands it to the handler it found (the command's: exit for a requeue), not to SIG_IGN."""
    from reft_jax.runtime.checkpoint import Checkpointer

    got = []

    def callers(signum, frame):
        got.append(signum)

    signal.signal(signal.SIGTERM, callers)
    save = Checkpointer.save

    def save_then_signal(self, step, *args):
        save(self, step, *args)
        if step == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "save", save_then_signal)
    _toy_loop(tmp_path, lambda state, step: (state, {"loss": jnp.asarray(1.0)}))
    assert got == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is callers


def test_gradient_accumulation_matches_the_full_batch():
    """Two micro-batches with grad_accum=2 make the same update as one step on their union (equal token
    counts per micro-batch, so the mean of the means is the mean)."""
    r = jnp.linspace(-1.0, 1.0, 32)
    batch = synthetic_batch(0, harmful=(1, 0, 0, 1))
    results = []
    for accum, batches in ((1, [batch]), (2, [_half(batch, 0), _half(batch, 1)])):
        cfg = small_config(**{"optim.grad_accum": accum, "optim.warmup_steps": 0, "optim.schedule": "constant"})
        tx = make_optimizer(cfg.optim, 4)
        step = make_step(tx, teacher_loss())
        state = create_train_state(tiny_model(), tx)
        for b in batches:
            state, _ = step(state, r, b)
        results.append(jax.tree.map(np.asarray, state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), *results)  # Adam: atol ~1% of an update


def test_bfloat16_compute_with_float32_master_weights():
    from flax import nnx

    from reft_jax.models import ModelConfig, RuntimeOptions, Transformer
    cfg = small_config()
    tx = make_optimizer(cfg.optim, 10)
    losses = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = Transformer(ModelConfig("llama", 61, 32, 48, 2, 4, 2, 8),
                            RuntimeOptions(dtype=dtype, param_dtype=jnp.float32), rngs=nnx.Rngs(0))
        step = make_step(tx, teacher_loss())
        state = create_train_state(model, tx)
        values = []
        for i in range(3):
            state, metrics = step(state, jnp.ones((32,)), synthetic_batch(i))
            values.append(float(metrics["loss"]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        losses[dtype] = values
    np.testing.assert_allclose(losses[jnp.bfloat16], losses[jnp.float32], rtol=0.03)


def test_a_run_counts_the_flops_its_own_steps_report(tmp_path):
    """The cost of a training run is its step's own count (the loss's `flops`) for every step call, and a
    forward pass over the pool per R_l recomputation that the loop actually made (its metrics records)."""
    shape = parallel.global_shape(synthetic_batch(0))
    pool = [synthetic_batch(10_000 + i) for i in range(2)]
    cfg = small_config(**{"teacher.steps": 6, "refusal.update_every": 4})
    model = tiny_model(lora=LoraConfig(rank=2))
    trained = runs.train_teacher(cfg, model, tmp_path / "teacher", synthetic_batch, pool)
    records = [json.loads(line) for line in (tmp_path / "teacher" / "metrics.jsonl").read_text().splitlines()]
    recomputations = sum("refusal_step" in r for r in records)
    per_step = teacher_loss().flops(model.cfg, model.opts.lora, shape, shape)  # reg_pool: a pool batch
    assert per_step > flops.train_flops(model.cfg, *shape, model.opts.lora)
    assert trained.flops == 6 * per_step + recomputations * len(pool) * flops.forward_flops(model.cfg, *shape)

    for beta in (1.0, 0.0):
        cfg = small_config(**{"student.steps": 3})
        spec = runs.student(cfg, tiny_model(seed=1) if beta else None, synthetic_batch, synthetic_batch, steps=3,
                            beta=beta)
        student = runs.train(cfg, tiny_model(), tmp_path / f"student{beta}", spec)
        own = student_loss(beta=beta).flops(student.model.cfg, None, shape, shape)
        assert student.flops == 3 * own
        # distilling: both batches trained and the teacher's forward; plain finetuning: the user batch alone
        passes = 2 * flops.train_flops(student.model.cfg, *shape) + flops.forward_flops(student.model.cfg, *shape)
        assert own == (passes if beta else flops.train_flops(student.model.cfg, *shape))

    # the safety alignment: SFT on its one batch a step, in a run of its own name
    spec = runs.safety_alignment(cfg, synthetic_batch, steps=3)
    assert spec.name == "safety_alignment" and len(spec.batches) == 1
    aligned = runs.train(cfg, tiny_model(), tmp_path / "safety_aligned", spec)
    assert aligned.flops == 3 * flops.train_flops(aligned.model.cfg, *shape)


QUIET = """
import asyncio, gc, types
import reft_jax.runtime.checkpoint
suspend = types.coroutine(lambda: (yield))
async def read():
    try:
        await suspend()
    finally:
        raise Exception("{message}: <bound method spec of TensorStore>")
coro = read(); coro.send(None); del coro; gc.collect()  # closed at collection: "Exception ignored in"
async def task():
    raise Exception("{message}: <bound method spec of TensorStore>")
async def main():
    asyncio.ensure_future(task())
    await asyncio.sleep(0.01)
asyncio.run(main()); gc.collect()  # never awaited: "Task exception was never retrieved"
"""


def test_the_other_reads_of_a_damaged_checkpoint_stay_quiet():
    """When one array of a checkpoint cannot be read, Orbax's other reads fail at garbage collection (sometimes,
    by timing: "Exception ignored in: <coroutine ...>" or asyncio's "Task exception was never retrieved", each
    with TensorStore's spec): the warning of restore_latest has said it once, stderr shows no more. Another
    error still shows, both ways."""
    for message, shown in (("Encountered error while reading array index: (slice(0, 2, 1),)", False),
                           ("something else", True)):
        err = subprocess.run([sys.executable, "-c", QUIET.format(message=message)], capture_output=True,
                             text=True).stderr
        assert ("Exception ignored in: <coroutine object read" in err) == shown, err
        assert ("Task exception was never retrieved" in err) == shown, err
        assert ("bound method" in err) == shown, err


def test_a_kill_during_a_checkpoint_write_leaves_the_one_before(tmp_path, uninterrupted):
    """The process dies while its step-6 checkpoint is being written: the rerun resumes from a complete
    checkpoint (3, or 6 if the write had finished) and ends with the losses of an uninterrupted run."""
    dying = subprocess.run([sys.executable, str(HERE / "run_teacher.py"), str(tmp_path / "b"), str(STEPS)],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE), "DIE_IN_SAVE": "6"})
    assert dying.returncode == 9
    _, err = (resumed := run_teacher(tmp_path / "b", STEPS)).communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert "resuming teacher from step 3" in err or "resuming teacher from step 6" in err, err[-2000:]
    assert_same_losses(uninterrupted, tmp_path / "b")


def test_with_no_readable_checkpoint_the_stage_starts_over(tmp_path, caplog):
    from reft_jax.runtime.checkpoint import Checkpointer

    state = {"w": jnp.arange(64.0)}
    checkpoints = Checkpointer(tmp_path, max_to_keep=2)
    checkpoints.save(4, state, {}, {"seed": 0})
    checkpoints.close()
    for f in (tmp_path / "4" / "state").rglob("*"):  # every file of it emptied
        if f.is_file():
            f.write_bytes(b"")
    checkpoints = Checkpointer(tmp_path, max_to_keep=2)
    with caplog.at_level("WARNING"):
        assert checkpoints.restore_latest(state, {}) is None
    assert "no readable checkpoint left; the stage starts over from step 0" in caplog.text
    assert (tmp_path / "corrupt-4").is_dir() and checkpoints.latest_step() is None
    checkpoints.close()
