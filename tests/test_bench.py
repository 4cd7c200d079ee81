"""`reft-jax bench`: FLOPs against XLA's own count, the report's fields, and that both frameworks run the same
work (same weights, same first loss). Speed is measured by the benchmark itself, never asserted here."""

import json
from pathlib import Path

import numpy as np
import pytest

from reft_jax.bench import harness, jax_side, workload
from reft_jax.cli import main
from reft_jax.config.files import load_config
from reft_jax.config.schema import RunConfig
from reft_jax.models import LoraConfig, flops, from_hf_dict
from reft_jax.models.from_config import lora_config
from reft_jax.runtime import parallel

TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "bench_tiny.py")
SMALL = ["--config.model.init.hidden_size=64", "--config.model.init.intermediate_size=128",
         "--config.model.init.num_hidden_layers=2", "--config.model.init.num_attention_heads=4",
         "--config.model.init.num_key_value_heads=2", "--config.model.init.vocab_size=512", "--config.model.lora.rank=4",
         "--config.bench.batch_size=2", "--config.bench.seq_len=32", "--config.bench.warmup=1",
         "--config.bench.iters=2"]
RESULT_FIELDS = {"framework", "variant", "step", "finetune", "tokens_per_s", "step_ms", "mfu", "peak_memory_bytes",
                 "step_ms_min", "step_ms_max", "model_flops_per_step", "first_loss", "memory_source"}


@pytest.mark.parametrize("window", [0, 1, 5, 16, 40])
def test_attended_pairs_counts_the_causal_window_mask(window):
    t = 16
    q, k = np.arange(t)[:, None], np.arange(t)[None, :]
    mask = (k <= q) & ((k > q - window) if window else True)
    assert flops.attended_pairs(t, window) == mask.sum()


def test_matmul_params_of_a_llama_layout():
    cfg = from_hf_dict(dict(model_type="llama", vocab_size=100, hidden_size=16, intermediate_size=40,
                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2))
    per_layer = 16 * 16 + 2 * 16 * 8 + 16 * 16 + 3 * 16 * 40  # q, k and v (2 kv heads of 4 dims), o, MLP
    assert flops.matmul_params(cfg) == 3 * per_layer + 16 * 100
    lora = LoraConfig(2, 4.0, ("q_proj", "v_proj"))
    assert flops.lora_params(cfg, lora) == 3 * 2 * ((16 + 16) + (16 + 8))


@pytest.mark.parametrize("step", ["teacher", "student"])
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_model_flops_match_xla_cost_analysis(step, finetune):
    """The oracle is XLA's count of the compiled step: it adds elementwise work (norms, softmax, AdamW) on top
    of the model FLOPs, and under LoRA it has no weight gradients of frozen weights, as flops.py assumes."""

    cfg = RunConfig.of(load_config(TINY_CONFIG, ["--config.bench.seq_len=64", "--config.bench.batch_size=2"]))
    b, t = 2, 64
    model = from_hf_dict(cfg.model.init)
    data = workload.batches(b, t, model.vocab_size, 0)
    jitted, args = jax_side._build_step(cfg, workload.Case(step, finetune), data,
                                        workload.refusal_direction(model.hidden_size, 0))
    cost = jitted.lower(*args).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    lora = lora_config(cfg) if finetune == "lora" else None
    case = workload.Case(step, finetune)
    ours = jax_side.step_loss(cfg, case).flops(model, lora, *jax_side.step_shapes(cfg, case))
    assert 1.0 <= xla / ours < 1.1, (xla, ours)


def test_bench_reports_both_frameworks_on_the_same_work(tmp_path, capsys):
    """Two interleaved rounds: each case's rounds, the ratio's interval, and a report after every case."""
    workdir = tmp_path / "bench"
    assert main(["bench", "--config", TINY_CONFIG, "--workdir", str(workdir), *SMALL,
                 "--config.bench.torch_variants=eager", "--config.bench.rounds=2"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    # A line per case and round as it is measured, JAX and PyTorch alternating.
    progress = [line for line in captured.err.splitlines() if " round " in line]
    assert len(progress) == 16 and [" 1/2" in line for line in progress] == [True] * 8 + [False] * 8
    assert progress[0].startswith("reft-jax bench: jax jit student/full round 1/2") and "torch eager" in progress[4]
    assert report["complete"] and report["workload"]["rounds"] == 2
    assert all(len(r["round_ms"]) == 2 and len(r["times_ms"]) == 4 for r in report["results"])
    assert all(len(r["round_ratios"]) == 2 and r["ratio_ci95"][0] <= r["ratio_ci95"][1] for r in report["ratios"])
    assert report == json.loads((workdir / "bench.json").read_text())
    assert (workdir / "bench.md").read_text().count("| jax | jit |") == 4
    assert not (workdir / "bench_weights").exists()  # the shared init is removed after the run
    results = report["results"]
    assert {(r["framework"], r["variant"], r["step"], r["finetune"]) for r in results} == {
        (f, v, s, m) for f, v in (("jax", "jit"), ("torch", "eager")) for s in ("student", "teacher")
        for m in ("full", "lora")}
    for r in results:
        assert RESULT_FIELDS <= set(r) and "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
        assert 0 < r["mfu"] and r["peak_memory_bytes"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / (r["step_ms"] / 1e3))
    # Same init and same batches: the first step's loss is the same number in both frameworks.
    for step in ("student", "teacher"):
        for finetune in ("full", "lora"):
            losses = {r["framework"]: r["first_loss"] for r in results if (r["step"], r["finetune"]) == (step, finetune)}
            assert losses["jax"] == pytest.approx(losses["torch"], rel=1e-4), (step, finetune, losses)
    assert len(report["ratios"]) == 4 and all(r["ratio"] > 0 for r in report["ratios"])
    assert report["peak_flops"]["source"] == "measured_matmul" and report["peak_flops"]["value"] > 0
    assert report["workload"]["same_weights"] and report["versions"]["torch"] and report["versions"]["jax"]
    assert ("tcmalloc" in report["host"]["malloc"]) == ("/libtcmalloc" in Path("/proc/self/maps").read_text())


def test_torch_compile_variant(tmp_path, capsys):
    args = ["bench", "--config", TINY_CONFIG, "--workdir", str(tmp_path), *SMALL, "--config.bench.steps=teacher",
            "--config.bench.finetune=lora", "--config.bench.frameworks=torch", "--config.bench.torch_variants=compile",
            "--config.bench.peak_flops=1e12"]
    assert main(args) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["variant"] == "compile" and result["compile_s"] > 0 and "error" not in result
    assert result["mfu"] == pytest.approx(result["model_flops_per_step"] / (result["step_ms"] / 1e3) / 1e12)


def test_compile_only_reports_xla_memory_without_running(tmp_path, capsys):
    assert main(["bench", "--config", TINY_CONFIG, "--workdir", str(tmp_path), *SMALL,
                 "--config.bench.compile_only=True", "--config.bench.steps=student"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["devices"]) == {"jax"} and report["workload"]["compile_only"]
    for r in report["results"]:
        assert r["framework"] == "jax" and "error" not in r and r["peak_memory_bytes"] > 0
        assert r["step_ms"] is None and "first_loss" not in r and r["memory"]["temp_bytes"] > 0
    assert "compiled only" in (tmp_path / "bench.md").read_text()


def test_a_case_that_compiles_but_fails_to_run_keeps_its_memory_analysis(monkeypatch):
    """Out of memory at the first call (here: any runtime error) is the case's result, with XLA's analysis."""
    import jax


    def failing_step(*_, **__):
        def fail(x):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

        step = jax.jit(lambda state: (state, dict(loss=jax.pure_callback(fail, jax.ShapeDtypeStruct((), "float32"),
                                                                         state))))
        return step, (jax.numpy.zeros(()),)

    monkeypatch.setattr(jax_side, "_build_step", failing_step)
    cfg = RunConfig.of(load_config(TINY_CONFIG, SMALL[1:]))
    out = jax_side.measure(cfg, workload.Case("student", "full"), "jit", keep=False)
    assert out["error"].startswith("JaxRuntimeError") and out["peak_memory_bytes"] > 0 and "memory" in out
    assert not jax_side._CASES


def test_blockwise_losses_cut_the_student_steps_peak_memory():
    """The compiled step's peak drops by at least the float32 [B, T, V] arrays the blocks avoid: the user,
    alignment and teacher logits (one each)."""

    b, t, vocab = 2, 256, 32000
    peaks = {}
    for block in (0, 64):
        cfg = RunConfig.of(load_config(TINY_CONFIG, [f"--config.model.loss_block={block}",
                                                     "--config.model.init.vocab_size=32000",
                                                     "--config.model.init.num_hidden_layers=1"]))
        data = workload.batches(b, t, vocab, 0)
        jitted, args = jax_side._build_step(cfg, workload.Case("student", "lora"), data,
                                            workload.refusal_direction(256, 0), abstract=True)
        peaks[block] = parallel.executable_memory(jitted.lower(*args).compile())["peak_bytes"]
    assert peaks[0] - peaks[64] >= 3 * b * t * vocab * 4, peaks


@pytest.mark.parametrize("override, message", [
    ("--config.bench.frameworks=jax,mxnet", "bench.frameworks"),
    ("--config.bench.torch_variants=jit", "bench.torch_variants"),
    ("--config.model.lora.rank=0", "model.lora.rank"),
    ("--config.bench.seq_len=4096", "max_position_embeddings"),
    ("--config.model.path=/some/model", "model.path"),
    ("--config.bench.rounds=0", "bench.rounds"),
])
def test_bad_bench_config_is_a_one_line_error(tmp_path, capsys, override, message):
    assert main(["bench", "--config", TINY_CONFIG, "--workdir", str(tmp_path), override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_ratios_pair_jax_with_each_torch_variant():
    results = [dict(framework="jax", variant="jit", step="student", finetune="lora", tokens_per_s=300.0),
               dict(framework="torch", variant="eager", step="student", finetune="lora", tokens_per_s=100.0),
               dict(framework="torch", variant="compile", step="student", finetune="lora", tokens_per_s=None),
               dict(framework="torch", variant="eager", step="teacher", finetune="lora", tokens_per_s=50.0)]
    for r in results:
        r["round_ms"] = [1.0, 1.0]
    results[1]["round_ms"] = [3.0, 3.0]
    assert harness.ratios(results) == [dict(step="student", finetune="lora", jax_variant="jit",
                                            torch_variant="eager", ratio=3.0, ratio_ci95=pytest.approx([3.0, 3.0]),
                                            round_ratios=[3.0, 3.0])]


def test_ratio_interval_is_students_t_on_the_log_ratios():
    per_round, interval = harness.ratio_interval([10.0, 10.0, 10.0], [20.0, 40.0, 40.0])
    assert per_round == [2.0, 4.0, 4.0]
    logs = np.log(per_round)
    half = 4.302653 * logs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom), from a table
    assert interval == pytest.approx([np.exp(logs.mean() - half), np.exp(logs.mean() + half)], rel=1e-6)
    assert harness.ratio_interval([10.0], [20.0]) == ([2.0], None)  # one round: no interval


def test_profile_sums_xla_ops_per_step(tmp_path):
    import jax
    import jax.numpy as jnp

    from reft_jax.bench import profile

    x = jnp.ones((256, 256))
    step = jax.jit(lambda: jnp.tanh(x @ x).sum())
    jax.block_until_ready(step())
    profile.trace_steps(step, tmp_path)
    ops = profile.op_times(tmp_path)
    assert ops and all(o["ms_per_step"] > 0 for o in ops)
    assert sum(o["share"] for o in ops) == pytest.approx(1.0) or len(ops) == 30
    assert not any(o["op"].startswith("$") for o in ops)  # XLA's ops, not Python frames
