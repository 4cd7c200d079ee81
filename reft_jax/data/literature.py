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


# CoCoNot's safe requests that look harmful: of its categories, the one of safety concerns (the rest are
# incomplete or unsupported requests, not lookalikes).
COCONOT_LOOKALIKES = {"category": "Requests with safety concerns"}


# The literature's data, by role (sections of the `data` config): the hub datasets a user with internet gets,
# and the same roles as local files relative to one folder (`data.local_dir`), for offline machines.
LITERATURE_HUB = {
    # Harmful prompts with safe answers: BeaverTails' safe pairs, the alignment data of Vaccine / Booster / Lisa.
    "alignment": dict(
        harmful=dict(path="PKU-Alignment/BeaverTails", split="30k_train",
                     fields={"instruction": "prompt", "output": "response", "safe": "is_safe"},
                     where={"is_safe": True}),
        harmless=dict(path="tatsu-lab/alpaca", split="train"),
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
                 lookalikes=dict(path="allenai/coconot", name="pref", split="train", where=COCONOT_LOOKALIKES)),
    "eval": dict(harmful=dict(path="walledai/HarmBench", name="standard", split="train"),
                 task_source=dict(path="stanfordnlp/sst2", split="validation",
                                  fields={"input": "sentence", "label": "label"})),
}
LITERATURE_LOCAL = {
    "alignment": dict(harmful="alignment/safety_only_data_Instructions.json",
                      harmless="alignment/alpaca_eval_805.json",
                      harmful_pairs="attack/advbench.csv"),  # AdvBench goals -> affirmative answer openings
    "user": dict(source="tasks/sst2_train.tsv", harmful_source="attack/pure_bad_100.jsonl"),
    # Lookalikes: OR-Bench-Hard-1K's train split (its validation and test splits, and CoCoNot's contrast set, stay
    # held out for evaluation) and CoCoNot's preference prompts with safety concerns.
    "pool": dict(harmful=("refusal/harmful_train.json", "refusal/harmfulqa.json"),
                 harmless="refusal/harmless_train.json",
                 lookalikes=("lookalike/or_bench_hard_train.json",
                             dict(path="lookalike/coconot_pref.jsonl", where=COCONOT_LOOKALIKES))),
    "eval": dict(harmful="refusal/harmful_val.json", task_source="tasks/sst2_dev.tsv"),
}
