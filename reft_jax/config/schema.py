"""The typed run configuration: each section of `default_config()` as a frozen, validated dataclass.

Users write and override configs as ml_collections ConfigDicts (`--config.a.b=value`); `RunConfig.of` turns one
into this typed form at the edge (the CLI, `RunContext.create`), once. Every field gets its declared type there,
unknown or missing fields and values outside a field's choices are errors naming the field, and the code after
the edge reads typed attributes: no casts, no edits. The defaults and their explanations live in
`reft_jax.config.defaults.default_config`; the fields here mirror it one to one (a test keeps them in step).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from reft_jax.errors import ConfigError

# A data source: a local path or hub name, or a mapping of reft_jax.data.SourceSpec's fields.
Source = Union[str, dict]
# One source or a list of them, read in order (the refusal pool's prompts of several styles).
Sources = Union[str, dict, tuple[Union[str, dict], ...]]


def choices(*values: str) -> Any:
    """A str field that must be one of `values`."""
    return dataclasses.field(metadata={"choices": values})


@dataclasses.dataclass(frozen=True)
class LoraSection:
    rank: int
    alpha: float
    targets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelSection:
    path: str
    gguf_file: str
    init: dict  # a Hugging Face config.json
    dtype: str
    param_dtype: str
    attention: str
    remat: str
    scan_layers: bool
    loss_block: int
    lora: LoraSection


@dataclasses.dataclass(frozen=True)
class AlignmentData:
    harmful: Sources
    harmless: Source
    refusal: str
    n_harmful: int | None
    n_harmless: int | None
    harmful_pairs: Source
    n_harmful_pairs: int | None


@dataclasses.dataclass(frozen=True)
class UserData:
    task: str
    source: Source
    harmful_source: Source
    n: int
    p: float
    mix: str = choices("poison", "none")
    filtered: bool


@dataclasses.dataclass(frozen=True)
class PoolData:
    harmful: Sources
    harmless: Sources
    n_each: int
    n_calibration: int
    n_check: int


@dataclasses.dataclass(frozen=True)
class OverRefusalColumns:
    prompt: str
    label: str
    type: str


@dataclasses.dataclass(frozen=True)
class EvalData:
    harmful: Source
    task_source: Source
    n_harmful: int
    n_task: int
    over_refusal: Source
    over_refusal_columns: OverRefusalColumns
    over_refusal_safe: str
    n_over_refusal: int | None


@dataclasses.dataclass(frozen=True)
class DataSection:
    demo: bool
    tokenizer: str
    tokenizer_vocab_size: int
    local_dir: str
    local_files: dict
    template: str
    buckets: tuple[int, ...]
    min_response: int
    batch_size: int
    alignment: AlignmentData
    user: UserData
    pool: PoolData
    eval: EvalData

    @property
    def max_length(self) -> int:
        return max(self.buckets)

    @property
    def min_response_tokens(self) -> int | None:
        """Response tokens kept when truncating; None = the tokenizer's default (max length // 4)."""
        return None if self.min_response < 0 else self.min_response


@dataclasses.dataclass(frozen=True)
class GCGSection:
    prompts: int
    source: Source
    target: str
    steps: int
    suffix_length: int
    top_k: int
    candidates: int
    early_stop: bool


@dataclasses.dataclass(frozen=True)
class EvalSection:
    judge: str = choices("keyword", "llama_guard", "beavertails")
    judge_path: str
    max_new_tokens: int
    batch_size: int
    references: bool
    refusal_judge_path: str
    templates: tuple[str, ...]
    gcg: GCGSection


@dataclasses.dataclass(frozen=True)
class BaselinesSection:
    sa_steps: int
    joint_weight: float
    llama_guard_path: str


@dataclasses.dataclass(frozen=True)
class VaccineSection:
    rho: float


@dataclasses.dataclass(frozen=True)
class RepNoiseSection:
    alpha: float
    beta: float


@dataclasses.dataclass(frozen=True)
class BoosterSection:
    lam: float
    alpha: float


@dataclasses.dataclass(frozen=True)
class LisaSection:
    rho: float
    align_steps: int
    user_steps: int
    prox_warmup: float


@dataclasses.dataclass(frozen=True)
class DefencesSection:
    vaccine: VaccineSection
    repnoise: RepNoiseSection
    booster: BoosterSection
    lisa: LisaSection


@dataclasses.dataclass(frozen=True)
class SaftSection:
    val_source: str = choices("user", "pool")
    n_val: int
    layers: tuple[int, ...]
    ks: tuple[int, ...]
    weighted: bool
    percentile: float


@dataclasses.dataclass(frozen=True)
class FilterSection:
    tau: float
    calibrate_recall: float
    calibrate_max_fpr: float
    batch_size: int


@dataclasses.dataclass(frozen=True)
class RefusalSection:
    layer: int
    lam: float
    kind: str = choices("squared", "linear")
    update_every: int
    reg_pool: bool


@dataclasses.dataclass(frozen=True)
class DistillSection:
    beta: float
    temperature: float


@dataclasses.dataclass(frozen=True)
class OptimSection:
    learning_rate: float
    warmup_steps: int
    schedule: str = choices("cosine", "constant")
    end_lr_ratio: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    clip_norm: float
    grad_accum: int


@dataclasses.dataclass(frozen=True)
class StepsSection:
    steps: int


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int
    max_to_keep: int


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int
    fsdp: int
    tensor: int
    plan_memory: bool


@dataclasses.dataclass(frozen=True)
class DistributedSection:
    coordinator_address: str
    num_processes: int
    process_id: int
    auto_detect: bool


@dataclasses.dataclass(frozen=True)
class LoggingSection:
    every: int
    tensorboard: bool
    wandb: bool
    progress: bool


@dataclasses.dataclass(frozen=True)
class BenchSection:
    frameworks: tuple[str, ...]
    torch_variants: tuple[str, ...]
    steps: tuple[str, ...]
    finetune: tuple[str, ...]
    batch_size: int
    seq_len: int
    warmup: int
    iters: int
    rounds: int
    compile_only: bool
    profile_dir: str
    peak_flops: float
    same_weights: bool


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int
    model: ModelSection
    data: DataSection
    eval: EvalSection
    methods: str
    expected_time: str
    compile_cache: str
    baselines: BaselinesSection
    defences: DefencesSection
    saft: SaftSection
    filter: FilterSection
    refusal: RefusalSection
    distill: DistillSection
    optim: OptimSection
    teacher: StepsSection
    student: StepsSection
    checkpoint: CheckpointSection
    mesh: MeshSection
    distributed: DistributedSection
    logging: LoggingSection
    bench: BenchSection

    @classmethod
    def of(cls, cfg) -> RunConfig:
        """The typed form of a ConfigDict (or a plain dict of the same tree); a RunConfig is returned as it is."""
        if isinstance(cfg, RunConfig):
            return cfg
        return _build(cls, cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def replace(cfg, path: str, value):
    """A copy of a typed config with the dotted field `path` set, e.g. replace(cfg, "model.path", folder); for
    the config's resolution at its edge (generated demo data, a converted checkpoint), not for choosing code."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace(getattr(cfg, head), rest, value)})


# -- conversion ---------------------------------------------------------------------------------------

def _build(cls, tree, where: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"{where or 'config'}: expected a section, got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown config field")
    missing = sorted(set(fields) - set(tree))
    if missing:
        raise ConfigError(f"{where}{missing[0]}: missing config field")
    values = {}
    for name, field in fields.items():
        value = _convert(hints[name], tree[name], where + name)
        allowed = field.metadata.get("choices")
        if allowed and value not in allowed:
            raise ConfigError(f"{where}{name}: {value!r} is not one of {', '.join(allowed)}")
        values[name] = value
    return cls(**values)


def _convert(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for member in typing.get_args(tp):
            try:
                return _convert(member, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not {' or '.join(_name(m) for m in typing.get_args(tp))}")
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if item is str:  # a selection given on the command line as "a,b" (a string, or one in a tuple)
            value = [part for entry in ([value] if isinstance(value, str) else value) for part in str(entry).split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} is not a list")
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: {value!r} is not None")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {value!r} is not true or false")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is dict and isinstance(value, dict):
        return value
    if tp in (int, str) and isinstance(value, tp) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: {value!r} is not {_name(tp)}")


def _name(tp) -> str:
    return {type(None): "None", dict: "a mapping", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))
