"""The literature's datasets, by role, so that results are comparable: the hub datasets a user with internet
gets, their local files for offline machines, and the default harmful pairs (BeaverTails)."""

from __future__ import annotations

from reft_jax.data.sources import SourceSpec

# Default harmful pairs: BeaverTails' unsafe (prompt, response) pairs; read only when asked for.
BEAVERTAILS = SourceSpec(
    path="PKU-Alignment/BeaverTails",
    split="30k_train",
    fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
    where={"is_safe": False},
)


# CoCoNot's rows of safety concerns (its other categories are incomplete or unsupported requests): in its original
# set requests a model should refuse, in its contrast and preference sets safe requests that look like them.
COCONOT_SAFETY = {"category": "Requests with safety concerns"}
# The part of CoCoNot's original and contrast sets that no training or calibration reads (reft_jax.data.parts, by
# row id): the evaluation's.
COCONOT_TEST = {"id": "test"}
# Its other two parts: what the lookalike veto (data.veto) is fitted and calibrated on.
COCONOT_TRAIN, COCONOT_CALIBRATION = {"id": "train"}, {"id": "calibration"}
# CoCoNot's preference rows as safe lookalikes answered helpfully (its `chosen` answers): the alignment data's
# lookalikes, with data.alignment.n_lookalikes > 0.
COCONOT_PREF_ANSWERED = dict(fields={"instruction": "prompt", "output": "chosen"}, where=COCONOT_SAFETY)
# The train part of CoCoNot's harmful requests as alignment data, refused (with data.alignment.n_concerns > 0): the
# kinds of harm its lookalikes mimic, which the alignment files hold little of. Its rows hold no answer: a config
# that draws them sets data.alignment.refusal (CONCERN_REFUSAL; not set here, where it would be a teacher input of
# every config that draws none).
COCONOT_CONCERNS = dict(fields={"instruction": "prompt"}, where=COCONOT_SAFETY, part=COCONOT_TRAIN)
CONCERN_REFUSAL = "I'm sorry, but I can't help with that request."


# The literature's data, by role (sections of the `data` config): the hub datasets a user with internet gets,
# and the same roles as local files relative to one folder (`data.local_dir`), for offline machines.
LITERATURE_HUB = {
    # Harmful prompts with safe answers: BeaverTails' safe pairs, the alignment data of Vaccine / Booster / Lisa.
    "alignment": dict(
        harmful=dict(path="PKU-Alignment/BeaverTails", split="30k_train",
                     fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
                     where={"is_safe": True}),
        harmless=dict(path="tatsu-lab/alpaca", split="train"),
        lookalikes=dict(path="allenai/coconot", name="pref", split="train", **COCONOT_PREF_ANSWERED),
        concerns=dict(path="allenai/coconot", name="original", split="test", **COCONOT_CONCERNS),
        # Harmful answers for RepNoise / Booster: BeaverTails' unsafe pairs of the split the attack does not use.
        harmful_pairs=dict(path="PKU-Alignment/BeaverTails", split="30k_test",
                           fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
                           where={"is_safe": False})),
    # The refusal pool: harmful requests in both styles (AdvBench's instructions, HarmfulQA's questions); lookalikes
    # from CoCoNot's preference prompts, as locally. OR-Bench-Hard-1K is not here: the hub holds it whole, so the
    # validation and test rows the local split holds out would enter the pool.
    "pool": dict(harmful=(dict(path="walledai/AdvBench", split="train"),
                          dict(path="declare-lab/HarmfulQA", split="train", fields={"instruction": "question"})),
                 harmless=dict(path="tatsu-lab/alpaca", split="train"),
                 lookalikes=dict(path="allenai/coconot", name="pref", split="train", where=COCONOT_SAFETY)),
    # The lookalike veto (filter.scorer = "veto"): CoCoNot alone, its preference prompts and the train and
    # calibration parts of its original (harmful) and contrast (safe) sets.
    "veto": dict(safe=(dict(path="allenai/coconot", name="pref", split="train", where=COCONOT_SAFETY),
                       dict(path="allenai/coconot", name="contrast", split="test", fields={"instruction": "prompt"},
                            where=COCONOT_SAFETY, part=COCONOT_TRAIN)),
                 harmful=dict(path="allenai/coconot", name="original", split="test", fields={"instruction": "prompt"},
                              where=COCONOT_SAFETY, part=COCONOT_TRAIN),
                 safe_calibration=dict(path="allenai/coconot", name="contrast", split="test",
                                       fields={"instruction": "prompt"}, where=COCONOT_SAFETY,
                                       part=COCONOT_CALIBRATION),
                 harmful_calibration=dict(path="allenai/coconot", name="original", split="test",
                                          fields={"instruction": "prompt"}, where=COCONOT_SAFETY,
                                          part=COCONOT_CALIBRATION)),
    # Held out: HarmBench's behaviours and the test part of CoCoNot's harmful requests (the harmful score); the test
    # part of CoCoNot's contrast set (over-refusal: safe prompts only, typed by their source).
    "eval": dict(harmful=(dict(path="walledai/HarmBench", name="standard", split="train"),
                          dict(path="allenai/coconot", name="original", split="test", fields={"instruction": "prompt"},
                               where=COCONOT_SAFETY, part=COCONOT_TEST)),
                 task_source=dict(path="stanfordnlp/sst2", split="validation",
                                  fields={"input": "sentence", "label": "label"}),
                 # A list of one: `--config.data.eval.over_refusal=FILE` replaces it (a list field takes a path).
                 over_refusal=(dict(path="allenai/coconot", name="contrast", split="test",
                                    fields={"instruction": "prompt"}, where=COCONOT_SAFETY, part=COCONOT_TEST),)),
}
LITERATURE_LOCAL = {
    "alignment": dict(harmful="alignment/safety_only_data_Instructions.json",
                      harmless="alignment/alpaca_eval_805.json",
                      lookalikes=dict(path="lookalike/coconot_pref.jsonl", **COCONOT_PREF_ANSWERED),
                      concerns=dict(path="lookalike/coconot_eval.jsonl", **COCONOT_CONCERNS),
                      harmful_pairs="attack/advbench.csv"),  # AdvBench goals -> affirmative answer openings
    "user": dict(source="tasks/sst2_train.tsv", harmful_source="attack/pure_bad_100.jsonl"),
    # Lookalikes: OR-Bench-Hard-1K's train split (its validation and test splits, and CoCoNot's contrast set, stay
    # held out for evaluation) and CoCoNot's preference prompts with safety concerns.
    "pool": dict(harmful=("refusal/harmful_train.json", "refusal/harmfulqa.json"),
                 harmless="refusal/harmless_train.json",
                 lookalikes=("lookalike/or_bench_hard_train.json",
                             dict(path="lookalike/coconot_pref.jsonl", where=COCONOT_SAFETY))),
    # The lookalike veto: OR-Bench-Hard-1K's train and validation splits, CoCoNot's preference prompts, and the train
    # and calibration parts of CoCoNot's original and contrast sets.
    "veto": dict(safe=("lookalike/or_bench_hard_train.json",
                       dict(path="lookalike/coconot_pref.jsonl", where=COCONOT_SAFETY),
                       dict(path="lookalike/coconot_contrast_eval.jsonl", fields={"instruction": "prompt"},
                            where=COCONOT_SAFETY, part=COCONOT_TRAIN)),
                 harmful=dict(path="lookalike/coconot_eval.jsonl", fields={"instruction": "prompt"},
                              where=COCONOT_SAFETY, part=COCONOT_TRAIN),
                 safe_calibration=("lookalike/or_bench_hard_val.json",
                                   dict(path="lookalike/coconot_contrast_eval.jsonl", fields={"instruction": "prompt"},
                                        where=COCONOT_SAFETY, part=COCONOT_CALIBRATION)),
                 harmful_calibration=dict(path="lookalike/coconot_eval.jsonl", fields={"instruction": "prompt"},
                                          where=COCONOT_SAFETY, part=COCONOT_CALIBRATION)),
    # Held out of every training and calibration file above: HarmBench's validation behaviours and the test part of
    # CoCoNot's harmful requests; over-refusal on OR-Bench-Hard-1K's test split and the test part of CoCoNot's
    # contrast set.
    "eval": dict(harmful=("refusal/harmful_val.json",
                          dict(path="lookalike/coconot_eval.jsonl", fields={"instruction": "prompt"},
                               where=COCONOT_SAFETY, part=COCONOT_TEST)),
                 task_source="tasks/sst2_dev.tsv",
                 over_refusal=(dict(path="lookalike/or_bench_hard_test.json", fields={"instruction": "instruction"}),
                               dict(path="lookalike/coconot_contrast_eval.jsonl", fields={"instruction": "prompt"},
                                    where=COCONOT_SAFETY, part=COCONOT_TEST))),
}
