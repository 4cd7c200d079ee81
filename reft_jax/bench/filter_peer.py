"""The serving benchmark's peer: a PyTorch `transformers` loop computing the filter's score of a bundle
(`reft-jax export --filter --out DIR`) on the same model and batches as `reft_jax.Filter` (docs/experiments/
serve_bench.py measures both).

    peer = TorchFilter("filter/")                 # the bundle's model/ in float32, SDPA attention, eval mode
    scores = peer.score(["How do I bake bread?"])  # float32 [N], equal to reft_jax.Filter.load("filter/").score(...)

Prompts are templated, tokenized and batched by the JAX filter's own code (teacher_filter.PromptBatches: batches of
filter.batch_size rows padded to a bucket's length, padding rows included), so both sides run the same shapes. Like
the JAX pass (Transformer.hidden_states_at), the peer runs only the blocks up to the deepest filter layer and no
vocabulary projection: the same work, not a handicap. torch is imported here only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reft_jax import data as rdata
from reft_jax.refusal.feature import VETO_BAND
from reft_jax.refusal.scoring import scorer_params
from reft_jax.serve import bundle
from reft_jax.serve.teacher_filter import PromptBatches

EPS = 1e-6  # the norm regulariser of reft_jax.refusal.feature's cosine_scores and unit_rows


# -- the scores of reft_jax.refusal.feature.SCORERS, in float32: features f [K layers, B, D] -> [B] ----------------

def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((x * x).sum(-1) + EPS * EPS)  # eps inside the sqrt, as feature._norm


def mean_cosine(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Each row's cosine with its layer's R_l (r [K, D]), averaged over the K layers."""
    return ((f * r[:, None]).sum(-1) / (_norm(f) * _norm(r)[:, None])).mean(0)


def probe(f: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_l w_l . f_l / |f_l| + b (w [K, D])."""
    return (f / _norm(f)[..., None] * w[:, None]).sum((0, 2)) + b


def veto(f: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The cosine, moved just below tau where it is > tau and the probe (its threshold folded into b) scores <= 0."""
    cosine = mean_cosine(f, r)
    vetoed = (probe(f, w, b) <= 0) & (cosine > tau)
    return torch.where(vetoed, tau - VETO_BAND * (1 - cosine), cosine)


SCORERS = {"cosine": mean_cosine, "probe": probe, "veto": veto}


def _up_to(decoder: torch.nn.Module, depth: int) -> torch.nn.Module:
    """The decoder (a transformers base model: embeddings, `layers`, final `norm`) cut after block `depth`, so
    that hidden_states[depth] is the last one it returns. transformers puts the final norm on the last hidden state:
    right for depth = num_layers (the project's last hidden state is after the norm too), not for a cut model, whose
    last state is block `depth`'s output as it is."""
    if depth < len(decoder.layers):
        decoder.layers = decoder.layers[:depth]
        decoder.norm = torch.nn.Identity()
    return decoder


class TorchFilter(PromptBatches):
    """A bundle's filter scored by transformers: the same scorer, layers, tau and batches as TeacherFilter's."""

    def __init__(self, folder: str | Path, device: str | None = None):
        from transformers import AutoModelForCausalLM  # deferred: slow to import

        folder = Path(folder)
        settings, serving = bundle.read_settings(folder)
        self.tau, self.layers = float(settings["tau"]), tuple(settings["layers"])
        self.scorer, self.direction = settings["scorer"], settings["direction"]
        kind, params = scorer_params(settings["score_by"], self.layers)  # as TeacherFilter reads them
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._score = SCORERS[kind]
        self._params = [torch.as_tensor(np.asarray(p, np.float32), device=self.device) for p in params]
        model = AutoModelForCausalLM.from_pretrained(folder / bundle.MODEL, dtype=torch.float32,
                                                     attn_implementation="sdpa")
        # base_model: the decoder without the vocabulary projection, which the score never reads
        self.decoder = _up_to(model.base_model, max(self.layers)).to(self.device).eval()
        super().__init__(rdata.load_tokenizer(str(folder / bundle.MODEL)), serving)

    @torch.inference_mode()
    def score_batch(self, batch: rdata.Batch) -> np.ndarray:
        """The score of every row of one batch (the padding rows' are meaningless): the hidden states at the filter's
        layers (transformers' hidden_states indices, as the project's) at each row's last prompt token."""
        ids = torch.as_tensor(batch["input_ids"], dtype=torch.long, device=self.device)
        mask = torch.as_tensor(batch["attention_mask"], dtype=torch.long, device=self.device)
        end = torch.as_tensor(batch["prompt_end"], dtype=torch.long, device=self.device)
        states = self.decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                              use_cache=False).hidden_states
        rows = torch.arange(ids.shape[0], device=self.device)
        features = torch.stack([states[layer][rows, end] for layer in self.layers]).float()
        return self._score(features, *self._params).cpu().numpy().astype(np.float32)
