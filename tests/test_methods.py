"""Baselines and ablations in one harness: each method's stages, the whole table on the demo data, filters
that swap without touching the rest, and the Llama-Guard filter's data flow."""

import json
import shutil
from unittest import mock

import numpy as np
import pytest
from conftest import TINY

from reft_jax import data as rdata
from reft_jax import stages
from reft_jax.cli import main
from reft_jax.config.files import DEMO_CONFIG, load_config
from reft_jax.errors import ConfigError
from reft_jax.experiment.context import RunContext
from reft_jax.experiment.methods import METHODS, selected
from reft_jax.runtime.workdir import Workdir
from reft_jax.stages import finetune, llama_guard_filter, saft_filter

ALL = [*TINY, "--config.methods=all", "--config.baselines.sa_steps=8", "--config.eval.references=True",
       "--config.defences.lisa.align_steps=1", "--config.defences.lisa.user_steps=2", "--config.logging.every=1"]


def context(workdir, *overrides) -> RunContext:
    return RunContext.create(load_config(str(DEMO_CONFIG), [*ALL, *overrides]), workdir)


def test_stage_order_of_every_method():
    assert {name: stages.stages_of(m) for name, m in METHODS.items()} == {
        "ref_teacher": ["teacher", "filter", "finetune:ref_teacher"],
        "no_defense": ["finetune:no_defense"],
        "sa_ft": ["safety_alignment", "finetune:sa_ft"],
        "sa_plus_ft": ["finetune:sa_plus_ft"],
        "filter_only": ["teacher", "filter", "finetune:filter_only"],
        "distill_only": ["teacher", "finetune:distill_only"],
        "saft": ["filter:saft", "finetune:saft"],
        "llamaguard_filter": ["filter:llama_guard", "finetune:llamaguard_filter"],
        "sa_ft+filter": ["teacher", "safety_alignment", "filter", "finetune:sa_ft+filter"],
        "sa_plus_ft+filter": ["teacher", "filter", "finetune:sa_plus_ft+filter"],
        "vaccine": ["alignment:vaccine", "finetune:vaccine"],
        "repnoise": ["alignment:repnoise", "finetune:repnoise"],
        "booster": ["alignment:booster", "finetune:booster"],
        "lisa": ["safety_alignment", "finetune:lisa"],
    }
    assert (METHODS["sa_plus_ft"].joint and not METHODS["sa_plus_ft"].distill
            and METHODS["distill_only"].distill and METHODS["distill_only"].filter is None)


def test_method_selection():
    assert [m.name for m in selected("all")] == list(METHODS)
    assert [m.name for m in selected("saft, sa_ft")] == ["ref_teacher", "no_defense", "saft", "sa_ft"]
    with pytest.raises(ConfigError, match="unknown method 'lora_only'"):
        selected("ref_teacher,lora_only")
    plan = stages.plan(selected("all"))
    assert plan[:5] == ["teacher", "safety_alignment", "alignment:vaccine", "alignment:repnoise", "alignment:booster"]
    assert plan[5:8] == ["filter", "filter:saft", "filter:llama_guard"]
    assert plan[8:] == [f"finetune:{name}" for name in METHODS]


TOKENIZED = []  # what was tokenized during the all-methods run (the desc of each call)


@pytest.fixture(scope="module")
def all_methods(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("all_methods")
    tokenize = rdata.tokenize

    def counted(*args, **kwargs):
        TOKENIZED.append(kwargs["desc"])
        return tokenize(*args, **kwargs)

    with mock.patch.object(rdata, "tokenize", counted):
        assert main(["run", "--workdir", str(workdir), *ALL]) == 0
    return workdir


def test_run_fills_the_whole_table(all_methods):
    # Eleven stages, one run context: each dataset is read and tokenized once (no calibration split: TINY's tau = 0),
    # and the evaluation's harmful prompts, which every filter scores (its held-out recall).
    assert sorted(TOKENIZED) == sorted(["tokenizing alignment data", "tokenizing user data", "tokenizing harmful pairs",
                                        "tokenizing the train prompts", "tokenizing the check prompts",
                                        "tokenizing the harmful test prompts"])
    report = json.loads((all_methods / "report.json").read_text())
    methods = report["methods"]
    assert list(methods) == list(METHODS)
    assert "llama_guard_path" in methods["llamaguard_filter"]["skipped"]
    for name, m in methods.items():
        if name == "llamaguard_filter":
            continue
        assert 0 <= m["harmful_score"] <= 1 and 0 <= m["finetune_accuracy"] <= 1, name
        assert m["stages"] == stages.stages_of(METHODS[name])
        cost = m["cost"]
        assert cost["wall_s"] > 0 and cost["device_s"] >= cost["wall_s"] and cost["flops"] > 0, name
        assert [s["stage"] for s in cost["stages"]] == m["stages"]
        assert (m["filter"] is None) == (METHODS[name].filter is None)
    # The teacher's price shows: Ref-Teacher costs more FLOPs than finetuning alone, by the teacher stage.
    teacher = next(s for s in methods["ref_teacher"]["cost"]["stages"] if s["stage"] == "teacher")
    assert methods["ref_teacher"]["cost"]["flops"] > methods["no_defense"]["cost"]["flops"] + teacher["flops"] * 0.99
    # Distillation adds the teacher forward and the alignment forward/backward to the finetuning FLOPs.
    ft = {n: m["cost"]["stages"][-1]["flops"] for n, m in methods.items() if "cost" in m}
    assert ft["distill_only"] > ft["sa_plus_ft"] > ft["no_defense"]
    # The references: the base model before finetuning and the teacher, measured the same way.
    assert set(report["references"]) == {"base_model", "teacher"}
    assert all(0 <= r["harmful_score"] <= 1 for r in report["references"].values())
    saft = methods["saft"]["filter"]
    assert saft["name"] == "saft" and 0 <= saft["auroc"] <= 1
    assert methods["filter_only"]["filter"] == methods["ref_teacher"]["filter"]
    # The defences' alignment stages cost the passes their algorithms make: Vaccine two per alignment batch
    # (the first without weight gradients), RepNoise an alignment and a harmful one, Booster an alignment and
    # two harmful ones; each step's measured time is in the stage's cost.
    stage_cost = {s["stage"]: s for m in methods.values() for s in (m.get("cost") or {}).get("stages", [])}
    sft = stage_cost["safety_alignment"]["flops"]
    assert 1.5 * sft < stage_cost["alignment:vaccine"]["flops"] < 2 * sft
    assert 2.5 * sft < stage_cost["alignment:booster"]["flops"] < 3.5 * sft
    assert stage_cost["alignment:repnoise"]["flops"] > 2 * sft  # and the logit lens at every depth
    assert all(stage_cost[s]["step_s"] > 0 for s in ("safety_alignment", "alignment:vaccine", "finetune:lisa"))
    md = (all_methods / "report.md").read_text()
    assert md.count("\n| ") >= 14 + 2 and "Llama-Guard filter, then finetuning: skipped" in md
    for folder in ("safety_aligned", "filters/saft", "sa_ft+filter", "sa_plus_ft", "vaccine_aligned", "lisa"):
        assert (all_methods / folder).is_dir(), folder
    lisa = [json.loads(line) for line in (all_methods / "lisa" / "metrics.jsonl").read_text().splitlines()]
    assert [r["alignment_step"] for r in lisa] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # 1 alignment step, then 2 user steps


def test_swapping_the_filter_leaves_the_rest_untouched(all_methods, tmp_path):
    """Give the SAFT slot the Ref-Teacher filter's flags: the SAFT method's finetuning then matches the
    Ref-Teacher filter-only ablation step for step (same data, same start, same loss)."""
    workdir = tmp_path / "swap"
    shutil.copytree(all_methods, workdir)
    shutil.rmtree(workdir / "saft")
    shutil.rmtree(workdir / "filters" / "saft")
    shutil.copytree(workdir / "filter", workdir / "filters" / "saft")
    (workdir / "filters" / "saft" / "inputs.json").unlink()  # the record is the Ref-Teacher filter's, not SAFT's
    stages.run_stage(METHODS["saft"].stage, context(workdir))

    def losses(folder):
        return [json.loads(line)["loss"] for line in (workdir / folder / "metrics.jsonl").read_text().splitlines()]

    assert losses("saft") == pytest.approx(losses("filter_only"), rel=1e-6)
    original = [json.loads(line)["loss"] for line in (all_methods / "saft" / "metrics.jsonl").read_text().splitlines()]
    flags = [{r["index"] for r in map(json.loads, (all_methods / f / "scores.jsonl").read_text().splitlines())
              if r["flagged"]} for f in ("filter", "filters/saft")]
    if flags[0] != flags[1]:  # different flags, different kept data: the filter is what changed the run
        assert original != pytest.approx(losses("saft"), rel=1e-6)


def test_llama_guard_filter_drops_what_the_judge_calls_unsafe(all_methods, tmp_path, monkeypatch):
    """A stand-in judge that calls exactly the harmful (prompt, response) pairs unsafe: the filter must line
    its verdicts up with the user examples' indices (precision and recall 1) and record its cost."""
    from reft_jax.evaluation import judges

    workdir = tmp_path / "guard"
    shutil.copytree(all_methods, workdir)
    ctx = context(workdir, f"--config.baselines.llama_guard_path={tmp_path}")
    harmful_responses = {ex["response"] for ex in ctx.user_examples if ex["harmful"]}

    class StubJudge:
        name = "stub_guard"
        generation = type("G", (), {"max_new_tokens": 4})()

        def __init__(self, path):
            from reft_jax.models import ModelConfig
            self.model = type("M", (), {"cfg": ModelConfig("llama", 64, 16, 32, 1, 2, 1, 8)})()

        def tokenizer(self, text):
            return type("T", (), {"input_ids": text.split()})()

        def format(self, prompt, response):
            return prompt + " " + response

        def judge(self, prompts, responses):
            return [r in harmful_responses for r in responses]

    monkeypatch.setattr(judges, "LlamaGuardJudge", StubJudge)
    report = llama_guard_filter.run(ctx)
    assert report["precision"] == 1.0 and report["recall"] == 1.0 and report["judge"] == "stub_guard"
    scores = [json.loads(line) for line in (workdir / "filters" / "llama_guard" / "scores.jsonl").read_text().splitlines()]
    assert all(s["flagged"] == s["label"] for s in scores)
    assert json.loads((workdir / "filters" / "llama_guard" / "cost.json").read_text())["flops"] > 0
    flagged = finetune.flagged_indices(Workdir(workdir), llama_guard_filter.FILTER)
    assert flagged == {s["index"] for s in scores if s["label"]} and len(flagged) > 0


def test_sa_plus_ft_trains_on_the_alignment_responses_too(all_methods):
    rows = [json.loads(line) for line in (all_methods / "sa_plus_ft" / "metrics.jsonl").read_text().splitlines()]
    assert all("align_ce" in r and "kl" not in r for r in rows)
    assert all(r["loss"] == pytest.approx(r["ce"] + r["align_ce"], rel=1e-5) for r in rows)
    rows = [json.loads(line) for line in (all_methods / "distill_only" / "metrics.jsonl").read_text().splitlines()]
    assert all("kl" in r and "align_ce" not in r for r in rows)
    assert np.isfinite([r["loss"] for r in rows]).all()


def test_saft_validated_on_the_refusal_pool(all_methods, tmp_path):
    """saft.val_source=pool: the layer, k and sign come from data.pool's labelled prompts instead."""
    workdir = tmp_path / "pool"
    shutil.copytree(all_methods, workdir)
    report = saft_filter.run(context(workdir, "--config.saft.val_source=pool"))
    assert report["val_source"] == "pool" and report["num_val"] == 2 * 16  # data.pool.n_each=16 per class
    assert report["num_flagged"] == pytest.approx(0.15 * 80, abs=1)
    with pytest.raises(ConfigError, match="^saft.val_source: 'labels' is not one of user, pool$"):
        context(workdir, "--config.saft.val_source=labels")
