"""The teacher's refusal feature R_l stays put when the refusal pool is unlike the alignment prompts.

Regression test of the real_tiny collapse (configs/real_tiny.py, 1,000 teacher steps: the harmful and harmless
cosines ended on the same side, -0.96 / -0.97). There the alignment prompts and the pool differ in a surface
cue the small teacher picks up (harmful alignment prompts are shorter than harmless ones; in the pool they are
slightly longer), so the direction it learns on the alignment prompts points the other way on the pool: every
recomputation of R_l over the pool flipped it (cos(R_new, R_old) -0.6 to -0.97), the teacher re-learned the
reversed target each time, and once the learning rate decayed it stopped keeping up and collapsed.

The synthetic prompts below have the same structure: a shortcut token that separates the alignment prompts
one way and the pool the other way, and a weaker cue that both share.
"""

import json

import numpy as np
from train_fixtures import PROMPT, VOCAB, T, small_config, tiny_model

from reft_jax import refusal
from reft_jax.experiment import report
from reft_jax.refusal.readout import make_feature_fn
from reft_jax.runtime.state import FrozenModel
from reft_jax.train import runs

ROWS = 8


def prompts(step: int, shortcut_harmful: int, seed: int = 0, cue_share: float = 0.5) -> dict:
    """A batch of ROWS prompts (then a response), harmful on even rows. The last prompt token is a shortcut:
    `shortcut_harmful` (1 or 2) on harmful rows, the other one on harmless rows. On a random `cue_share` of the
    rows a cue both sets share sits at a random earlier position: token 3 on harmful rows, 4 on harmless ones."""
    rng = np.random.default_rng([seed, step])
    ids = rng.integers(5, VOCAB, (ROWS, T)).astype(np.int32)
    harmful = (np.arange(ROWS) % 2 == 0).astype(np.int32)
    position = rng.integers(0, PROMPT - 1, ROWS)
    has_cue = rng.random(ROWS) < cue_share
    ids[np.arange(ROWS)[has_cue], position[has_cue]] = np.where(harmful == 1, 3, 4)[has_cue]
    ids[:, PROMPT - 1] = np.where(harmful == 1, shortcut_harmful, 3 - shortcut_harmful)
    loss_mask = np.zeros((ROWS, T), np.float32)
    loss_mask[:, PROMPT:] = 1.0
    return dict(input_ids=ids, attention_mask=np.ones((ROWS, T), np.int32), loss_mask=loss_mask,
                prompt_end=np.full(ROWS, PROMPT - 1, np.int32), example_weight=np.ones(ROWS, np.float32),
                harmful=harmful, index=np.arange(ROWS, dtype=np.int32) + step * ROWS)


def alignment_at(step: int) -> dict:
    return prompts(step, shortcut_harmful=1)


POOL = [prompts(10_000 + i, shortcut_harmful=2) for i in range(4)]


def mean_cosines(teacher, r, batches, layer: int = 1) -> tuple[float, float]:
    """(mean cosine to r of the harmful prompts, of the harmless ones) under `teacher`."""
    features = make_feature_fn(layer)
    cos = np.concatenate([refusal.cosine_scores(features(FrozenModel.of(teacher), b), r) for b in batches])
    harmful = np.concatenate([b["harmful"] for b in batches])
    return float(cos[harmful == 1].mean()), float(cos[harmful == 0].mean())


def refreshes(workdir) -> list[dict]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "refusal_step" in r]


def config(**overrides):
    return small_config(**{"teacher.steps": 200, "refusal.update_every": 25, "checkpoint.every": 1000,
                           "logging.every": 1000, "logging.tensorboard": False, **overrides})


def test_teacher_keeps_harmful_and_harmless_apart_when_the_pool_differs(tmp_path):
    """With the default config the final teacher separates both prompt sets along its final R_l. Before the fix
    (the regulariser on the alignment prompts only) both classes ended on one side, e.g. -0.996 / -0.966."""
    trained = runs.train_teacher(config(), tiny_model(), tmp_path, alignment_at, POOL)
    teacher, r = trained.model, trained.r
    harmful, harmless = mean_cosines(teacher, r, [alignment_at(i) for i in range(4)])
    assert harmful > 0.3 and harmless < -0.3, (harmful, harmless)
    harmful, harmless = mean_cosines(teacher, r, POOL)
    assert harmful > 0.3 and harmless < -0.3, (harmful, harmless)
    # R_l never flips between two recomputations (the first, from the base model, may still turn a lot).
    logged = refreshes(tmp_path)
    assert [x["refusal_step"] for x in logged] == list(range(0, 201, 25))
    assert min(x["r_cos_prev"] for x in logged[2:]) > 0.5, [round(x["r_cos_prev"], 3) for x in logged[1:]]
    assert logged[-1]["pool_cos_harmful"] > 0 > logged[-1]["pool_cos_harmless"]


def test_regulariser_on_the_alignment_prompts_only_flips_the_refusal_feature(tmp_path):
    """The cause, shown by the refresh log: without the pool in L_reg, the first recomputation of R_l from the
    trained teacher points against the previous one."""
    runs.train_teacher(config(**{"teacher.steps": 50, "refusal.reg_pool": False}), tiny_model(), tmp_path,
                       alignment_at, POOL)
    logged = refreshes(tmp_path)
    assert logged[1]["refusal_step"] == 25 and logged[1]["r_cos_prev"] < -0.3, logged[1]


def test_refreshes_log_pool_and_check_separation_and_plot(tmp_path):
    check = [prompts(20_000 + i, shortcut_harmful=2) for i in range(2)]
    cfg = config(**{"teacher.steps": 8, "refusal.update_every": 3, "logging.every": 5})
    runs.train_teacher(cfg, tiny_model(), tmp_path, alignment_at, POOL, check, base_check_auroc=0.625)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # The refresh before step i + 1 goes with the record of step i + 1, the one after the last step with the last.
    assert [(r["step"], r.get("refusal_step")) for r in records] == [(1, 0), (4, 3), (5, None), (7, 6), (8, 8)]
    assert all("loss" in r for r in records)
    last = records[-1]
    assert {"r_norm", "r_cos_prev", "pool_cos_harmful", "pool_cos_harmless", "pool_auroc", "check_cos_harmful",
            "check_cos_harmless", "check_auroc", "check_auroc_base"} <= set(last)
    assert "r_cos_prev" not in records[0]  # nothing to compare the base model's R_l with
    assert 0.0 <= last["check_auroc"] <= 1.0 and -1.0 <= last["check_cos_harmful"] <= 1.0
    assert all(r["check_auroc_base"] == 0.625 for r in records if "refusal_step" in r)
    assert report.plot_teacher_refusal(tmp_path / "metrics.jsonl", tmp_path / "teacher_refusal.png")
    assert (tmp_path / "teacher_refusal.png").stat().st_size > 0
    assert not report.plot_teacher_refusal(tmp_path / "missing.jsonl", tmp_path / "none.png")
