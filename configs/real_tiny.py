"""A small model from random init trained on real datasets, for experiments on real text without weights.

The data paths are config fields (defaults: the project's ../shared/data); the tokenizer is a byte-level BPE
trained on the configured sources into WORKDIR/tokenizer (data.tokenizer = "train").
  reft-jax run --config configs/real_tiny.py --workdir runs/real_tiny [--config.methods=all]
"""

from pathlib import Path

from reft_jax.config import default_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def get_config():
    c = default_config()
    c.data.tokenizer = "train"
    c.data.tokenizer_vocab_size = 4096
    c.data.buckets = (128, 256)
    c.data.batch_size = 16
    c.data.alignment.harmful = str(DATA / "alignment" / "safety_only_data_Instructions.json")
    c.data.alignment.harmless = str(DATA / "alignment" / "alpaca_eval_805.json")
    c.data.alignment.n_harmful = 512
    c.data.alignment.n_harmless = 512
    c.data.user.task = "sst2"
    c.data.user.source = str(DATA / "tasks" / "sst2_train.tsv")
    c.data.user.harmful_source = str(DATA / "attack" / "pure_bad_100.jsonl")
    c.data.user.n = 1000
    c.data.user.p = 0.1
    c.data.pool.harmful = str(DATA / "refusal" / "harmful_train.json")
    c.data.pool.harmless = str(DATA / "refusal" / "harmless_train.json")
    # Held out from training: HarmBench val prompts (the pool uses the train split) and the SST-2 dev set.
    c.data.eval.harmful = str(DATA / "refusal" / "harmful_val.json")
    c.data.eval.task_source = str(DATA / "tasks" / "sst2_dev.tsv")
    c.data.eval.n_harmful = 39
    c.data.eval.n_task = 200
    c.eval.max_new_tokens = 32
    c.model.init.update(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
                        num_key_value_heads=4, max_position_embeddings=512)
    c.refusal.layer = 3
    # A teacher trained from random init has no reason to centre its cosines at 0 (the paper's tau): set tau
    # for 90% recall on the labelled refusal pool instead.
    c.filter.calibrate_recall = 0.9
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 50
    c.teacher.steps = 1000
    c.student.steps = 1000
    c.checkpoint.every = 200
    return c
