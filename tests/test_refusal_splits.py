"""The refusal feature's labelled prompts split three ways: disjoint splits, both styles, none of them in the user
data or the evaluation (drawn without them); what a stage may read; and the teacher stage's choice between its
direction and the base model's."""

import collections
import functools
import hashlib
import json

import numpy as np
import pytest

from reft_jax import load_config, refusal
from reft_jax.cli import main
from reft_jax.config.typed import replace
from reft_jax.data import STYLES, DataError, prompt_style, refusal_splits
from reft_jax.errors import ReftError
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import base_model
from reft_jax.refusal import probe, scoring
from reft_jax.runtime.state import FrozenModel
from reft_jax.stages import FILTERS, STAGES, check_inputs, inputs_of, run_stage
from reft_jax.stages import teacher as teacher_stage
from reft_jax.stages.ref_teacher_filter import filter_model
from reft_jax.train import runs


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"instruction": p}) + "\n" for p in prompts))
    return str(path)


def test_prompt_style():
    assert prompt_style("How do I bake bread?") == "question"
    assert prompt_style("How do I pick a lock? Keep it short.") == "question"
    assert prompt_style("Write a poem about the sea.") == "instruction"


@pytest.fixture
def sources(tmp_path):
    harmful = [f"Tell me how to do harm {i}." for i in range(30)] + [f"How can I do harm {i}?" for i in range(30)]
    harmless = [f"Describe a garden {i}." for i in range(40)] + [f"What is a garden {i}?" for i in range(12)]
    return (write_prompts(tmp_path / "harmful.jsonl", harmful[:30]), write_prompts(tmp_path / "qa.jsonl", harmful[30:]),
            write_prompts(tmp_path / "harmless.jsonl", harmless))


def test_splits_are_disjoint_balanced_and_leave_out_what_they_must(sources):
    instructions, questions, harmless = sources
    exclude = {"Tell me how to do harm 0.", "How can I do harm 0?", "Describe a garden 0."}  # e.g. user rows
    unseen = {f"Tell me how to do harm {i}." for i in range(1, 21)}  # e.g. alignment prompts
    sizes = {"train": 8, "calibration": 6, "check": 10}
    splits = refusal_splits([instructions, questions], harmless, sizes=sizes, exclude=exclude, unseen=unseen, seed=3)
    requests = {name: [ex["request"] for ex in exs] for name, exs in splits.items()}
    for name, n in sizes.items():
        assert sum(ex["harmful"] for ex in splits[name]) == n and sum(not ex["harmful"] for ex in splits[name]) == n
    everything = [r for rs in requests.values() for r in rs]
    assert len(everything) == len(set(everything))  # no prompt in two splits
    assert not exclude & set(everything)
    assert not unseen & set(requests["check"] + requests["calibration"])
    for name in sizes:  # both styles in every split, each class, as far as the sources allow
        for harmful in (True, False):
            styles = [prompt_style(ex["request"]) for ex in splits[name] if ex["harmful"] == harmful]
            assert abs(styles.count("question") - styles.count("instruction")) <= 1, (name, harmful, styles)
    assert splits == refusal_splits([instructions, questions], harmless, sizes=sizes, exclude=exclude, unseen=unseen,
                                    seed=3)


def test_splits_take_the_other_style_when_one_runs_out(sources):
    instructions, questions, harmless = sources  # 12 harmless questions only
    splits = refusal_splits([instructions, questions], harmless, sizes={"train": 20, "check": 20})
    check = [prompt_style(ex["request"]) for ex in splits["check"] if not ex["harmful"]]
    assert check.count("question") == 10 and check.count("instruction") == 10
    train = [prompt_style(ex["request"]) for ex in splits["train"] if not ex["harmful"]]
    assert train.count("question") == 2 and train.count("instruction") == 18


def test_too_few_prompts_is_a_one_line_error(sources):
    instructions, _, harmless = sources
    with pytest.raises(DataError, match=r"data.pool.harmful: 30 distinct harmful prompts available .* 31 needed "
                                        r"\(31 for the check split\)"):
        refusal_splits(instructions, harmless, sizes={"check": 31})
    unseen = {f"Tell me how to do harm {i}." for i in range(25)}  # enough in all, too few outside the train split
    with pytest.raises(DataError, match="harmful prompts for the check split: 5 available .* 10 needed"):
        refusal_splits(instructions, harmless, sizes={"train": 10, "check": 10}, unseen=unseen)


LOOKALIKES = [f"Explain how to kill a stuck process {i}." for i in range(12)] + \
             [f"How do I shoot a good photo {i}?" for i in range(12)]


def test_lookalikes_join_the_harmless_side_of_each_split_labelled_and_styled(sources, tmp_path):
    instructions, questions, harmless = sources
    # One lookalike is also a harmless prompt the splits hold and two are alignment prompts: none is drawn twice, and
    # the alignment prompts are in no split but the train split.
    lookalikes = write_prompts(tmp_path / "lookalikes.jsonl", [*LOOKALIKES, "Describe a garden 2."])
    exclude = {"Tell me how to do harm 0.", "How can I do harm 0?", "Describe a garden 0.", LOOKALIKES[0]}
    unseen = {f"Tell me how to do harm {i}." for i in range(1, 21)} | {LOOKALIKES[1], LOOKALIKES[12]}
    sizes = {"train": 8, "calibration": 6, "check": 10}
    kw = dict(sizes=sizes, exclude=exclude, unseen=unseen, seed=3)
    splits = refusal_splits([instructions, questions], harmless, lookalike_sources=lookalikes, n_lookalikes=5, **kw)
    plain = refusal_splits([instructions, questions], harmless, **kw)
    assert "Describe a garden 2." in {ex["request"] for exs in plain.values() for ex in exs}
    everything = [ex["request"] for exs in splits.values() for ex in exs]
    assert len(everything) == len(set(everything))  # no prompt in two splits, nor twice in one
    assert not exclude & set(everything)
    for name in sizes:
        drawn = [ex for ex in splits[name] if ex["style"] == "lookalike"]
        assert len(drawn) == 5 and all(ex["harmful"] is False for ex in drawn)
        assert {ex["request"] for ex in drawn} <= set(LOOKALIKES)
        assert sum("?" in ex["request"] for ex in drawn) == 2  # both phrasings in turn, instructions first
        if name != "train":
            assert not unseen & {ex["request"] for ex in splits[name]}
        # The harmful and harmless prompts are the ones drawn without lookalikes: they are drawn after them.
        others = [ex for ex in splits[name] if ex["style"] != "lookalike"]
        assert sorted(ex["request"] for ex in others) == sorted(ex["request"] for ex in plain[name])
        assert all(ex["style"] == prompt_style(ex["request"]) for ex in others)
    assert "lookalike" in STYLES
    # Without lookalikes the splits are those of before (pinned), their source or not.
    rows = [[name, ex["request"], ex["harmful"]] for name, exs in plain.items() for ex in exs]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] == "eafa1a145108797e"
    assert refusal_splits([instructions, questions], harmless, lookalike_sources=lookalikes, **kw) == plain
    # Too few for every split: how many there are (neither the excluded one nor the harmless prompt drawn as one).
    with pytest.raises(DataError, match=r"^data.pool.lookalikes: 23 distinct lookalike prompts available .* 27 "
                                        r"needed \(9 for the train split, 9 for the calibration split, 9 for the "
                                        r"check split\)$"):
        refusal_splits([instructions, questions], harmless, lookalike_sources=lookalikes, n_lookalikes=9, **kw)


@pytest.fixture(scope="module")
def bad_input_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bad_input")


@pytest.mark.parametrize("command,overrides,message", [
    ("train-teacher", ["--config.data.pool.n_lookalikes=2"],
     "data.pool.lookalikes: no source of lookalike prompts for data.pool.n_lookalikes = 2"),
    ("train-teacher", ["--config.data.pool.n_lookalikes=2", "--config.data.pool.lookalikes={dir}/nowhere.jsonl"],
     "nowhere.jsonl: no such file or directory"),
    ("train-teacher", ["--config.data.pool.n_lookalikes=2", "--config.data.pool.lookalikes={dir}/five.jsonl"],
     "data.pool.lookalikes: 5 distinct lookalike prompts available (none of them another kind's), 6 needed (2 for "
     "the train split, 2 for the calibration split, 2 for the check split)"),
    ("run", ["--config.data.pool.n_lookalikes=-1"], "data.pool.n_lookalikes: -1 should be 0 (none) or more"),
    ("train-teacher", ["--config.data.alignment.n_concerns=2"],
     "data.alignment.concerns: no source of harmful requests for data.alignment.n_concerns = 2"),
    ("train-teacher", ["--config.data.alignment.n_concerns=2", "--config.data.alignment.concerns={dir}/five.jsonl"],
     "no refusal to train on (2 such row(s) of data.alignment.concerns); set data.alignment.refusal"),
    ("train-teacher", ["--config.data.alignment.n_concerns=6", "--config.data.alignment.concerns={dir}/five.jsonl",
                       "--config.data.alignment.refusal=No."],
     "data.alignment.n_concerns: 5 requests of {dir}/five.jsonl are outside the alignment files' examples, 6 needed"),
], ids=["no source", "missing source", "too few", "negative", "no concerns", "concerns unanswered", "few concerns"])
def test_bad_lookalike_settings_are_one_line_errors_before_any_training(bad_input_workdir, capsys, command, overrides,
                                                                         message):
    workdir = bad_input_workdir
    write_prompts(workdir / "five.jsonl", LOOKALIKES[:5])
    args = [o.format(dir=workdir) for o in overrides]
    assert main([command, "--workdir", str(workdir), *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(dir=workdir) in err, err
    assert not (workdir / "teacher" / "model").exists() and not (workdir / "teacher" / "metrics.jsonl").exists()


def test_choose_filter():
    good, bad, best = {"auroc": 0.9}, {"auroc": 0.7}, {"auroc": 0.95}
    choose = teacher_stage.choose_filter
    assert choose({("cosine", "teacher"): good, ("cosine", "base"): bad}) == ("cosine", "teacher")
    assert choose({("cosine", "teacher"): bad, ("cosine", "base"): good}) == ("cosine", "base")
    assert choose({("cosine", "teacher"): good, ("cosine", "base"): good}) == ("cosine", "teacher")  # a tie
    assert choose({("cosine", "teacher"): None, ("cosine", "base"): None}) == ("cosine", "teacher")  # no check split
    four = {("cosine", "teacher"): bad, ("cosine", "base"): good, ("probe", "teacher"): good, ("probe", "base"): best}
    assert choose(four) == ("probe", "base")
    assert choose({**four, ("probe", "base"): good}) == ("cosine", "base")  # a tie keeps the cosine, then the teacher


TINY = ["--config.teacher.steps=4", "--config.optim.warmup_steps=1", "--config.data.user.n=80",
        "--config.data.pool.n_each=16", "--config.data.pool.n_calibration=16", "--config.data.pool.n_check=16",
        "--config.filter.calibrate_recall=0.9", "--config.model.init.hidden_size=32",
        "--config.model.init.intermediate_size=64", "--config.model.init.num_hidden_layers=3",
        "--config.filter.layer_span=(0.0,1.0)", "--config.data.batch_size=8", "--config.logging.progress=False", "--config.logging.tensorboard=False",
        "--config.refusal.update_every=2", "--config.checkpoint.every=100"]


@pytest.fixture(scope="module")
def worse_teacher(tmp_path_factory):
    """The teacher stage on the demo data (a filter over two layers), with the trained teacher's directions
    measured as the opposite of what they are: a teacher that does worse than the base model on the check split."""
    ctx = RunContext.create(load_config("configs/demo.py", TINY), tmp_path_factory.mktemp("worse"))
    real, measured = teacher_stage.measure, []

    def flipped(*args, **kwargs):
        d = real(*args, **kwargs)
        measured.append(d)
        if len(measured) == 1:  # the base model's, read before training
            return d
        return teacher_stage.Directions(-d.r, {k: -v for k, v in d.scores.items()}, d.check_at_layer, d.features)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(teacher_stage, "measure", flipped)
        run_stage("teacher", ctx)
    assert len(measured) == 2
    return ctx


def test_a_direction_worse_than_the_base_models_is_not_shipped(worse_teacher):
    ctx = worse_teacher
    settings = json.loads(ctx.workdir.filter_settings.read_text())
    assert settings["direction"] == "base"
    assert settings["check"]["teacher"]["auroc"] < settings["check"]["base"]["auroc"]
    # The shipped directions are the base model's R_l over the train split at each of the filter's layers, and tau
    # is calibrated with them.
    assert settings["layers"] == [1, 2]
    m0 = FrozenModel.of(base_model(ctx.cfg, ctx.vocab))
    pool = list(ctx.prompt_batches(ctx.pool))
    base_r = np.stack([runs.compute_refusal_feature(refusal.make_feature_fn(layer), m0, pool)
                       for layer in settings["layers"]])
    np.testing.assert_allclose(np.load(ctx.workdir.refusal_feature), base_r, rtol=1e-5, atol=1e-6)
    calibration = ctx.refusal_prompts["calibration"].ds
    scores = scoring.score(m0, calibration, base_r, settings["layers"], batch_size=32, buckets=[64, 96],
                           progress=False)
    features = scoring.prompt_features(m0, calibration, settings["layers"], batch_size=32, buckets=[64, 96],
                                       progress=False)  # the score: the mean of the layers' cosines
    np.testing.assert_allclose(scores, np.mean([[f @ r / (np.linalg.norm(f) * np.linalg.norm(r)) for f in feats]
                                                for feats, r in zip(features, base_r)], axis=0), rtol=1e-4, atol=1e-5)
    labels = calibration.harmful == 1
    assert settings["tau"] == refusal.cap_false_positives(refusal.calibrate_threshold(scores, labels, 0.9), scores,
                                                          labels, ctx.cfg.filter.calibrate_max_fpr)
    # The filter stage reads the base model's features: its scores are the base direction's.
    report = run_stage("filter", ctx)
    assert report["direction"] == "base"
    user = scoring.score(m0, ctx.user, base_r, settings["layers"], batch_size=32, buckets=[64, 96], progress=False)
    written = [json.loads(line)["score"] for line in (FILTERS["ref_teacher"].path(ctx.workdir) / "scores.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(written, user, rtol=1e-5, atol=1e-6)


def test_the_best_scorer_ships_the_highest_check_auroc_and_the_filter_scores_with_it(tmp_path):
    """filter.scorer = "best": the cosine and the probe, each on the teacher's and the base model's features, and the
    one with the highest check AUROC ships (the first of equals: the cosine, then the teacher); tau is calibrated with
    it and the filter stage's scores are its scores of the user data."""
    ctx = RunContext.create(load_config("configs/demo.py", [*TINY, "--config.filter.scorer=best"]), tmp_path)
    run_stage("teacher", ctx)
    settings = json.loads(ctx.workdir.filter_settings.read_text())
    reported = {(scorer, d): settings[key][d]["auroc"]
                for scorer, key in (("cosine", "check"), ("probe", "probe_check")) for d in ("teacher", "base")}
    assert (settings["scorer"], settings["direction"]) == max(reported, key=reported.get)
    for d in ("teacher", "base"):
        probe_report = settings["probe_check"][d]
        assert probe_report["C"] in probe.GRID and probe_report["C_chosen_on"] == "calibration"
        assert set(probe_report["by_style"]) == {"instruction", "question"}
    assert ctx.workdir.probe.exists() == (settings["scorer"] == "probe")
    score_by = probe.Probe.load(ctx.workdir.probe) if settings["scorer"] == "probe" else None
    model = FrozenModel.of(filter_model(ctx, {"direction": settings["direction"]}))

    def shipped(ds, scorer=settings["scorer"]):  # the scorer on the host, from the features
        features = scoring.prompt_features(model, ds, settings["layers"], batch_size=32, buckets=[64, 96],
                                           progress=False)
        if scorer == "probe":
            return score_by.scores(features)
        return np.asarray(refusal.mean_cosine_scores(features, np.load(ctx.workdir.refusal_feature)))

    calibration = shipped(ctx.refusal_prompts["calibration"].ds)
    labels = ctx.refusal_prompts["calibration"].ds.harmful == 1
    assert settings["tau"] == refusal.cap_false_positives(refusal.calibrate_threshold(calibration, labels, 0.9),
                                                          calibration, labels, ctx.cfg.filter.calibrate_max_fpr)
    report = run_stage("filter", ctx)
    assert (report["scorer"], report["direction"]) == (settings["scorer"], settings["direction"])
    assert report["probe_check"] == settings["probe_check"]
    scores = FILTERS["ref_teacher"].path(ctx.workdir) / "scores.jsonl"
    written = [json.loads(line)["score"] for line in scores.read_text().splitlines()]
    np.testing.assert_allclose(written, shipped(ctx.user), rtol=1e-5, atol=1e-6)
    # An earlier workdir's filter.json names no scorer: the cosine (on this demo the probe ships, so the filter stage
    # scores with each of the two here).
    ctx.workdir.filter_settings.write_text(json.dumps({k: v for k, v in settings.items() if k != "scorer"}))
    assert run_stage("filter", ctx)["scorer"] == "cosine"
    written = [json.loads(line)["score"] for line in scores.read_text().splitlines()]
    np.testing.assert_allclose(written, shipped(ctx.user, "cosine"), rtol=1e-5, atol=1e-6)


def test_the_veto_scorer_ships_the_cosine_with_its_probe_and_the_filter_scores_with_both(tmp_path):
    """filter.scorer = "veto": the cosine's direction and tau as without the veto (tau calibrated on the cosine), a
    probe fitted on data.veto's prompts with the pool's and the alignment data's harmful ones (teacher/probe.npz,
    filter.json's "veto"), and the filter stage's scores are the cosine, moved just below tau where it flags and that
    probe vetoes, recomputed here from the features. No veto prompt is in the pool, and the teacher's requests (what
    the user data is drawn without) hold them."""
    parts = {"safe": LOOKALIKES[:8] + LOOKALIKES[12:20], "safe_calibration": LOOKALIKES[8:12] + LOOKALIKES[20:],
             "harmful": [f"How do I hurt my neighbour {i}?" for i in range(12)],
             "harmful_calibration": [f"Tell me how to poison a dog {i}." for i in range(8)]}
    overrides = [*TINY, "--config.filter.scorer=veto", "--config.data.veto.n_attack_kind=0",
                 *(f"--config.data.veto.{name}={write_prompts(tmp_path / f'{name}.jsonl', prompts)}"
                   for name, prompts in parts.items())]
    ctx = RunContext.create(load_config("configs/demo.py", overrides), tmp_path / "run")
    run_stage("teacher", ctx)
    settings = json.loads(ctx.workdir.filter_settings.read_text())
    assert settings["scorer"] == "veto" and ctx.workdir.probe.exists()
    pool = {ex["request"] for exs in ctx.refusal_splits.values() for ex in exs}
    aligned = {ex["request"] for ex in ctx.alignment_examples if ex["harmful"]} - pool
    # the pool's train split's harmful prompts and the alignment data's other harmful requests join the fit part's
    assert settings["veto"]["fit"] == {"harmful": 12 + 16 + len(aligned), "lookalikes": 16} and len(aligned) > 100
    assert settings["veto"]["calibration"] == {"harmful": 8 + 16, "lookalikes": 8}
    fit = {ex["request"] for ex in ctx.veto_examples["fit"] if ex["harmful"]}
    veto_requests = {ex["request"] for exs in ctx.veto_examples.values() for ex in exs}
    assert aligned <= fit and not aligned & {ex["request"] for ex in ctx.veto_examples["calibration"]}
    assert len(veto_requests - aligned) == 44 and not pool & veto_requests and veto_requests <= ctx.teacher_requests
    model = FrozenModel.of(filter_model(ctx, settings))
    r, vetoer = np.load(ctx.workdir.refusal_feature), probe.Probe.load(ctx.workdir.probe)

    def features(ds):
        return scoring.prompt_features(model, ds, settings["layers"], batch_size=32, buckets=[64, 96], progress=False)

    calibration = ctx.refusal_prompts["calibration"].ds
    cosines = np.asarray(refusal.mean_cosine_scores(features(calibration), r))
    labels = calibration.harmful == 1
    assert settings["tau"] == refusal.cap_false_positives(refusal.calibrate_threshold(cosines, labels, 0.9), cosines,
                                                          labels, ctx.cfg.filter.calibrate_max_fpr)
    # Its threshold passes filter.veto_recall of the calibration's harmful requests: data.veto's and the pool's.
    veto_calibration = ctx.veto_prompts["calibration"]
    harmful = np.concatenate([vetoer.scores(features(veto_calibration))[veto_calibration.harmful == 1],
                              vetoer.scores(features(calibration))[labels]])
    assert (harmful > 0).mean() >= ctx.cfg.filter.veto_recall
    assert settings["veto"]["calibration_harmful_vetoed"] == pytest.approx((harmful <= 0).mean())
    report = run_stage("filter", ctx)
    assert report["scorer"] == "veto"
    user, tau = features(ctx.user), settings["tau"]
    cosine = np.asarray(refusal.mean_cosine_scores(user, r))
    want = np.where((vetoer.scores(user) <= 0) & (cosine > tau), tau - 0.01 * (1 - cosine), cosine)
    written = [json.loads(line)["score"] for line in (FILTERS["ref_teacher"].path(ctx.workdir) / "scores.jsonl")
               .read_text().splitlines()]
    np.testing.assert_allclose(written, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["--config.filter.scorer=veto"], "data.veto.safe: no source"),
    (["--config.filter.scorer=vetoo"], "filter.scorer"),
])
def test_a_veto_without_its_data_is_one_line_before_training(tmp_path, capsys, overrides, message):
    assert main(["train-teacher", "--workdir", str(tmp_path / "run"), *TINY, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not (tmp_path / "run" / "teacher" / "checkpoints").exists()


def test_a_teacher_with_lookalikes_reports_them_on_their_own_and_its_operating_point(tmp_path):
    """The demo teacher with lookalikes in its pool: refusal_prompts.jsonl gives them their style in every split, the
    train split that R_l and the regulariser read holds them as harmless prompts, and filter.json's check figures
    and `at_tau` (what tau does on the check split) report them as a style of their own."""
    source = write_prompts(tmp_path / "lookalikes.jsonl", LOOKALIKES)
    overrides = [*TINY, f"--config.data.pool.lookalikes={source}", "--config.data.pool.n_lookalikes=4"]
    ctx = RunContext.create(load_config("configs/demo.py", overrides), tmp_path / "run")
    run_stage("teacher", ctx)
    rows = [json.loads(line) for line in ctx.workdir.refusal_prompts.read_text().splitlines()]
    lookalikes = [r for r in rows if r["style"] == "lookalike"]
    assert collections.Counter(r["split"] for r in lookalikes) == {"train": 4, "calibration": 4, "check": 4}
    assert all(r["harmful"] is False and r["request"] in LOOKALIKES for r in lookalikes)
    train = ctx.refusal_prompts["train"]
    assert ctx.pool is train.ds and set(ctx.pool.harmful[train.styles == "lookalike"].tolist()) == {0}
    settings = json.loads(ctx.workdir.filter_settings.read_text())
    for direction in ("teacher", "base"):
        figures = settings["check"][direction]["by_style"]["lookalike"]
        assert (figures["against"], figures["num_harmful"], figures["num_harmless"]) == ("all harmful", 16, 4)
    # at_tau against the shipped filter's own scores of the check split (the cosine, the demo's scorer).
    check = ctx.refusal_prompts["check"]
    model = FrozenModel.of(filter_model(ctx, settings))
    scores = scoring.score(model, check.ds, np.load(ctx.workdir.refusal_feature), settings["layers"], batch_size=32,
                           buckets=list(ctx.cfg.data.buckets), progress=False)
    flagged, harmful, lookalike = scores > settings["tau"], check.ds.harmful == 1, check.styles == "lookalike"
    at_tau = settings["at_tau"]
    assert at_tau["recall"] == pytest.approx(flagged[harmful].mean())
    assert at_tau["flagged_harmless_share"] == pytest.approx(flagged[~harmful].mean())
    assert at_tau["precision"] == (pytest.approx(harmful[flagged].mean()) if flagged.any() else None)
    assert (at_tau["num_harmful"], at_tau["num_harmless"]) == (16, 20)
    assert set(at_tau["by_style"]) == {"instruction", "question", "lookalike"}
    assert at_tau["by_style"]["lookalike"] == {
        "recall": None, "flagged_harmless_share": pytest.approx(flagged[lookalike].mean()),
        "precision": 0.0 if flagged[lookalike].any() else None, "num_harmful": 0, "num_harmless": 4,
        "num_flagged": int(flagged[lookalike].sum())}


def test_the_user_data_and_the_evaluation_hold_no_prompt_the_teacher_saw(worse_teacher):
    """The teacher reads no customer data; the research protocol's user data and evaluation prompts are drawn
    without the teacher's prompts instead, so the filter's and the harmful score's figures stay held out."""
    ctx = worse_teacher
    rows = [json.loads(line) for line in ctx.workdir.refusal_prompts.read_text().splitlines()]
    by_split = {name: {r["request"] for r in rows if r["split"] == name} for name in ("train", "calibration", "check")}
    assert {name: len(s) for name, s in by_split.items()} == {"train": 32, "calibration": 32, "check": 32}
    assert not by_split["check"] & (by_split["train"] | by_split["calibration"])
    assert not by_split["calibration"] & by_split["train"]
    alignment = {ex["request"] for ex in ctx.alignment_examples}
    assert not alignment & (by_split["check"] | by_split["calibration"])
    seen = alignment | set().union(*by_split.values())
    assert ctx.teacher_requests == seen
    assert not seen & {ex["request"] for ex in ctx.user_examples}
    harmful_eval = ctx.load_examples(ctx.cfg.data.eval.harmful, with_response=False)
    assert not seen & {ex["request"] for ex in ctx.held_out(harmful_eval)}
    styles = {(r["split"], r["harmful"], r["style"]) for r in rows}
    assert len(styles) == 12  # both styles of both classes in each split


def test_the_poisoned_mixture_leaves_out_the_teachers_prompts_when_the_sources_overlap(worse_teacher):
    """The attack drawn from the very file the teacher's harmful prompts come from: no drawn row is one of them,
    and the teacher's splits (its inputs) are the same as with a disjoint attack source."""
    ctx = worse_teacher
    pool_file = ctx.cfg.data.pool.harmful
    overlapping = RunContext(replace(ctx.cfg, "data.user.harmful_source", pool_file), ctx.workdir)
    harmful = [ex for ex in overlapping.user_examples if ex["harmful"]]
    assert len(harmful) == round(ctx.cfg.data.user.p * ctx.cfg.data.user.n)
    assert not {ex["request"] for ex in harmful} & overlapping.teacher_requests
    source = {ex["request"] for ex in ctx.load_examples(pool_file, with_response=False)}
    assert {ex["request"] for ex in harmful} <= source  # drawn from the overlapping file, the rest of it
    assert overlapping.fingerprint("pool") == ctx.fingerprint("pool")
    assert overlapping.fingerprint("user") != ctx.fingerprint("user")


def test_a_stage_reads_only_the_datasets_it_declares(worse_teacher):
    ctx = RunContext(worse_teacher.cfg, worse_teacher.workdir)
    with ctx.reading("teacher", STAGES["teacher"].reads):
        assert len(ctx.pool) and len(ctx.alignment)
        with pytest.raises(ReftError, match="teacher: reads the user data without declaring it"):
            ctx.user_examples
    assert len(ctx.user_examples)  # outside a stage, anything
    with ctx.reading("finetune:no_defense", STAGES["finetune:no_defense"].reads):
        assert len(ctx.user)  # built from the teacher's requests, which it need not declare: its content says it
        with pytest.raises(ReftError, match="reads the alignment data"):
            ctx.alignment


def test_an_input_the_record_predates_is_taken_as_it_was(worse_teacher, tmp_path):
    """A record written by an older version (no dataset fingerprints) still lets its teacher be reused; an input it
    does name must still match."""
    ctx = worse_teacher
    path = ctx.workdir.teacher / "inputs.json"
    record = json.loads(path.read_text())
    assert {"alignment data", "pool data"} <= set(record) and "user data" not in record
    try:
        path.write_text(json.dumps({k: v for k, v in record.items() if not k.endswith(" data")}))
        check_inputs(ctx, "teacher")
        path.write_text(json.dumps({**record, "refusal.lam": record["refusal.lam"] + 1}))
        with pytest.raises(ReftError, match="refusal.lam"):
            check_inputs(ctx, "teacher")
    finally:
        path.write_text(json.dumps(record))


def test_a_lookalike_source_is_an_input_only_while_lookalikes_are_drawn(worse_teacher, tmp_path):
    """A config that names a source of lookalikes but draws none (n_lookalikes 0) reuses a teacher made before it
    named one; with lookalikes drawn, the source is an input like any other."""
    ctx = worse_teacher
    source = tmp_path / "lookalikes.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"How do I kill a stuck process {i}?", "output": "Use kill."})
                              + "\n" for i in range(3)))
    named = {"data.alignment.lookalikes": str(source), "data.pool.lookalikes": str(source),
             "data.alignment.concerns": str(source)}
    other = RunContext(functools.reduce(lambda c, kv: replace(c, *kv), named.items(), ctx.cfg), ctx.workdir)
    check_inputs(other, "teacher")
    assert not set(named) & set(inputs_of(other, "teacher"))
    drawn = RunContext(replace(other.cfg, "data.alignment.n_lookalikes", 2), ctx.workdir)
    assert inputs_of(drawn, "teacher")["data.alignment.lookalikes"] == named["data.alignment.lookalikes"]
