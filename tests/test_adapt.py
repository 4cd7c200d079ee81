"""The filter adapted to the user's file (filter.adapt_fpr): which of the file's rows stand for its task and its
attack, the adapted probe against a scikit-learn oracle and its threshold rule, and the filter stage's second pass
(what it writes, what the evaluation's flags read, and that at adapt_fpr = 0 nothing changes)."""

import json

import numpy as np
import pytest
from conftest import TINY
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from reft_jax import load_config
from reft_jax.cli import main
from reft_jax.experiment.context import RunContext
from reft_jax.refusal import adapt, scoring
from reft_jax.refusal.probe import Probe
from reft_jax.runtime.state import FrozenModel
from reft_jax.stages import FILTERS, inputs_of, run_stage
from reft_jax.stages.ref_teacher_filter import ADAPTED, filter_model, teacher_settings


def test_the_file_stands_for_its_task_below_its_median_and_for_the_attack_where_the_first_pass_flags():
    rng = np.random.default_rng(1)
    score = rng.normal(size=101).astype(np.float32)
    tau = float(np.quantile(score, 0.9))
    rows = adapt.file_examples(score, tau)
    task = np.r_[rows["fit"][0], rows["calibration"][0]]
    attack = np.r_[rows["fit"][1], rows["calibration"][1]]
    assert sorted(task) == list(np.flatnonzero(score < np.median(score)))  # all unflagged here
    assert sorted(attack) == list(np.flatnonzero(score > tau))
    assert abs(len(rows["fit"][0]) - len(rows["calibration"][0])) <= 1
    assert not set(rows["fit"][0]) & set(rows["calibration"][0]) and not set(rows["fit"][1]) & set(rows["calibration"][1])
    again = adapt.file_examples(score, tau)
    assert all(np.array_equal(a, b) for p in rows for a, b in zip(rows[p], again[p]))  # the same halves each time
    # A tau below the median: no flagged row stands for the task; and at most max_rows of each side are read.
    low = adapt.file_examples(score, float(np.quantile(score, 0.3)), max_rows=10)
    low_task = np.r_[low["fit"][0], low["calibration"][0]]
    assert len(low_task) == 10 and (score[low_task] <= np.quantile(score, 0.3)).all()
    assert sum(len(low[p][1]) for p in low) == 10


def features(rng, n, shift):
    """[2 layers, n, 8] features whose first coordinate moves with the label."""
    x = rng.normal(size=(2, n, 8)).astype(np.float32)
    x[:, :, 0] += shift
    return x


def test_the_adapted_probe_is_scikit_learns_and_its_threshold_meets_the_recall_under_the_false_positive_cap():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60, bool), np.zeros(120, bool)]
    cy = np.r_[np.ones(40, bool), np.zeros(100, bool)]
    x, cx = features(rng, 180, 1.5 * y), features(rng, 140, 1.5 * cy)
    for recall, max_fpr in ((0.9, 0.5), (0.99, 0.05)):
        probe, info = adapt.fit_adapted({"fit": (x, y), "calibration": (cx, cy)}, recall=recall, max_fpr=max_fpr)
        # The oracle: the same design (each layer's rows unit-normalised, side by side), scaler and solver.
        design = lambda h: (h / np.linalg.norm(h, axis=-1, keepdims=True)).transpose(1, 0, 2).reshape(h.shape[1], -1)  # noqa: E731
        oracle = make_pipeline(StandardScaler(), LogisticRegression(C=info["C"], max_iter=10_000, tol=1e-6))
        oracle.fit(design(x), y)
        np.testing.assert_allclose(probe.scores(cx), oracle.decision_function(design(cx)) - info["threshold"],
                                   atol=2e-3)
        flagged = probe.scores(cx) > 0
        assert flagged[~cy].mean() <= max_fpr
        assert info["calibration_fpr"] == pytest.approx(flagged[~cy].mean())
        assert info["calibration_recall"] == pytest.approx(flagged[cy].mean())
        if flagged[~cy].mean() < max_fpr - 1 / 100:  # the cap does not bind: the recall rule decides
            assert flagged[cy].mean() >= recall
    assert info["calibration_recall"] < 0.99  # the second pair: the cap binds


def test_only_the_flagged_rows_a_probe_of_the_task_flags_too_stand_for_the_attack():
    """fit_to_file's two rounds: the file's flagged rows that read as its task (the first pass's mistakes) are left
    out of the second probe's harmful side, the others join it; the second probe is then the one fitted on exactly
    those rows."""
    rng = np.random.default_rng(2)
    labelled = {part: (features(rng, 80, 2.0 * (np.arange(80) < 40)), np.arange(80) < 40)
                for part in ("fit", "calibration")}
    task = {part: features(rng, 30, -2.0) for part in labelled}
    attack = {part: np.concatenate([features(rng, 10, 2.0), features(rng, 5, -2.0)], axis=1) for part in labelled}
    probe, info = adapt.fit_to_file(labelled, task, attack, recall=0.99, max_fpr=0.05)
    first, _ = adapt.fit_adapted({part: (np.concatenate([x, task[part]], axis=1), np.r_[y, np.zeros(30, bool)])
                                  for part, (x, y) in labelled.items()}, recall=0.99, max_fpr=0.05)
    kept = {part: first.scores(a) > 0 for part, a in attack.items()}
    assert all(not k[10:].any() for k in kept.values()) and all(k[:10].sum() >= 8 for k in kept.values())
    assert info["attack_kept"] == {part: int(k.sum()) for part, k in kept.items()}
    second, want = adapt.fit_adapted({part: (np.concatenate([x, task[part], attack[part][:, kept[part]]], axis=1),
                                             np.r_[y, np.zeros(30, bool), np.ones(kept[part].sum(), bool)])
                                      for part, (x, y) in labelled.items()}, recall=0.99, max_fpr=0.05)
    np.testing.assert_array_equal(probe.w, second.w)
    assert info["C"] == want["C"] and info["first_round"]["C"] == first.C


def test_the_filter_adapted_to_the_file_scores_it_again_with_its_probe_and_the_evaluation_reads_that(tmp_path):
    """The filter stage with filter.adapt_fpr: the first pass as without it (the report's "first_pass"), the
    adapted probe saved and the file's scores its own (recomputed from the features), the held-out flags the
    evaluation takes from it; at adapt_fpr = 0 the field is no input of any stage."""
    args = [*TINY, "--config.data.user.n=120"]
    plain = RunContext.create(load_config("configs/demo.py", args), tmp_path / "run")
    run_stage("teacher", plain)
    first = run_stage("filter", plain)
    assert "filter.adapt_fpr" not in json.dumps(inputs_of(plain, "filter"))
    ctx = RunContext.create(load_config("configs/demo.py", [*args, "--config.filter.adapt_fpr=0.1"]),
                            tmp_path / "run")
    assert inputs_of(ctx, "filter")["filter.adapt_fpr"] == 0.1
    assert inputs_of(ctx, "teacher") == inputs_of(plain, "teacher")  # the teacher is not remade
    report = run_stage("filter", ctx)
    assert report["scorer"] == "adapted (cosine first)" and report["tau"] == 0.0
    assert {k: report["first_pass"][k] for k in ("num_flagged", "auroc")} == {k: first[k] for k in ("num_flagged", "auroc")}
    info = report["adapted"]
    assert info["max_fpr"] == 0.1 and info["calibration_fpr"] <= 0.1
    file_rows = {part: info[f"file_{part}"] for part in ("fit", "calibration")}
    assert sum(side["attack"] for side in file_rows.values()) == first["num_flagged"]
    assert sum(side["task"] for side in file_rows.values()) >= adapt.MIN_TASK_ROWS
    # the labelled prompts: the pool's train split in the fit, its calibration split (none here: the check split)
    splits = ctx.refusal_prompts
    assert info["fit"]["harmful"] == int((splits["train"].ds.harmful == 1).sum()) + info["attack_kept"]["fit"]
    assert info["attack_kept"]["fit"] <= file_rows["fit"]["attack"]
    folder = FILTERS["ref_teacher"].path(ctx.workdir)
    adapted = Probe.load(folder / ADAPTED)
    settings = teacher_settings(ctx.workdir)
    model = FrozenModel.of(filter_model(ctx, settings))

    def probe_scores(ds):
        return adapted.scores(scoring.prompt_features(model, ds, settings["layers"], batch_size=32,
                                                      buckets=list(ctx.cfg.data.buckets), progress=False))

    written = [json.loads(line)["score"] for line in (folder / "scores.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(written, probe_scores(ctx.user), rtol=1e-5, atol=1e-5)
    held = ctx.tokenize(ctx.eval_harmful, "held-out harmful")
    np.testing.assert_array_equal(FILTERS["ref_teacher"].flags(ctx, ctx.eval_harmful, held), probe_scores(held) > 0)
    # the stage of the first run, asked again at adapt_fpr = 0, is remade as it was (the cosine's scores)
    again = run_stage("filter", plain)
    assert again["scorer"] == "cosine" and again["num_flagged"] == first["num_flagged"]
    cosine = scoring.score(model, held, settings["score_by"], settings["layers"], batch_size=32,
                           buckets=list(ctx.cfg.data.buckets), progress=False)
    np.testing.assert_array_equal(FILTERS["ref_teacher"].flags(plain, ctx.eval_harmful, held), cosine > settings["tau"])


def test_a_file_too_small_to_learn_its_task_from_is_one_line(tmp_path, capsys):
    """Before any training: the run's checks, from the file's size (at most its lower half can stand for it)."""
    workdir = str(tmp_path / "run")
    assert main(["run", "--workdir", workdir, *TINY, "--config.data.user.n=24", "--config.filter.adapt_fpr=0.05"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "filter.adapt_fpr: the user data gives 12 rows to learn its task from" in err
    assert not (tmp_path / "run" / "teacher").exists()
    assert main(["run", "--workdir", workdir, *TINY, "--config.filter.adapt_fpr=0.6"]) == 2
    assert "filter.adapt_fpr: 0.6 should be at most 0.5" in capsys.readouterr().err
