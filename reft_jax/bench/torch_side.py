"""The PyTorch side of the benchmark: what a careful PyTorch user runs for the same steps.

The `transformers` model class of the same config with SDPA attention, bf16 autocast when the compute dtype
is bf16, PEFT for LoRA, fused AdamW where the build has it (foreach otherwise), clip_grad_norm_, and
`torch.compile` of the loss as the second variant. The losses are written out here in float32, as in
reft_jax.train.losses, so both sides compute the same numbers (the benchmark reports each side's first loss).

Runs in a child process of `reft-jax bench` (see harness.py). Memory is the CUDA allocator's peak, or on the
CPU the peak resident memory above the start of the case.
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch
import torch.nn.functional as F

from reft_jax.bench import workload
from reft_jax.config.schema import RunConfig
from reft_jax.errors import ConfigError
from reft_jax.models.config import from_hf_dict, to_hf_dict

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _log(message: str) -> None:
    print(f"[bench torch] {message}", file=sys.stderr, flush=True)


# -- losses (float32 whatever the logits dtype; same conventions as reft_jax.train.losses) -------------------

def _weights(batch) -> torch.Tensor:
    return batch["loss_mask"][:, 1:].float() * batch["example_weight"][:, None]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def cross_entropy(logits, batch) -> torch.Tensor:
    w = _weights(batch)
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["input_ids"][:, 1:].flatten().long(),
                          reduction="none")
    return _weighted_mean(nll.view_as(w), w)


def distillation_kl(student_logits, teacher_logits, batch, temperature: float) -> torch.Tensor:
    log_ps = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return _weighted_mean(kl, _weights(batch)) * temperature**2


def _norm(v, eps: float) -> torch.Tensor:
    return torch.sqrt((v * v).sum(-1) + eps**2)  # as reft_jax.refusal.feature.cosine_scores


def refusal_regularizer(hidden, batch, r, eps: float = 1e-6) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    f = hidden[rows, batch["prompt_end"].long()].float()
    cos = (f * r).sum(-1) / (_norm(f, eps) * _norm(r, eps))
    y = torch.where(batch["harmful"] == 1, 1.0, -1.0)
    return _weighted_mean(torch.square(cos - y), batch["example_weight"])


# -- models and steps ------------------------------------------------------------------------------

def _model(cfg: RunConfig, weights_dir: str | None, device: torch.device, lora: bool) -> torch.nn.Module:
    import transformers

    dtype = _DTYPES[cfg.model.param_dtype]
    if weights_dir:  # the JAX side's random init, for identical numbers
        model = transformers.AutoModelForCausalLM.from_pretrained(weights_dir, dtype=dtype,
                                                                  attn_implementation="sdpa").to(device)
    else:
        hf = to_hf_dict(from_hf_dict(dict(cfg.model.init), where="config model.init"))
        config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
        with device:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    # model.remat=full recomputes whole blocks: PyTorch's gradient checkpointing per decoder block. The selective
    # JAX policies (dots, dots_no_batch) have no transformers equivalent, so PyTorch then keeps everything.
    if cfg.model.remat == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
    if lora:
        import peft

        lc = cfg.model.lora
        model = peft.get_peft_model(model, peft.LoraConfig(r=lc.rank, lora_alpha=lc.alpha,
                                                           target_modules=list(lc.targets), lora_dropout=0.0))
    return model


def _optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.ndim >= 2], weight_decay=o.weight_decay),
              dict(params=[p for p in params if p.ndim < 2], weight_decay=0.0)]
    kwargs = dict(lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def _loss_fn(cfg: RunConfig, case: workload.Case, model, teacher, layer: int, r: torch.Tensor, autocast):
    beta, temperature = cfg.distill.beta, cfg.distill.temperature
    lam = cfg.refusal.lam

    def teacher_loss(user, align):
        with autocast():
            out = model(input_ids=align["input_ids"], attention_mask=align["attention_mask"],
                        output_hidden_states=True)
            return cross_entropy(out.logits, align) + lam * refusal_regularizer(out.hidden_states[layer], align, r)

    def student_loss(user, align):
        with autocast():
            ce = cross_entropy(model(input_ids=user["input_ids"], attention_mask=user["attention_mask"]).logits,
                               user)
            with torch.no_grad():
                teacher_logits = teacher(input_ids=align["input_ids"], attention_mask=align["attention_mask"]).logits
            student_logits = model(input_ids=align["input_ids"], attention_mask=align["attention_mask"]).logits
            return ce + beta * distillation_kl(student_logits, teacher_logits, align, temperature)

    return teacher_loss if case.step == "teacher" else student_loss


class CudaPeak:
    """The CUDA allocator's peak over a block (`bytes`), counted from the block's start."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None

    def __enter__(self):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        return False


def _peak(device: torch.device):
    """A context whose `.bytes` is the case's peak memory, and where that number comes from."""
    if device.type == "cuda":
        return CudaPeak(device), "cuda_allocator"
    return workload.HostPeak(), "host_rss"


def prepare(cfg: RunConfig, case: workload.Case, variant: str, weights_dir, device) -> workload.Prepared:
    """Builds `case` (torch.compile'd for variant "compile") and runs its warm-up calls; its peak memory is
    measured over the build and the warm-up."""
    torch.manual_seed(cfg.seed)
    data = workload.batches(cfg.bench.batch_size, cfg.bench.seq_len, cfg.model.init["vocab_size"], cfg.seed)
    r = workload.refusal_direction(cfg.model.init["hidden_size"], cfg.seed)
    compute = _DTYPES[cfg.model.dtype]
    autocast = ((lambda: torch.autocast(device.type, dtype=compute)) if compute != torch.float32
                else contextlib.nullcontext)
    peak, source = _peak(device)
    with peak:
        model = _model(cfg, weights_dir, device, lora=case.finetune == "lora").train()
        teacher = None
        if case.step == "student":
            teacher = _model(cfg, weights_dir, device, lora=False).eval().requires_grad_(False)
        num_layers = cfg.model.init["num_hidden_layers"]
        layer = num_layers // 2 if cfg.refusal.layer < 0 else cfg.refusal.layer  # refusal.feature_layer's rule
        loss_fn = _loss_fn(cfg, case, model, teacher, layer, torch.as_tensor(r, device=device), autocast)
        if variant == "compile":
            torch._dynamo.reset()
            loss_fn = torch.compile(loss_fn)
        opt = _optimizer(cfg, model)
        params = [p for p in model.parameters() if p.requires_grad]
        batches = {k: {f: torch.as_tensor(v, device=device) for f, v in b.items()} for k, b in data.items()}

        def step():
            loss = loss_fn(batches["user"], batches["align"])
            loss.backward()
            if cfg.optim.clip_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        sync = (lambda _: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda _: None)
        first_s, _, first = workload.time_steps(step, sync, cfg.bench.warmup, 0)
    info = dict(compile_s=first_s if variant == "compile" else None, first_loss=float(first),
                peak_memory_bytes=peak.bytes, memory_source=source)
    return workload.Prepared(step, sync, info)


_CASES: dict = {}  # prepared cases of this process, kept between rounds


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def measure(cfg: RunConfig, case: workload.Case, variant: str, keep: bool, weights_dir: str | None = None) -> dict:
    """One round of `case` in `variant` in this (warm) process: see workload.measure_round."""
    device = _device()
    t0 = time.perf_counter()
    try:
        return workload.measure_round(_CASES, (case, variant), lambda: prepare(cfg, case, variant, weights_dir, device),
                                      cfg.bench.iters, keep)
    except Exception as e:  # an out-of-memory case is a result (what does not fit), not a crash
        _log(f"{case.name} {variant}: failed: {workload.error_text(e)}")
        return dict(error=workload.error_text(e))
    finally:
        _log(f"{case.name} {variant}: {time.perf_counter() - t0:.1f} s")
        if device.type == "cuda" and not keep:
            torch.cuda.empty_cache()


def matmul_flops(device: torch.device, dtype) -> float:
    """Measured matmul throughput of the device in the compute dtype (FLOP/s)."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = (lambda _: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda _: None)
    return 2 * n**3 / workload.matmul_seconds(lambda: a @ b, sync)


def setup(cfg: RunConfig, weights_dir: str | None) -> dict:
    """Checks what the cases need; returns this side's device, versions and measured matmul throughput."""
    del weights_dir  # written by the JAX side
    import transformers

    transformers.logging.disable_progress_bar()  # one "Loading weights" bar per model built
    transformers.logging.set_verbosity_error()
    device = _device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    _log(f"device {device} ({name}), {torch.get_num_threads()} CPU threads")
    if "lora" in cfg.bench.finetune:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ConfigError("bench: LoRA on the PyTorch side needs peft (pip install 'reft-jax[bench]')") from None
    return dict(measured_peak_flops=matmul_flops(device, _DTYPES[cfg.model.dtype]),
                device=dict(platform=device.type, kind=name, count=max(torch.cuda.device_count(), 1)),
                versions=workload.versions("torch", "transformers", "peft"))
