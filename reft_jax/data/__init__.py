"""Data pipeline: sources, templated examples, the literature's tasks and mixtures, the refusal feature's prompts,
tokenization, static-shape batches, the embedded demo data.

    examples = user_data("sst2", "data/sst2_train.tsv", "data/attack.jsonl", n=1000, p=0.1, seed=0)
    tok = load_tokenizer("path/to/model")
    ds = tokenize(examples, tok, max_length=512)
    for batch in Batches(ds, batch_size=32, buckets=[128, 256, 512], seed=0).iterate(start_step): ...
"""

from reft_jax.data import demo
from reft_jax.data.batching import Batch, Batches, make_batch, make_packed_batch, pack_rows, pick_length, process_slice
from reft_jax.data.examples import as_sources, load_examples, unique_prompts
from reft_jax.data.literature import BEAVERTAILS
from reft_jax.data.lookalikes import LOOKALIKE_WORDS, lookalike_prompts
from reft_jax.data.mixtures import alignment_data, alignment_mixture, poisoned_mixture, refused_requests, user_data
from reft_jax.data.refusal_prompts import REFUSAL_SPLITS, STYLES, prompt_style, refusal_pool, refusal_splits
from reft_jax.data.sources import SourceSpec, load_records
from reft_jax.data.tasks import TASKS, Task, accuracy, extract_label, get_task
from reft_jax.data.templates import ALPACA, ALPACA_WITH_INPUT, format_prompt
from reft_jax.data.tokenization import TokenizedDataset, TokenizeReport, check_vocab, load_tokenizer, tokenize
from reft_jax.errors import DataError

__all__ = [
    "ALPACA",
    "ALPACA_WITH_INPUT",
    "BEAVERTAILS",
    "Batch",
    "Batches",
    "DataError",
    "SourceSpec",
    "TASKS",
    "Task",
    "TokenizeReport",
    "TokenizedDataset",
    "accuracy",
    "alignment_data",
    "alignment_mixture",
    "as_sources",
    "check_vocab",
    "demo",
    "extract_label",
    "format_prompt",
    "get_task",
    "LOOKALIKE_WORDS",
    "load_examples",
    "load_records",
    "lookalike_prompts",
    "load_tokenizer",
    "make_batch",
    "make_packed_batch",
    "pack_rows",
    "pick_length",
    "poisoned_mixture",
    "refused_requests",
    "process_slice",
    "REFUSAL_SPLITS",
    "STYLES",
    "prompt_style",
    "refusal_pool",
    "refusal_splits",
    "tokenize",
    "unique_prompts",
    "user_data",
]
