"""The literature's defences (reft_jax.train.defences): each update's loss and gradients against a PyTorch
reference of the same algorithm on a tiny transformers Llama (float32, to 1e-5), and one behavioural property
of each."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from hf_fixtures import make_hf_model, token_batch
from torch.func import functional_call
from train_fixtures import small_config, synthetic_batch, tiny_model

from reft_jax.models import from_pretrained
from reft_jax.models.hf_io import _hf_tensors
from reft_jax.runtime.state import create_train_state
from reft_jax.train import runs
from reft_jax.train.defences import Booster, Lisa, RepNoise, Vaccine
from reft_jax.train.steps import SFTLoss

PROMPT = 4  # the first tokens of each test row are its prompt


def batch(seed: int, rows: int = 3, length: int = 12) -> dict:
    ids, mask = token_batch(seed, rows, length)
    loss_mask = mask.copy()
    loss_mask[:, :PROMPT] = 0
    return dict(input_ids=ids.astype(np.int32), attention_mask=mask.astype(np.int32),
                loss_mask=loss_mask.astype(np.float32), example_weight=np.ones(rows, np.float32))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(the PyTorch model, the same weights as a JAX train state)."""
    folder = tmp_path_factory.mktemp("llama")
    torch_model = make_hf_model("llama", folder)
    state = create_train_state(from_pretrained(folder), optax.sgd(0.0))
    return torch_model, state


def run_update(state, update, *args, step=0):
    """(loss, metrics, grads by Hugging Face tensor name) of a JAX update."""
    def model_of(params):
        return nnx.merge(state.graphdef, params, state.frozen)

    loss, metrics, grads = jax.jit(lambda p, s, *a: update.grads(model_of, p, s, *a))(state.params, step, *args)
    named = dict(_hf_tensors(nnx.merge(state.graphdef, grads, state.frozen), np.float32))
    return float(loss), {k: float(v) for k, v in metrics.items()}, named


def torch_ce(logits, b):
    """The token-weighted response CE of reft_jax.train.losses.cross_entropy, in PyTorch."""
    ids = torch.tensor(b["input_ids"]).long()
    w = torch.tensor(b["loss_mask"][:, 1:] * b["example_weight"][:, None])
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                            reduction="none").reshape(w.shape)
    return (w * nll).sum() / w.sum()


def inputs(b):
    return dict(input_ids=torch.tensor(b["input_ids"]).long(), attention_mask=torch.tensor(b["attention_mask"]).long())


def assert_grads_match(ours: dict, theirs: dict):
    assert set(ours) == set(theirs)
    for name, g in theirs.items():
        np.testing.assert_allclose(ours[name], g, rtol=1e-5, atol=1e-5, err_msg=name)


# -- Vaccine ------------------------------------------------------------------------------------------------

def torch_vaccine(model, b, rho):
    """The authors' two passes: hooks on every attention module take its output's gradient, then add
    rho g / ||g|| to those outputs for the pass whose weight gradients make the step."""
    model.zero_grad()
    outputs = []

    def keep(module, args, out):
        out[0].retain_grad()
        outputs.append(out[0])

    hooks = [layer.self_attn.register_forward_hook(keep) for layer in model.model.layers]
    clean = torch_ce(model(**inputs(b)).logits, b)
    clean.backward()
    clean = clean.item()
    for h in hooks:
        h.remove()
    g = [o.grad.detach() for o in outputs]
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    eps = [rho * x / (norm + 1e-7) for x in g]
    model.zero_grad()
    hooks = [layer.self_attn.register_forward_hook(lambda m, a, out, e=e: (out[0] + e, *out[1:]))
             for layer, e in zip(model.model.layers, eps)]
    loss = torch_ce(model(**inputs(b)).logits, b)
    loss.backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    return clean, loss.item(), grads


@pytest.mark.parametrize("block", [4])  # blockwise CE; the whole-sequence one in the scanned-layers test
def test_vaccine_matches_the_pytorch_reference(models, block):
    torch_model, state = models
    b = batch(0)
    loss, metrics, grads = run_update(state, Vaccine(rho=0.5, block=block), b)
    clean, ref_loss, ref_grads = torch_vaccine(torch_model, b, 0.5)
    assert metrics["ce_clean"] == pytest.approx(clean, rel=1e-5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_grads_match(grads, ref_grads)


def test_vaccines_perturbation_has_norm_rho_and_raises_the_loss(models):
    _, state = models
    b = batch(1)
    vaccine = Vaccine(rho=0.3, block=0)

    def model_of(params):
        return nnx.merge(state.graphdef, params, state.frozen)

    eps, clean = vaccine.perturbation(model_of, state.params, b)
    assert eps.shape == (3, 3, 12, 32)
    assert float(jnp.sqrt(jnp.sum(eps ** 2))) == pytest.approx(0.3, rel=1e-5)
    loss, metrics, _ = run_update(state, vaccine, b)
    assert metrics["ce_clean"] == pytest.approx(float(clean), rel=1e-6)
    assert loss > metrics["ce_clean"]  # the perturbation is the loss's steepest ascent


# -- Booster ------------------------------------------------------------------------------------------------

def torch_booster(model, align, harmful, lam, alpha):
    """Three gradients, assembled as the authors' trainer does: g_f + lam (g_h(w) - g_h(w'))."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}

    def ce(p, b):
        return torch_ce(functional_call(model, p, kwargs=inputs(b)).logits, b)

    h = ce(params, harmful)
    g_h = dict(zip(params, torch.autograd.grad(h, list(params.values()))))
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_h.values()))
    stepped = {n: (p - alpha * g_h[n] / (norm + 1e-7)).detach().requires_grad_(True) for n, p in params.items()}
    h_after = ce(stepped, harmful)
    g_after = dict(zip(stepped, torch.autograd.grad(h_after, list(stepped.values()))))
    f = ce(params, align)
    g_f = dict(zip(params, torch.autograd.grad(f, list(params.values()))))
    grads = {n: (g_f[n] + lam * (g_h[n] - g_after[n])).numpy() for n in params}
    return (f + lam * (h - h_after)).item(), grads


def test_booster_matches_the_pytorch_reference(models):
    torch_model, state = models
    align, harmful = batch(2), batch(3)
    loss, metrics, grads = run_update(state, Booster(lam=5.0, alpha=0.1, block=0), align, harmful)
    ref_loss, ref_grads = torch_booster(torch_model, align, harmful, 5.0, 0.1)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert metrics["harmful_ce_after"] < metrics["harmful_ce"]  # one harmful step lowers the harmful loss
    assert_grads_match(grads, ref_grads)


def test_boosters_term_vanishes_with_the_harmful_gradient(models):
    """No harmful signal (every harmful row weighted 0): Booster's update is plain SFT on the alignment batch."""
    _, state = models
    align, harmful = batch(2), batch(3)
    harmful["example_weight"][:] = 0.0
    loss, metrics, grads = run_update(state, Booster(lam=5.0, alpha=0.1, block=0), align, harmful)
    sft_loss, _, sft_grads = run_update(state, SFTLoss(block=0), align)  # CE alone
    assert metrics["harmful_grad_norm"] == 0.0 and metrics["harmful_ce"] == metrics["harmful_ce_after"] == 0.0
    assert loss == pytest.approx(sft_loss, rel=1e-6)
    for name, g in sft_grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-6, atol=1e-7, err_msg=name)


# -- RepNoise -----------------------------------------------------------------------------------------------

def torch_mmd(x, y, scales=(0.25, 0.5, 1.0, 2.0, 4.0)):
    z = torch.cat([x, y])
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    n = z.shape[0]
    base = d2.sum().detach() / (n * n - n)
    k = sum(torch.exp(-d2 / (s * base)) for s in scales)
    nx = x.shape[0]
    return k[:nx, :nx].mean() + k[nx:, nx:].mean() - 2 * k[:nx, nx:].mean()


def torch_repnoise(model, align, harmful, noise, alpha, beta):
    model.zero_grad()
    mlps = []
    hooks = [layer.mlp.register_forward_hook(lambda m, a, out: mlps.append(out)) for layer in model.model.layers]
    out = model(**inputs(harmful), output_hidden_states=True)
    for h in hooks:
        h.remove()
    # The logit lens at every depth; the last hidden state is already normed (it gives the model's logits).
    lens = [model.lm_head(model.model.norm(h)) for h in out.hidden_states[:-1]] + [out.logits]
    ascent = torch.stack([torch_ce(logits, harmful) for logits in lens]).mean()
    mask = torch.tensor(harmful["loss_mask"] * (harmful["example_weight"][:, None] > 0))[..., None]
    rows = mask.shape[0]
    mmd = torch.stack([torch_mmd((a * mask).reshape(rows, -1), (torch.tensor(n) * mask).reshape(rows, -1))
                       for a, n in zip(mlps, noise)]).mean()
    ce = torch_ce(model(**inputs(align)).logits, align)
    loss = ce - alpha * torch.log1p(ascent) + beta * mmd
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad()
    return float(loss), float(mmd), grads


@pytest.mark.parametrize("block", [0, 4])
def test_repnoise_matches_the_pytorch_reference(models, block):
    torch_model, state = models
    align, harmful = batch(4), batch(5)
    repnoise = RepNoise(alpha=1.0, beta=1.0, block=block, seed=3)
    loss, metrics, grads = run_update(state, repnoise, align, harmful, step=7)
    noise = np.asarray(repnoise.noise(7, (3, 3, 12, 32)))
    ref_loss, ref_mmd, ref_grads = torch_repnoise(torch_model, align, harmful, noise, 1.0, 1.0)
    assert metrics["mmd"] == pytest.approx(ref_mmd, rel=1e-5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_grads_match(grads, ref_grads)


def test_repnoise_mmd_falls_as_training_runs(tmp_path):
    """The MLP outputs start near 0, a flat spot of the MMD to noise; a few large steps get them off it."""
    cfg = small_config(**{"optim.learning_rate": 3e-2, "optim.schedule": "constant", "optim.warmup_steps": 0,
                          "optim.clip_norm": 0.0})
    repnoise = RepNoise(alpha=0.0, beta=1.0, block=0, seed=0)
    runs.train(cfg, tiny_model(), tmp_path,
               runs.alignment_defence(repnoise, synthetic_batch, lambda i: synthetic_batch(i, seed=1), steps=12))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mmd = [r["mmd"] for r in records]
    assert len(mmd) == 12 and np.mean(mmd[-3:]) < 0.8 * mmd[0], mmd
    assert records[-1]["step_s"] > 0  # the run's typical step time, for the stage's cost


# -- Lisa ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0, 5])  # before and after the proximal term's warmup (prox_from = 3)
def test_lisa_matches_the_pytorch_reference(models, step):
    torch_model, state = models
    b = batch(6)
    anchor = jax.tree.map(lambda p: p + 0.01 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), state.params)
    lisa = Lisa(rho=0.7, prox_from=3, align_steps=1, user_steps=1, block=0)
    loss, metrics, grads = run_update(state, lisa, anchor, b, step=step)
    named_anchor = {n: torch.tensor(a) for n, a in _hf_tensors(nnx.merge(state.graphdef, anchor, state.frozen),
                                                              np.float32)}
    torch_model.zero_grad()
    prox = 0.5 * sum(((p - named_anchor[n]) ** 2).sum() for n, p in torch_model.named_parameters())
    ref = torch_ce(torch_model(**inputs(b)).logits, b) + (0.7 if step >= 3 else 0.0) * prox
    ref.backward()
    ref_grads = {n: p.grad.detach().numpy().copy() for n, p in torch_model.named_parameters()}
    torch_model.zero_grad()
    assert metrics["proximal"] == pytest.approx(float(prox), rel=1e-5)
    assert loss == pytest.approx(float(ref), rel=1e-5)
    assert_grads_match(grads, ref_grads)


def test_lisa_alternates_and_its_proximal_term_is_zero_at_each_switch(tmp_path):
    lisa = Lisa(rho=1.0, prox_from=0, align_steps=2, user_steps=3, block=0)
    assert [lisa.aligning(i) for i in range(10)] == [True, True, False, False, False] * 2
    cfg = small_config(**{"defences.lisa.align_steps": 2, "defences.lisa.user_steps": 3, "defences.lisa.rho": 1.0,
                          "optim.schedule": "constant", "optim.warmup_steps": 0})
    align = lambda i: synthetic_batch(i, seed=1)  # noqa: E731
    runs.train(cfg, tiny_model(), tmp_path, runs.lisa(cfg, synthetic_batch, align, steps=10))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["alignment_step"] for r in records] == [1.0, 1.0, 0.0, 0.0, 0.0] * 2
    switches = {0, 2, 5, 7}  # the steps (0-based) that begin a phase: the anchor is the weights there
    for i, r in enumerate(records):
        assert (r["proximal"] == 0.0) == (i in switches), (i, r["proximal"])


def test_lisa_needs_user_steps_within_the_budget(tmp_path):
    cfg = small_config(**{"defences.lisa.align_steps": 10})
    with pytest.raises(Exception, match="defences.lisa.align_steps: 10 alignment steps leave none"):
        runs.lisa(cfg, synthetic_batch, synthetic_batch, steps=10)


def test_vaccine_and_repnoise_read_the_same_layers_when_they_are_scanned(models, tmp_path):
    """The attention offsets and MLP outputs thread through lax.scan (model.scan_layers) as through the loop."""
    torch_model, state = models
    torch_model.save_pretrained(tmp_path)
    scanned = create_train_state(from_pretrained(tmp_path, scan_layers=True), optax.sgd(0.0))
    align, harmful = batch(8), batch(9)
    for update, args in ((Vaccine(rho=0.5, block=0), (align,)),
                         (RepNoise(alpha=1.0, beta=1.0, block=0, seed=0), (align, harmful))):
        loss, metrics, grads = run_update(state, update, *args)
        scan_loss, scan_metrics, scan_grads = run_update(scanned, update, *args)
        assert scan_loss == pytest.approx(loss, rel=1e-5) and scan_metrics.keys() == metrics.keys()
        for name, g in grads.items():
            np.testing.assert_allclose(scan_grads[name], g, rtol=1e-5, atol=1e-6, err_msg=name)
