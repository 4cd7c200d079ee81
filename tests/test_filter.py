"""The filter's bookkeeping: flag rule, report, output files, and the kept dataset the student trains on."""

import json

import numpy as np

from reft_jax.data import Batches
from reft_jax.data.tokenization import TokenizedDataset, TokenizeReport
from reft_jax.refusal.scoring import FilterResult, kept_dataset


def dataset(n=6):
    prompts = [np.arange(1, 4 + i, dtype=np.int32) for i in range(n)]
    responses = [np.array([7, 2], np.int32) for _ in range(n)]
    return TokenizedDataset(prompt_ids=prompts, response_ids=responses, harmful=np.array([1, 0, 1, 0, 0, 0]),
                            index=np.arange(10, 10 + n, dtype=np.int32), pad_id=0,
                            report=TokenizeReport(n, 0, 0, 0, 16, 10))


def test_flags_scores_above_tau_and_reports_against_labels(tmp_path):
    ds = dataset()
    result = FilterResult(index=ds.index, score=np.array([0.9, -0.5, 0.2, 0.3, -0.1, 0.0], np.float32),
                          label=ds.harmful, tau=0.1, layers=(2,))
    np.testing.assert_array_equal(result.flagged, [True, False, True, True, False, False])
    report = result.write(tmp_path)
    assert report["num_flagged"] == 3 and report["num_kept"] == 3
    assert report["precision"] == 2 / 3 and report["recall"] == 1.0
    assert report["flagged_harmless_share"] == 1 / 4
    assert report["auroc"] == 7 / 8  # harmful 0.9, 0.2 vs harmless -0.5, 0.3, -0.1, 0.0: one pair out of order
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert lines[0] == {"index": 10, "score": np.float32(0.9).item(), "flagged": True, "label": True}
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_unlabelled_data_reports_counts_only():
    ds = dataset()
    result = FilterResult(index=ds.index, score=np.zeros(6, np.float32), label=np.full(6, -1), tau=0.0, layers=(1,))
    assert set(result.report()) == {"num_examples", "num_flagged", "num_kept", "flag_rate", "tau", "layers"}
    assert result.report()["flag_rate"] == 0.0  # score 0 is not above tau 0


def test_flagged_examples_never_reach_a_student_batch():
    ds = dataset()
    result = FilterResult(index=ds.index, score=np.array([0.9, -0.5, 0.2, 0.3, -0.1, 0.0], np.float32),
                          label=ds.harmful, tau=0.1, layers=(2,))
    kept = kept_dataset(ds, result)
    assert list(kept.index) == [11, 14, 15]
    batches = Batches(kept, 2, [16], seed=0)
    seen = []
    for step in range(batches.num_steps or 4):
        batch = batches.batch(step)
        seen += [int(i) for i, w in zip(batch["index"], batch["example_weight"]) if w > 0]
        assert set(batch["index"][batch["example_weight"] == 0]) <= {-1}  # only padding rows carry weight 0
        if len(seen) >= 3:
            break
    assert sorted(seen) == [11, 14, 15]  # the kept examples (original indices), packed densely


def test_a_single_layer_filter_of_an_earlier_workdir_reads_as_one_layer(tmp_path):
    from reft_jax.runtime.workdir import Workdir
    from reft_jax.stages.ref_teacher_filter import teacher_settings

    wd = Workdir(tmp_path)
    wd.teacher.mkdir(parents=True)
    np.save(wd.refusal_feature, np.arange(4, dtype=np.float32))  # [D]: R_l at the one layer
    wd.filter_settings.write_text(json.dumps({"layer": 2, "tau": 0.1, "direction": "teacher"}))
    settings = teacher_settings(wd)
    assert settings["layers"] == (2,) and "layer" not in settings and settings["tau"] == 0.1
    np.testing.assert_array_equal(settings["r"], [[0, 1, 2, 3]])
    np.save(wd.refusal_feature, np.ones((3, 4), np.float32))  # today's: R_l per layer
    wd.filter_settings.write_text(json.dumps({"layers": [1, 2, 3], "tau": 0.1, "direction": "base"}))
    settings = teacher_settings(wd)
    assert settings["layers"] == (1, 2, 3) and settings["r"].shape == (3, 4) and settings["direction"] == "base"
