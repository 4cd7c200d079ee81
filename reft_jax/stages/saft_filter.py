"""The SAFT baseline's filter (reft_jax.refusal.saft) on the base model's features, its layer, k and sign chosen on a
labelled validation pool (saft.val_source); WORKDIR/filters/saft/."""

from __future__ import annotations

import jax
import numpy as np

from reft_jax.config.schema import SaftSection
from reft_jax.config.streams import seed_of
from reft_jax.data import TokenizedDataset
from reft_jax.errors import ConfigError, ReftError
from reft_jax.experiment import cost
from reft_jax.experiment.context import RunContext
from reft_jax.models.from_config import base_model
from reft_jax.refusal import saft, scoring
from reft_jax.runtime.state import FrozenModel
from reft_jax.stages.common import Filter, prompt_flops, write_filter

SCORER = "scorer.npz"  # the fitted filter (subspace, sign, threshold): what scores prompts after the stage


def flags(ctx: RunContext, examples: list[dict], ds: TokenizedDataset) -> np.ndarray:
    """The SAFT filter's verdicts on other prompts (prompt-only examples, and tokenized), as it judged the user
    data."""
    cfg = ctx.cfg
    path = FILTER.path(ctx.workdir) / SCORER
    if not path.exists():
        raise ReftError(f"{path}: missing; rerun the SAFT filter stage (`run --force`) to save its fitted scorer")
    scorer = saft.Scorer.load(path)
    features = scoring.prompt_features(FrozenModel.of(base_model(cfg, ctx.vocab)), ds, (scorer.layer,),
                                       batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets),
                                       progress=cfg.logging.progress, desc="saft: over-refusal prompts")[0]
    return scorer.scores(features) > scorer.tau


def saft_layers(cfg: SaftSection, num_layers: int) -> tuple[int, ...]:
    """saft.layers, or by default the blocks at a quarter, half and three quarters of the depth."""
    bad = [x for x in cfg.layers if not 0 < x <= num_layers]
    if bad:
        raise ConfigError(f"saft.layers: {bad[0]} is not a hidden_states index in 1..{num_layers}")
    default = (max(num_layers // 4, 1), max(num_layers // 2, 1), max(3 * num_layers // 4, 1))
    return tuple(dict.fromkeys(cfg.layers or default))


def labelled_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of n // 2 harmful and n - n // 2 harmless examples (fewer if a class has fewer), seeded."""
    rng = np.random.default_rng(seed)
    harmful, harmless = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    k = min(n // 2, len(harmful))
    picks = [rng.choice(harmful, k, replace=False), rng.choice(harmless, min(n - k, len(harmless)), replace=False)]
    return np.sort(np.concatenate(picks))


def run(ctx: RunContext) -> dict:
    cfg, s = ctx.cfg, ctx.cfg.saft
    folder = FILTER.path(ctx.workdir)
    with cost.StageCost(folder, FILTER.stage) as stage:
        model = base_model(cfg, ctx.vocab)
        layers = saft_layers(s, model.cfg.num_layers)
        kw = dict(batch_size=cfg.filter.batch_size, buckets=list(cfg.data.buckets), progress=cfg.logging.progress)
        frozen = FrozenModel.of(model)
        user_ds = ctx.user
        user = scoring.prompt_features(frozen, user_ds, layers, desc="saft: user prompts", **kw)
        if s.val_source == "user":
            pick = labelled_sample(user_ds.harmful, s.n_val, seed_of(cfg.seed, "saft_validation"))
            val, val_labels = user[:, pick], user_ds.harmful[pick]
        else:
            val = scoring.prompt_features(frozen, ctx.pool, layers, desc="saft: validation pool", **kw)
            val_labels = ctx.pool.harmful
        result, choice, scorer = saft.flag_user_data(user, user_ds.index, user_ds.harmful, val, val_labels, layers,
                                                 ks=list(s.ks), weighted=s.weighted, percentile=s.percentile)
        report = write_filter(ctx, result, folder, method="saft", k=choice.k, sign=choice.sign,
                              val_auroc=choice.val_auroc, val_source=s.val_source, num_val=len(val_labels),
                              percentile=s.percentile)
        if jax.process_index() == 0:
            scorer.save(folder / SCORER)
        scored = (user_ds, ctx.pool) if s.val_source == "pool" else (user_ds,)
        stage.flops = sum(prompt_flops(model.cfg, ctx.prompt_batches(ds, cfg.filter.batch_size)) for ds in scored)
    return report


FILTER = Filter("saft", run, flags, inputs=("saft", "data.pool"), reads=("pool",))
