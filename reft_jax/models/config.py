"""Model configuration, read from and written back to a Hugging Face `config.json`.

One `ModelConfig` describes every supported family (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3) by the
handful of switches in which they differ. `from_hf_dict` maps a `config.json`, and refuses any attribute that
would change the maths in a way this code does not implement: a silently ignored attribute gives a model that
loads fine and computes something else.

Which keys a `config.json` may carry is decided from transformers' own config classes (the family's class, e.g.
`LlamaConfig`, and the generic base `PreTrainedConfig`), so that we accept what transformers would compute the
same way and refuse the rest. Key by key, in this order:

- keys this module reads (`_HANDLED_KEYS`) are mapped onto `ModelConfig`, and their values checked against what
  we implement (attention_dropout, pretraining_tp, partial_rotary_factor, rope type, activation, ...);
- `quantization_config` is refused: transformers' loading code reads it and it changes the weights;
- keys starting with `_` (private bookkeeping such as `_name_or_path`) are accepted;
- keys of the generic base class (labels, output switches, dtype, ...) are accepted: they apply to every model;
- keys the family class defines beyond the base (model-specific attributes) that we do not read are accepted
  only if they cannot change the maths: their value equals the family class's default, or they are in the
  small `_INERT_MODEL_KEYS` set (context length, initialisation, KV cache); any other value is refused;
- keys neither class defines (`unk_token_id`, `rope_interleaved`, tool metadata, ...) are accepted: transformers
  keeps them as plain attributes that its modeling code never reads.

The class-derived key sets are computed once per family (`_class_keys`, cached), on first need.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from reft_jax.errors import ConfigError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")  # Gemma 3: its text model
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu": "gelu"}
ROPE_TYPES = ("default", "linear", "llama3")

# Each family's config class in transformers: the source of its model-specific keys and their defaults.
_FAMILY_CLASSES = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                   "qwen3": "Qwen3Config", "gemma": "GemmaConfig", "gemma2": "Gemma2Config",
                   "gemma3_text": "Gemma3TextConfig"}
# Attributes this module reads (maps onto ModelConfig, or checks against the values it implements).
_HANDLED_KEYS = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "hidden_act", "hidden_activation", "attention_bias", "mlp_bias", "tie_word_embeddings",
    "sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "attn_logit_softcapping",
    "final_logit_softcapping", "query_pre_attn_scalar", "attention_dropout", "pretraining_tp",
    "use_bidirectional_attention", "partial_rotary_factor", "num_labels", "id2label", "label2id",
    "pad_token_id", "bos_token_id", "eos_token_id", "rope_local_base_freq", "sliding_window_pattern",
}
# Model-specific attributes we do not read that never change the forward pass, whatever their value.
_INERT_MODEL_KEYS = {
    "max_position_embeddings",  # a length limit; our RoPE types ignore it (llama3 falls back to it, see _rope_fields)
    "initializer_range",  # the random initialisation of new weights only
    "use_cache",  # generation-time KV cache
    "cache_implementation",  # generation-time KV cache kind (published Gemma 2 configs carry "hybrid")
}
# Read by transformers' loading code and changes the weights.
_REFUSED_KEYS = {"quantization_config": "quantized checkpoints are not supported"}
_NO_DEFAULT = object()  # a declared attribute without a default: any value is checked

_CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only transformer (what a `config.json` says, normalised)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    activation: str = "silu"  # "silu" (SwiGLU), "gelu_tanh" / "gelu" (GeGLU)
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default", "linear" or "llama3"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    rope_local_theta: float | None = None  # Gemma 3: the sliding-window layers' RoPE base (unscaled); None: rope_theta
    qkv_bias: bool = False  # Qwen2, or Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    norm_plus_one: bool = False  # Gemma: RMSNorm scales by (1 + w)
    embed_scale: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    sandwich_norms: bool = False  # Gemma 2 and 3: norms after attention and after the MLP too
    attn_softcap: float | None = None  # Gemma 2
    final_softcap: float | None = None  # Gemma 2 (Gemma 3 may set it)
    query_scale: float | None = None  # None means head_dim ** -0.5
    layer_windows: tuple[int, ...] = ()  # per layer: 0 = full attention, w = sliding window of w keys
    tie_word_embeddings: bool = False
    num_labels: int = 0  # > 0: sequence-classification head with this many labels
    pad_token_id: int | None = None
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self):
        if not self.layer_windows:
            object.__setattr__(self, "layer_windows", (0,) * self.num_layers)
        if len(self.layer_windows) != self.num_layers:
            raise ConfigError(f"layer_windows has {len(self.layer_windows)} entries for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads={self.num_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_kv_heads}")

    @property
    def scale(self) -> float:
        return self.query_scale if self.query_scale is not None else self.head_dim ** -0.5

    @property
    def is_classifier(self) -> bool:
        return self.num_labels > 0


def _layer_types_to_windows(types: list[str], window: int | None, where: str) -> tuple[int, ...]:
    windows = []
    for i, kind in enumerate(types):
        if kind == "full_attention":
            windows.append(0)
        elif kind == "sliding_attention":
            if not window:
                raise ConfigError(f"{where}: layer_types[{i}] is 'sliding_attention' but sliding_window is not set")
            windows.append(int(window))
        else:
            raise ConfigError(f"{where}: layer_types[{i}] = {kind!r} is not supported "
                              "(expected 'full_attention' or 'sliding_attention')")
    return tuple(windows)


def _default_windows(family: str, hf: dict, num_layers: int, where: str) -> tuple[int, ...]:
    """Per-layer windows when config.json has no `layer_types` (configs written before transformers v4.53)."""
    window = hf.get("sliding_window")
    if family == "gemma3_text":  # every sliding_window_pattern-th layer global, as Gemma3TextConfig fills layer_types
        pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]
        return _layer_types_to_windows(types, window, where)
    if family == "mistral":
        return (int(window),) * num_layers if window else (0,) * num_layers
    if family == "gemma2":
        return tuple(int(window) if i % 2 == 0 else 0 for i in range(num_layers))
    if family in ("qwen2", "qwen3"):
        if not (hf.get("use_sliding_window") and window):
            return (0,) * num_layers
        first = hf.get("max_window_layers", num_layers)
        return tuple(int(window) if i >= first else 0 for i in range(num_layers))
    if window:
        raise ConfigError(f"sliding_window={window} is not supported for model_type {family!r}")
    return (0,) * num_layers


def _rope_fields(hf: dict, where: str) -> dict[str, Any]:
    """RoPE settings from either the v5 `rope_parameters` or the older `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if scaling and not params.get("rope_type"):
        params.update(scaling)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{where}: rope type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ConfigError(f"{where}: partial_rotary_factor={partial} is not supported")
    fields: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        fields["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        fields["rope_low_freq_factor"] = float(params["low_freq_factor"])
        fields["rope_high_freq_factor"] = float(params["high_freq_factor"])
        fields["rope_original_max_position"] = int(params.get("original_max_position_embeddings",
                                                              hf.get("max_position_embeddings", 8192)))
    return fields


def _gemma3_rope_fields(hf: dict, where: str) -> dict[str, Any]:
    """Gemma 3's two RoPEs: the global layers' (rope_theta, 1e6 by default, with any rope_scaling) and the
    sliding-window layers' (rope_local_base_freq, 1e4 by default); transformers 5 keeps one set per layer type in
    rope_parameters."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        fields = _rope_fields({"rope_parameters": {"rope_theta": 1e6, **(params.get("full_attention") or {})}}, where)
        local = params.get("sliding_attention") or {}
    else:
        fields = _rope_fields({**hf, "rope_theta": hf.get("rope_theta", 1e6)}, where)
        local = {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    if local.get("rope_type", "default") != "default":
        raise ConfigError(f"{where}: rope type {local['rope_type']!r} of the sliding-window layers is not supported "
                          "(supported: default)")
    return {**fields, "rope_local_theta": float(local.get("rope_theta", 10000.0))}


def _declared_defaults(cls) -> dict[str, Any]:
    """The attributes a transformers config class declares, with their defaults: its dataclass fields
    (transformers 5.x), its explicit __init__ parameters (4.x) and its attribute_map aliases (no default)."""
    declared: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            declared[name] = _NO_DEFAULT if param.default is param.empty else param.default
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                declared[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                declared[f.name] = f.default_factory()
            else:
                declared.setdefault(f.name, _NO_DEFAULT)
    for alias in getattr(cls, "attribute_map", None) or {}:
        declared.setdefault(alias, _NO_DEFAULT)
    return declared


@functools.lru_cache(maxsize=None)
def _class_keys(family: str) -> tuple[str, frozenset[str], dict[str, Any]]:
    """(family class name, keys of the generic base config class, {model-specific key: family default})."""
    import transformers  # deferred: slow to import, and only needed for keys outside _HANDLED_KEYS

    base_cls = getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig  # 5.x, 4.x
    base_keys = frozenset(_declared_defaults(base_cls)) | frozenset(base_cls().to_dict())
    name = _FAMILY_CLASSES[family]
    specific = {k: v for k, v in _declared_defaults(getattr(transformers, name)).items() if k not in base_keys}
    return name, base_keys, specific


def _is_default(value: Any, default: Any) -> bool:
    if default is _NO_DEFAULT:
        return False
    if isinstance(default, tuple):
        default = list(default)  # JSON has lists only
    try:
        return bool(value == default)
    except Exception:  # an exotic default whose == raises
        return False


def _check_keys(hf: dict, family: str, where: str) -> None:
    """Refuses the attributes whose values could change the maths in a way we do not implement (module doc)."""
    for key, reason in _REFUSED_KEYS.items():
        if key in hf:
            raise ConfigError(f"{where}: unsupported attribute {key!r} = {hf[key]!r} ({reason})")
    unread = [k for k in sorted(hf, key=str) if k not in _HANDLED_KEYS and k not in _INERT_MODEL_KEYS
              and not str(k).startswith("_")]
    if not unread:
        return  # spares the transformers import for hand-written configs
    class_name, base_keys, specific = _class_keys(family)
    bad = [k for k in unread if k not in base_keys and k in specific and not _is_default(hf[k], specific[k])]
    if bad:
        key, default = bad[0], specific[bad[0]]
        known = "has no default" if default is _NO_DEFAULT else f"defaults to {default!r}"
        raise ConfigError(f"{where}: unsupported attribute {key!r} = {hf[key]!r} (transformers' {class_name} "
                          f"{known}; other values may change the model's maths; {len(bad)} unsupported "
                          f"attribute(s) in all: {', '.join(map(str, bad))})")


def from_hf_dict(hf: dict, where: str = "config.json") -> ModelConfig:
    """Maps a Hugging Face `config.json` dict to a ModelConfig; `where` names the file in errors."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise ConfigError(f"{where}: model_type {family!r} is not supported (supported: {', '.join(FAMILIES)})")
    _check_keys(hf, family, where)
    # Attributes we read but whose non-default values we do not implement.
    for key, ok in (("attention_dropout", lambda v: not v), ("pretraining_tp", lambda v: v in (None, 1)),
                    ("use_bidirectional_attention", lambda v: not v)):
        if key in hf and not ok(hf[key]):
            raise ConfigError(f"{where}: {key}={hf[key]!r} is not supported")
    if family == "gemma3_text" and hf.get("attn_logit_softcapping") is not None:  # Gemma 2's, not Gemma 3's
        raise ConfigError(f"{where}: attn_logit_softcapping={hf['attn_logit_softcapping']!r} is not supported for "
                          "gemma3_text (Gemma 3 has none, and transformers' Gemma 3 attention does not apply it)")

    act_name = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
    gemma = family in ("gemma", "gemma2", "gemma3_text")
    if gemma and act_name == "gelu":
        act_name = "gelu_pytorch_tanh"  # what transformers does: Gemma's legacy "gelu" means the tanh approximation
    if act_name not in ACTIVATIONS:
        raise ConfigError(f"{where}: activation {act_name!r} is not supported (supported: {', '.join(ACTIVATIONS)})")

    try:
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        num_layers = int(hf["num_hidden_layers"])
        vocab = int(hf["vocab_size"])
        inter = int(hf["intermediate_size"])
    except KeyError as e:
        raise ConfigError(f"{where}: missing required attribute {e.args[0]!r}") from None
    head_dim = int(hf.get("head_dim") or hidden // num_heads)

    if hf.get("layer_types"):
        window = hf.get("sliding_window")
        if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
            window = None
        windows = _layer_types_to_windows(list(hf["layer_types"]), window, where)
        if len(windows) != num_layers:
            raise ConfigError(f"{where}: layer_types has {len(windows)} entries for {num_layers} layers")
    else:
        windows = _default_windows(family, hf, num_layers, where)

    architectures = hf.get("architectures") or []
    is_classifier = any(a.endswith(_CLASSIFIER_SUFFIX) for a in architectures)
    num_labels = 0
    if is_classifier:
        num_labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
    attention_bias = bool(hf.get("attention_bias", False))
    query_pre_attn_scalar = hf.get("query_pre_attn_scalar", 256 if family == "gemma3_text" else None)
    rope = _gemma3_rope_fields(hf, where) if family == "gemma3_text" else _rope_fields(hf, where)
    return ModelConfig(
        model_type=family,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation=ACTIVATIONS[act_name],
        **rope,
        qkv_bias=family == "qwen2" or attention_bias,
        o_bias=family != "qwen2" and attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family in ("qwen3", "gemma3_text"),
        norm_plus_one=gemma,
        embed_scale=gemma,
        sandwich_norms=family in ("gemma2", "gemma3_text"),
        attn_softcap=hf.get("attn_logit_softcapping") if family == "gemma2" else None,
        final_softcap=hf.get("final_logit_softcapping") if family in ("gemma2", "gemma3_text") else None,
        query_scale=float(query_pre_attn_scalar) ** -0.5
        if family in ("gemma2", "gemma3_text") and query_pre_attn_scalar else None,
        layer_windows=windows,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
        num_labels=num_labels,
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )


def load_hf_config(path: str | Path) -> tuple[ModelConfig, dict]:
    """Reads `path/config.json` (or a config.json path); returns the ModelConfig and the raw dict."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.exists():
        raise ConfigError(f"{file}: no config.json (expected a Hugging Face model folder)")
    try:
        hf = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return from_hf_dict(hf, where=str(file)), hf


def _architecture(cfg: ModelConfig) -> str:
    prefix = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
              "gemma2": "Gemma2", "gemma3_text": "Gemma3"}[cfg.model_type]
    if cfg.is_classifier:  # transformers names Gemma 3's text classifier apart from its multimodal one
        return prefix + ("Text" if cfg.model_type == "gemma3_text" else "") + _CLASSIFIER_SUFFIX
    return prefix + "ForCausalLM"


def to_hf_dict(cfg: ModelConfig, base: dict | None = None) -> dict:
    """A `config.json` dict for `cfg`; starts from `base` (the dict it was loaded from) so that inert fields
    such as token ids and label names survive a round trip."""
    hf = dict(base or {})
    hf.update({
        "architectures": [_architecture(cfg)],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
    })
    hf["hidden_activation" if cfg.model_type in ("gemma2", "gemma3_text") else "hidden_act"] = {
        "silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.activation]
    rope: dict[str, Any] = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_position)
    # transformers 5 reads rope_parameters; 4.x reads rope_theta and rope_scaling (None for the default RoPE).
    hf["rope_parameters"] = rope
    hf["rope_theta"] = cfg.rope_theta
    hf["rope_scaling"] = None if cfg.rope_type == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
    if cfg.model_type == "gemma3_text":  # 5.x reads one RoPE per layer type, 4.x rope_local_base_freq
        local = cfg.rope_theta if cfg.rope_local_theta is None else cfg.rope_local_theta
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": local}}
        hf["rope_local_base_freq"] = local
    if cfg.model_type not in ("qwen2",):
        hf["attention_bias"] = cfg.qkv_bias
    if cfg.model_type in ("llama",):
        hf["mlp_bias"] = cfg.mlp_bias
    windows = [w for w in cfg.layer_windows if w]
    if windows:
        hf["sliding_window"] = windows[0]
        if cfg.model_type in ("qwen2", "qwen3"):
            hf["use_sliding_window"] = True
    if cfg.model_type != "llama" and cfg.model_type != "gemma":
        hf["layer_types"] = ["sliding_attention" if w else "full_attention" for w in cfg.layer_windows]
    if cfg.model_type in ("gemma2", "gemma3_text"):
        hf["attn_logit_softcapping"] = cfg.attn_softcap
        hf["final_logit_softcapping"] = cfg.final_softcap
        hf["query_pre_attn_scalar"] = round(cfg.scale ** -2)
    if cfg.is_classifier:
        hf["num_labels"] = cfg.num_labels
        if "id2label" not in hf:
            hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
            hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return hf


def rope_inv_freq(cfg: ModelConfig, local: bool = False):
    """Inverse RoPE frequencies [head_dim // 2] in float32, as transformers computes them; `local`: those of the
    sliding-window layers (Gemma 3's rope_local_theta, never scaled)."""
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    exponent = np.arange(0, cfg.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(cfg.head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)
    if local:
        return inv_freq
    if cfg.rope_type == "linear":
        inv_freq = inv_freq / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old_len = cfg.rope_original_max_position
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq
