"""Tokenization of examples into prompt and response token ids, with truncation counted.

The prompt and the response are tokenized separately (no special tokens) and concatenated, so the
boundary is exact: the last prompt token, where the refusal feature is read, is known without guessing.
A BOS token is put in front when the tokenizer has one (unless the templated prompt already starts with
it, as chat templates do); an EOS token follows every non-empty response and counts as a response token.

Truncation, to fit `max_length` (the largest bucket):
- the response is cut from the right (its EOS goes with it: a cut answer should not teach stopping);
- the prompt is cut only when it would leave the response fewer than `min_response` tokens (default a
  quarter of max_length); it is cut from the LEFT, keeping the BOS and the end of the prompt (the
  template's "### Response:" and the last prompt token).
Every truncated example is counted in the report; none is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from reft_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def load_tokenizer(path: str, *, vocab_size: int | None = None):
    """A Hugging Face tokenizer from a local folder (or a hub name when no such path exists).

    vocab_size: the model's; a tokenizer with more tokens than that cannot be used with the model.
    """
    from transformers import AutoTokenizer  # deferred: transformers is slow to import

    local = os.path.exists(path) or path.startswith((".", "/", "~"))
    if local and not os.path.isdir(os.path.expanduser(path)):
        raise DataError(f"{path}: tokenizer folder not found")
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(path), local_files_only=local)
    except Exception as e:  # transformers raises OSError, ValueError, JSON errors... all mean "unreadable"
        msg = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise DataError(f"{path}: cannot load tokenizer: {msg}") from None
    if vocab_size is not None:
        check_vocab(tok, vocab_size, where=path)
    return tok


def check_vocab(tokenizer, vocab_size: int, *, where: str = "tokenizer") -> None:
    """Every token id the tokenizer can produce must index the model's embedding table."""
    n = len(tokenizer)
    if n > vocab_size:
        raise DataError(f"{where}: tokenizer has {n} tokens but the model's vocab_size is {vocab_size}")


@dataclasses.dataclass(frozen=True)
class TokenizeReport:
    num_examples: int
    num_truncated: int
    num_prompt_truncated: int
    num_response_truncated: int
    max_length: int
    longest: int  # longest example before truncation, in tokens

    def __str__(self) -> str:
        return (
            f"{self.num_examples} examples, {self.num_truncated} truncated to {self.max_length} tokens "
            f"({self.num_prompt_truncated} prompts, {self.num_response_truncated} responses; longest {self.longest})"
        )


@dataclasses.dataclass
class TokenizedDataset:
    """Token ids per example. `index` is the example's position in the list it was tokenized from
    (kept by `select`, so a filtered subset still reports the original positions)."""

    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    harmful: np.ndarray  # int32 [N]: 1 harmful prompt, 0 harmless, -1 unknown
    index: np.ndarray  # int32 [N]
    pad_id: int
    report: TokenizeReport
    # float32 per response token: 1 trained, 0 context (the user turns inside a multi-turn chat's response);
    # None when every response token is trained.
    response_weights: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids)], np.int32)

    def select(self, positions: Sequence[int]) -> TokenizedDataset:
        """The examples at `positions` (e.g. those the filter keeps)."""
        positions = np.asarray(positions, np.int64)
        return dataclasses.replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in positions],
            response_ids=[self.response_ids[i] for i in positions],
            harmful=self.harmful[positions],
            index=self.index[positions],
            response_weights=None if self.response_weights is None else [self.response_weights[i] for i in positions],
        )

    def prompts_only(self) -> TokenizedDataset:
        """The same examples without responses: a prompt's feature reads its last token, and the model is causal."""
        return dataclasses.replace(self, response_ids=[np.zeros((0,), np.int32) for _ in self.response_ids],
                                   response_weights=None)


def tokenize(
    examples: Sequence[dict[str, Any]],
    tokenizer,
    max_length: int,
    *,
    min_response: int | None = None,
    add_bos: bool | None = None,
    vocab_size: int | None = None,
    desc: str = "tokenizing",
    chunk_size: int = 1024,
) -> TokenizedDataset:
    """Tokenizes examples ({"prompt", "response", "harmful", ...}) to at most max_length tokens each.

    min_response: response tokens the prompt must leave room for before it is cut (default
      max_length // 4). add_bos: None puts the tokenizer's BOS first when it has one.
    vocab_size: the model's, checked against the tokenizer.
    """
    from tqdm.auto import tqdm

    if max_length < 4:
        raise ConfigError(f"data.max_length: {max_length} is too short (at least 4 tokens)")
    if not examples:
        raise DataError("data: no examples to tokenize")
    if vocab_size is not None:
        check_vocab(tokenizer, vocab_size, where=getattr(tokenizer, "name_or_path", "tokenizer"))
    min_response = max_length // 4 if min_response is None else min_response
    if not 0 <= min_response <= max_length // 2:  # the prompt keeps at least half the row
        raise ConfigError(f"data.min_response: {min_response} should be in [0, max_length // 2 = {max_length // 2}]")
    bos = None if add_bos is False else tokenizer.bos_token_id
    if add_bos and bos is None:
        raise DataError(f"{tokenizer.name_or_path}: tokenizer has no BOS token")
    eos = tokenizer.eos_token_id
    if eos is None and any(ex["response"] for ex in examples):
        raise DataError(f"{tokenizer.name_or_path}: tokenizer has no EOS token to end responses with")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)

    prompts, responses = [], []
    with tqdm(total=len(examples), desc=desc, disable=None, leave=False) as bar:
        for start in range(0, len(examples), chunk_size):
            chunk = examples[start : start + chunk_size]
            # verbose=False: we truncate ourselves, the "longer than model_max_length" warning is noise
            kw = dict(add_special_tokens=False, verbose=False)
            prompts += tokenizer([ex["prompt"] for ex in chunk], **kw)["input_ids"]
            responses += tokenizer([ex["response"] for ex in chunk], **kw)["input_ids"]
            bar.update(len(chunk))

    spans = any(ex.get("response_spans") for ex in examples)  # a multi-turn chat: per-token response weights
    out_p, out_r, out_w = [], [], []
    n_prompt_cut = n_response_cut = n_cut = longest = 0
    for ex, p, r in zip(examples, prompts, responses):
        if bos is not None and not (p and p[0] == bos):
            p = [bos, *p]
        w = _span_weights(tokenizer, ex["response"], ex["response_spans"], r) if ex.get("response_spans") else None
        if ex["response"]:
            r = [*r, eos]
            w = None if w is None else [*w, 1.0]
        if not p:
            raise DataError(f"{ex.get('source', 'example')}: prompt is empty after tokenization")
        longest = max(longest, len(p) + len(r))
        p, r, p_cut, r_cut = _truncate(p, r, max_length, min_response, keep_first=bos is not None)
        n_prompt_cut += p_cut
        n_response_cut += r_cut
        n_cut += p_cut or r_cut
        out_p.append(np.asarray(p, np.int32))
        out_r.append(np.asarray(r, np.int32))
        if spans:
            out_w.append(np.asarray(np.ones(len(r)) if w is None else w[: len(r)], np.float32))

    harmful = np.array([-1 if ex.get("harmful") is None else int(bool(ex["harmful"])) for ex in examples], np.int32)
    report = TokenizeReport(len(examples), n_cut, n_prompt_cut, n_response_cut, max_length, longest)
    (log.warning if n_cut else log.info)("%s: %s", desc, report)
    weights = out_w if spans else None
    return TokenizedDataset(out_p, out_r, harmful, np.arange(len(examples), dtype=np.int32), int(pad), report,
                            weights)


def _span_weights(tokenizer, text: str, spans, ids: list[int]) -> list[float]:
    """1.0 for each token of `text` (tokenized as `ids`) that overlaps a character span, else 0.0."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if list(enc["input_ids"]) != list(ids):
        raise DataError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: tokenizes a text differently with "
                        "offsets; multi-turn chats need a fast tokenizer")
    return [float(any(a < end and b > start for start, end in spans)) for a, b in enc["offset_mapping"]]


def _truncate(p: list[int], r: list[int], max_length: int, min_response: int, keep_first: bool):
    """Returns (prompt, response, prompt_cut, response_cut); see the module docstring."""
    if len(p) + len(r) <= max_length:
        return p, r, False, False
    r_keep = min(len(r), max(max_length - len(p), min_response))
    p_keep = max_length - r_keep
    p_cut = len(p) > p_keep
    if p_cut:
        p = [p[0], *p[len(p) - p_keep + 1 :]] if keep_first else p[len(p) - p_keep :]
    return p, r[:r_keep], p_cut, r_keep < len(r)
