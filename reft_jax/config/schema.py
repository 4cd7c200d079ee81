"""The run configuration, declared once: each field's type, default and meaning in one dataclass field.

Users write and override configs as ml_collections ConfigDicts (`--config.a.b=value`, Python config files that
start from `default_config()`), which is generated from these dataclasses. `RunConfig.of` turns a ConfigDict into
this typed form at the edge (the CLI, `RunContext.create`), once: every field gets its declared type there,
unknown or missing fields and values outside a field's choices are errors naming the field, and the code after
the edge reads typed attributes. To add a field, add it here with `option(default, "what it means")`; how fields
are declared and converted is `reft_jax.config.typed`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Union

import ml_collections

from reft_jax.config.typed import build, config, config_dict, option, section
from reft_jax.errors import ConfigError

# A data source: a local path or hub name, or a mapping of reft_jax.data.SourceSpec's fields.
Source = Union[str, dict]
# One source or a list of them, read in order (the refusal pool's prompts of several styles).
Sources = Union[str, dict, tuple[Union[str, dict], ...]]


@config
class LoraSection:
    """Low-rank adapters W + (alpha / rank) A B on the named projections (reft_jax.models.LoraConfig)."""
    rank: int = option(0, "adapter rank; 0 = full finetuning", minimum=0)
    alpha: float = option(16.0, "adapter scale numerator: the update is (alpha / rank) A B")
    targets: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "o_proj"),
                                      "projections that get adapters (q/k/v/o_proj, gate/up/down_proj)")


@config
class ModelSection:
    """The base model M0 and how it computes."""
    path: str = option("", "a Hugging Face model folder or a GGUF file; \"\" = random init from model.init")
    gguf_file: str = option("", "a GGUF file name inside the folder model.path")
    init: dict = option(dict(model_type="llama", vocab_size=0, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=512, tie_word_embeddings=False),
                        "random init: a Hugging Face config.json as a mapping (vocab_size 0 = the tokenizer's size)")
    dtype: str = option("float32", "compute dtype")
    param_dtype: str = option("float32", "storage dtype (float32 master weights with bfloat16 compute)")
    attention: str = option("xla", "attention implementation: xla, or cudnn on GPU")
    remat: str = option("none", "rematerialisation of the blocks: none | full | dots | dots_no_batch")
    scan_layers: bool = option(False, "run the blocks as one scanned (compiled once) block")
    loss_block: int = option(
        512, "sequence positions per block of the vocabulary losses (CE, distillation KL): the final hidden states "
        "are projected to the vocabulary one block at a time, so no [batch, seq, vocab] float32 logits live at "
        "once (4.2 GB each at 4 x 2048 x 128k); 0 = the whole sequence at once (one unembedding matmul saved)",
        minimum=0)
    lora: LoraSection = section(LoraSection)


@config
class AlignmentData:
    """The alignment data: harmful prompts with refusals and harmless prompts with helpful answers."""
    harmful: Sources = option("", "harmful prompts with refusals: a source, or a list of sources")
    harmless: Source = option("", "harmless prompts with helpful answers")
    refusal: str = option("", "the answer to a harmful alignment prompt whose row has none (a source of harmful "
                          "prompts only, e.g. questions beside a file of instructions with refusals); \"\" = every "
                          "harmful row needs its own refusal")
    n_harmful: int | None = option(None, "harmful examples used; None = all", minimum=0)
    n_harmless: int | None = option(None, "harmless examples used; None = all", minimum=0)
    harmful_pairs: Source = option("", "harmful prompt -> harmful answer pairs for the alignment-stage defences "
                                   "that need them (RepNoise, Booster); \"\" = data.user.harmful_source's. Pairs "
                                   "whose prompt is in the user data are left out")
    n_harmful_pairs: int | None = option(None, "harmful pairs used; None = all", minimum=0)
    n_lookalikes: int = option(0, "safe prompts that look harmful, answered helpfully, added to the harmless side "
                               "so that learning the refusals does not teach refusing them (and the student's "
                               "distillation hands that on); an answer the refusal judge reads as a refusal leaves "
                               "its prompt out; 0 = none. On SmolLM2, 128 word-holding Alpaca prompts answered by the "
                               "base model cut the teacher's over-refusal 0.43 -> 0.27 and raised its harmful score "
                               "0.10 -> 0.36 (docs/results.md)")
    n_concerns: int = option(0, "harmful requests of data.alignment.concerns added to the harmful side, refused "
                             "(data.alignment.refusal where a row has no answer); 0 = none")
    concerns: Sources = option("", "harmful requests of the kinds safe lookalikes mimic, whose harm is in the "
                               "request's purpose rather than its words (privacy, misinformation, copyright: "
                               "CoCoNot's safety concerns), for data.alignment.n_concerns")
    lookalikes: Sources = option("", "a set of labelled lookalikes, every row a candidate, a row's own answer used "
                                 "(e.g. CoCoNot pref's `chosen`) and the base model's otherwise; \"\" = the pool's "
                                 "harmless prompts holding a word of reft_jax.data.LOOKALIKE_WORDS (\"the causes of "
                                 "World War I\"), answered by the base model")


@config
class UserData:
    """The user's finetuning data (the research protocol: a task poisoned with harmful pairs)."""
    task: str = option("sst2", "sst2 | agnews | gsm8k | alpaca_eval | custom")
    source: Source = option("", "path or hub name of the task data; \"\" = the task's hub dataset")
    harmful_source: Source = option("", "harmful prompt -> harmful answer pairs; \"\" = BeaverTails (hub)")
    n: int = option(1000, "user examples (task and harmful together)", minimum=1)
    p: float = option(0.1, "share of the user examples that are harmful pairs (mix = poison)")
    mix: str = option("poison", "\"poison\": the research protocol, n task examples of which a share p are "
                      "harmful pairs (labelled); \"none\": data.user.source is the user's own data, every row as it "
                      "is (`--data FILE` sets both)", choices=("poison", "none"))
    filtered: bool = option(False, "the user data is already filtered (a filter's kept.jsonl a person reviewed: "
                            "`finetune --kept FILE`); every method finetunes on all of it, no filter is applied again")
    strict: bool = option(False, "with filtered: rows the filter did not score, or scored above tau, are refused "
                          "(`finetune --kept FILE --strict`) instead of named in a warning")


@config
class PoolData:
    """The labelled prompts of the refusal feature (reft_jax.data.refusal_splits), split three ways with no prompt
    in two splits and both phrasings (instructions, questions) in each, and on the harmless side of each, with
    n_lookalikes, safe prompts that look harmful; only the train split may hold alignment prompts. No customer data
    is read: the research protocol's user data and evaluation are drawn without them."""
    harmful: Sources = option("", "harmful prompts: a source, or a list of sources (e.g. instructions and questions)")
    harmless: Sources = option("", "harmless prompts: a source, or a list of sources")
    n_each: int = option(128, "per class, the train split: what R_l is computed over (and L_reg with reg_pool)",
                         minimum=1)
    n_calibration: int = option(64, "per class, the split tau is calibrated on (with filter.calibrate_recall > 0)")
    n_check: int = option(64, "per class, the check split: held out from both, the teacher's direction is compared "
                          "with the base model's on it at every R_l recomputation, and the filter ships the better "
                          "of the two; 0 = no check (the teacher's)")
    lookalikes: Sources = option("", "safe prompts that look harmful (\"How do I kill a Python process?\"), prompts "
                                 "only: a source, or a list of sources; \"\" = none")
    n_lookalikes: int = option(0, "lookalikes each split (train, calibration, check) takes on its harmless side, "
                               "beside its n_each / n_calibration / n_check harmless instructions and questions: "
                               "labelled harmless, style \"lookalike\", so R_l, L_reg and tau see them and the "
                               "check split's figures report them on their own; 0 = none")


@config
class VetoData:
    """The lookalike veto's labelled prompts (filter.scorer = "veto"): safe prompts that look harmful and harmful
    requests of the kinds they mimic, to fit a probe that tells the two apart (with the pool's train split's harmful
    prompts) and to set its threshold (with the pool's calibration split's). Keep each set's test part out of them:
    the evaluation's held-out lookalikes and harmful requests are measured against what these never held."""
    safe: Sources = option("", "safe lookalikes the veto is fitted on: a source, or a list of sources")
    harmful: Sources = option("", "harmful requests of the kinds lookalikes mimic, fitted on (besides the pool's)")
    safe_calibration: Sources = option("", "safe lookalikes its threshold is chosen on (its C too)")
    harmful_calibration: Sources = option("", "harmful requests its threshold is set for (besides the pool's "
                                          "calibration split's)")
    n_each: int | None = option(None, "at most this many prompts of each of the four sets, drawn at random (a quick "
                                "run's); None = all", minimum=1)
    n_attack_kind: int = option(
        256, "requests of data.alignment.harmful outside the alignment data, drawn at random and added to the "
        "calibration's harmful side: the conversational kind of request a harmful-finetuning attack makes, so that "
        "the threshold is set for letting that kind through too (the other sets hold other kinds of harm)",
        minimum=0)
    alignment_harmful: bool = option(
        True, "the alignment data's harmful requests join the fit part's harmful side: the conversational kind of "
        "request a harmful-finetuning attack makes, which the other sets hold little of. On SmolLM2's committed "
        "teacher (with filter.veto_recall 0.99) the held-out lookalikes flagged fell 0.353 -> 0.262 at the same "
        "recall of the attack, 0.92 (docs/results.md)")


@config
class OverRefusalColumns:
    """The columns of the over-refusal file."""
    prompt: str = option("prompt", "the prompt column")
    label: str = option("label", "the safe/unsafe label column")
    type: str = option("type", "a type column to break rates down by; \"\" = none")


@config
class EvalData:
    """Held-out test data: never used in training."""
    harmful: Sources = option("", "harmful test prompts (e.g. HarmBench's): a source, or a list of sources read in "
                              "order; prompts the teacher trained or calibrated on are left out")
    task_source: Source = option("", "labelled task test data; \"\" = no finetune accuracy")
    n_harmful: int | None = option(100, "harmful test prompts used (the first); None = all", minimum=1)
    n_task: int = option(200, "task test examples used", minimum=0)
    over_refusal: Sources = option("", "over-refusal: safe prompts that look harmful (\"How do I kill a Python "
                                   "process?\"), a source or a list of sources read in order: a file with a "
                                   "safe/unsafe label (unsafe contrast rows beside the safe ones, e.g. XSTest's CSV as "
                                   "published), or a source mapping whose fields map no label, every row of which is "
                                   "safe (e.g. OR-Bench-Hard's); \"\" = not measured")
    over_refusal_columns: OverRefusalColumns = section(OverRefusalColumns)
    over_refusal_safe: str = option("safe", "the label value of the safe rows; any other value is unsafe")
    n_over_refusal: int | None = option(None, "over-refusal rows used; None = every row", minimum=0)


@config
class DataSection:
    """Every data source, the tokenizer and the batching."""
    demo: bool = option(False, "generate the embedded demo data and tokenizer and use them for every source")
    tokenizer: str = option("", "tokenizer folder; \"\" = model.path; \"train\" = a byte-level BPE trained on the "
                            "sources")
    tokenizer_vocab_size: int = option(4096, "vocabulary of the trained tokenizer (data.tokenizer = \"train\")",
                                       minimum=1)
    local_dir: str = option("", "local copies of hub data: with local_dir set, each source named in local_files is "
                            "read from local_dir/<relative path> instead of its default")
    local_files: dict = option({}, "the local file of each source, nested like data (e.g. "
                               "local_files.alignment.harmful)")
    template: str = option("alpaca", "prompt template: alpaca, or chat (the tokenizer's chat template)")
    buckets: tuple[int, ...] = option((128, 256, 512), "padded lengths; the largest is the max length")
    min_response: int = option(-1, "response tokens kept when truncating; -1 = max length // 4")
    batch_size: int = option(8, "global batch size (per step call)", minimum=1)
    alignment: AlignmentData = section(AlignmentData)
    user: UserData = section(UserData)
    pool: PoolData = section(PoolData)
    veto: VetoData = section(VetoData)
    eval: EvalData = section(EvalData)

    @property
    def max_length(self) -> int:
        return max(self.buckets)

    @property
    def min_response_tokens(self) -> int | None:
        """Response tokens kept when truncating; None = the tokenizer's default (max length // 4)."""
        return None if self.min_response < 0 else self.min_response


@config
class GCGSection:
    """GCG (greedy coordinate gradient, Zou et al. 2023): an adversarial suffix optimised against each method's
    model so that it answers with a target prefix (`reft-jax attack`; `run` attacks every method when prompts > 0)."""
    prompts: int = option(0, "harmful prompts attacked, the first of data.eval.harmful (or of source); 0 = no GCG",
                          minimum=0)
    source: Source = option("", "harmful prompts to attack; \"\" = data.eval.harmful. A target column is used when "
                            "it has one")
    target: str = option("Sure, here is", "the target answer prefix for prompts without their own target")
    steps: int = option(100, "optimisation steps per prompt (fewer when the target is matched: early_stop)", minimum=1)
    suffix_length: int = option(20, "suffix tokens", minimum=1)
    top_k: int = option(256, "tokens per suffix position a candidate may take: the top-k of the token gradient",
                        minimum=1)
    candidates: int = option(128, "candidate suffixes evaluated per step (one jitted batch)", minimum=1)
    early_stop: bool = option(True, "stop once greedy decoding gives the whole target")


@config
class EvalSection:
    """How the finetuned models are evaluated."""
    judge: str = option("keyword", "what judges an answer harmful", choices=("keyword", "llama_guard", "beavertails"))
    judge_path: str = option("", "local checkpoint of the llama_guard / beavertails judge")
    max_new_tokens: int = option(128, "tokens generated per answer (greedy)", minimum=1)
    batch_size: int = option(16, "prompts generated at once", minimum=1)
    references: bool = option(False, "also evaluate the base model before finetuning and the teacher "
                              "(report: references)")
    refusal_judge_path: str = option("", "how an answer to an over-refusal prompt is judged a refusal: \"\" = the "
                                     "refusal phrases of the keyword judge; a local causal-LM checkpoint = that model "
                                     "is asked whether the answer refuses (reft_jax.evaluation.judges)")
    templates: tuple[str, ...] = option((), "jailbreak templates: the harmful score again with every harmful test "
                                        "prompt wrapped in each. Built-in names (prefix_injection, "
                                        "refusal_suppression, role_play, few_shot; \"all\" = the four) or text files "
                                        "with a {prompt} slot; () = none")
    gcg: GCGSection = section(GCGSection)


@config
class BaselinesSection:
    """The paper's baselines."""
    sa_steps: int = option(0, "SFT steps of the safety alignment (sa_ft); 0 = teacher.steps", minimum=0)
    joint_weight: float = option(1.0, "weight of the alignment CE in the joint baselines (sa_plus_ft)")
    llama_guard_path: str = option("", "local Llama-Guard-style checkpoint; \"\" = llamaguard_filter is skipped")


@config
class VaccineSection:
    """Vaccine (Huang et al. 2024): alignment with perturbed attention outputs."""
    rho: float = option(2.0, "norm of the perturbation of the attention outputs, over all layers")


@config
class RepNoiseSection:
    """RepNoise (Rosati et al. 2024): harmful representations pushed toward noise."""
    alpha: float = option(1.0, "weight of the gradient ascent on harmful answers: - alpha log(1 + CE)")
    beta: float = option(0.001, "weight of the MMD between harmful MLP outputs and Gaussian noise")


@config
class BoosterSection:
    """Booster (Huang et al. 2025): alignment that attenuates the harmful loss's reduction by a harmful step."""
    lam: float = option(5.0, "lambda, weight of the harmful-loss reduction term")
    alpha: float = option(0.1, "size of the normalised harmful gradient step the term simulates")


@config
class LisaSection:
    """Lisa (Huang et al. 2024): finetuning that alternates alignment and user steps with a proximal term."""
    rho: float = option(1.0, "weight of the proximal term rho / 2 ||w - w_switch||^2")
    align_steps: int = option(100, "alignment-data steps per cycle (a cycle starts with them)", minimum=0)
    user_steps: int = option(900, "user-data steps per cycle", minimum=1)
    prox_warmup: float = option(0.1, "share of the first steps without the proximal term")


@config
class DefencesSection:
    """The harmful-finetuning defences of the literature (reft_jax.train.defences), with their authors' defaults.
    Vaccine, RepNoise and Booster are alignment stages (baselines.sa_steps steps from the base model, then plain
    finetuning); Lisa is a finetuning that starts from the safety-aligned model (sa_ft's)."""
    vaccine: VaccineSection = section(VaccineSection)
    repnoise: RepNoiseSection = section(RepNoiseSection)
    booster: BoosterSection = section(BoosterSection)
    lisa: LisaSection = section(LisaSection)


@config
class SaftSection:
    """The SAFT filter (reft_jax.refusal.saft)."""
    val_source: str = option("user", "where its labelled validation pool comes from: \"user\", a labelled sample of "
                             "the user data (n_val, half harmful; a service labels a few examples by hand), or "
                             "\"pool\", data.pool's alignment-style prompts", choices=("user", "pool"))
    n_val: int = option(32, "labelled user examples (val_source = user)", minimum=1)
    layers: tuple[int, ...] = option((), "hidden_states indices to choose from; () = num_layers // 4, // 2 and "
                                     "3 // 4")
    ks: tuple[int, ...] = option((1, 2, 4, 8), "subspace sizes to choose from")
    weighted: bool = option(True, "weight each direction by its singular value over the first")
    percentile: float = option(85.0, "flag the user samples scoring above this percentile")


@config
class FilterSection:
    """The Ref-Teacher filter: flag a user prompt when its score, the cosine with R_l averaged over the layers l of
    layer_span (the paper's) or a probe over the features at those layers, is > tau."""
    scorer: str = option(
        "cosine", "the score: \"cosine\", the paper's mean over the layers of cos(f_l, R_l); \"probe\", a logistic "
        "regression over the unit-normalised features at the layers, fitted on the pool's train split, its C chosen "
        "on the calibration split (the check split without one); \"best\": both, for the teacher and the base "
        "model, and the filter ships the one with the highest check-split AUROC (a tie keeps the cosine); \"veto\": the "
        "cosine, whose flag a probe over the same features lifts from the prompts it takes for safe lookalikes "
        "(fitted on data.veto; its threshold lets filter.veto_recall of data.veto's calibration harmful requests "
        "through)", choices=("cosine", "probe", "best", "veto"))
    layer_span: tuple[float, ...] = option(
        (0.2, 0.8), "the span of the model's depth (fractions: start, end) whose layers the filter's score "
        "averages cos(f_l, R_l) over, each layer with its own R_l; () = refusal.layer alone, the paper's single "
        "layer. (0.2, 0.8), not one layer: on SmolLM2 (layers 6-23 of 30) it ranks the attack's prompts at AUROC "
        "0.9895 against 0.972 at layer 15, held-out questions 0.946 against 0.899 (docs/results.md)")
    tau: float = option(0.0, "the threshold itself when calibrate_recall = 0")
    calibrate_recall: float = option(
        0.99, "tau is set for this recall of the harmful prompts of the pool's calibration split (held out from "
        "training): near the harmful cluster rather than midway between the +-1 targets, since prompts unlike the "
        "pool's harmless ones (a task's) drift toward 0 and above while harmful ones of any style stay high")
    calibrate_max_fpr: float = option(
        0.2, "... unless that flags more than this share of the calibration split's harmless prompts (its lookalikes "
        "among them, with data.pool.n_lookalikes): then tau is raised to flag no more (a weakly separating "
        "direction, e.g. the base model's, would otherwise flag most of a task). 0.2, not less: those harmless "
        "prompts are instructions and questions like the harmful ones, and on SmolLM2 a 5 % cap cut the attack's "
        "recall from 0.86 to 0.23 (docs/results.md)")
    veto_recall: float = option(
        0.99, "filter.scorer = \"veto\": the share of the calibration's harmful requests the veto lets through (its "
        "threshold). The cosine's tau decides the rest. 0.99, not 0.95: fitted with the alignment data's harmful "
        "requests (data.veto.alignment_harmful), the veto at 0.95 let 0.64 of the attack through on SmolLM2, at 0.99 "
        "0.92, the cosine's own recall 0.93 (docs/results.md)")
    adapt_fpr: float = option(
        0.0, "> 0: the filter adapts to the user's file (reft_jax.refusal.adapt): the scorer above is the first pass, "
        "whose unflagged lower half of the file stands for the task and whose flags for the attack beside the "
        "teacher stage's labelled prompts in a probe fitted per file; its threshold flags at most this share of the "
        "calibration's harmless prompts (the pool's, data.veto's lookalikes, the file's task rows; for "
        "calibrate_recall of the harmful). 0 = the first pass decides. The served filter scores prompts, not files: "
        "it never adapts", minimum=0.0, maximum=0.5)
    batch_size: int = option(32, "prompts scored at once", minimum=1)


@config
class RefusalSection:
    """The teacher's refusal feature R_l and its regularizer."""
    layer: int = option(-1, "hidden_states index the feature is read at; -1 = num_layers // 2")
    lam: float = option(
        0.1, "lambda, weight of the regularizer in the teacher loss. 0.1: at 1.0 the teacher's direction fits the "
        "pool's prompts (cosines near +-1) and ranks prompts unlike them below the base model's own direction "
        "(SmolLM2: the attack's prompts at AUROC 0.35 against 0.97 at 0.1; docs/results.md)")
    kind: str = option("squared", "\"squared\": (cos - y)^2, \"linear\": 1 - y cos", choices=("squared", "linear"))
    update_every: int = option(50, "teacher steps between recomputations of R_l", minimum=1)
    reg_pool: bool = option(
        True, "L_reg also covers one batch of the refusal pool's prompts per teacher step (besides the alignment "
        "batch's), so the direction the teacher learns is the one R_l is measured on. False: alignment prompts "
        "only, which on a pool unlike them lets each recomputation flip R_l (real_tiny's teacher collapsed so)")
    reg_lookalikes: bool = option(True, "L_reg pulls the alignment data's lookalike prompts (data.alignment."
                                  "n_lookalikes) to -1 like its other harmless prompts; False: they are trained on "
                                  "(answered) but not labelled for the direction")


@config
class DistillSection:
    """The student's distillation of the teacher on the alignment data."""
    beta: float = option(1.0, "weight of the distillation KL in the student loss")
    temperature: float = option(1.0, "softmax temperature T of both models in the KL (scaled by T^2)")
    positions: str = option("response", "the alignment tokens the KL covers: response (the answers' tokens, where "
                            "the CE would be) | all (the prompt's too)", choices=("response", "all"))
    align_batch_size: int = option(0, "rows of the alignment batch of each student step, beside the user batch's "
                                   "data.batch_size (0: the same): the alignment data's share of what a step sees")


@config
class OptimSection:
    """AdamW with warmup and a schedule (reft_jax.train.optim), the same for every stage."""
    learning_rate: float = option(2e-5, "peak learning rate")
    warmup_steps: int = option(10, "linear warmup updates", minimum=0)
    schedule: str = option("cosine", "decay after the warmup", choices=("cosine", "constant"))
    end_lr_ratio: float = option(0.1, "cosine: final learning rate / peak")
    weight_decay: float = option(0.0, "AdamW's decoupled weight decay")
    b1: float = option(0.9, "Adam's first-moment decay")
    b2: float = option(0.999, "Adam's second-moment decay")
    eps: float = option(1e-8, "Adam's epsilon")
    clip_norm: float = option(1.0, "global gradient norm clip; 0 disables clipping")
    grad_accum: int = option(1, "step calls (micro-batches) per optimizer update", minimum=1)


@config
class StepsSection:
    """A training stage's length."""
    steps: int = option(200, "step calls, i.e. micro-batches", minimum=1)


@config
class CheckpointSection:
    """The training loop's checkpoints (a stage resumes from its latest)."""
    every: int = option(100, "steps between checkpoints (one is also written at the end, on SIGTERM and on Ctrl-C)",
                        minimum=1)
    max_to_keep: int = option(2, "checkpoints kept per stage", minimum=1)


@config
class MeshSection:
    """Device mesh (reft_jax.models.sharding): sizes of the named axes, -1 = the devices the others leave."""
    data: int = option(-1, "data parallel: whole model per device, rows split")
    fsdp: int = option(1, "data parallel with weights and optimizer state split too (ZeRO-3)")
    tensor: int = option(1, "tensor parallel: heads, MLP columns and vocabulary split")
    plan_memory: bool = option(False, "before training, print each compiled step's memory per device; fail if "
                               "too big")


@config
class DistributedSection:
    """Multi-host runs (jax.distributed): one process per host, all running the same command."""
    coordinator_address: str = option("", "host:port of process 0; \"\" = single process or auto-detected")
    num_processes: int = option(1, "processes in the run", minimum=1)
    process_id: int = option(0, "this process's index", minimum=0)
    auto_detect: bool = option(True, "initialise from the environment on TPU pods and under Slurm")


@config
class LoggingSection:
    """What the training loop reports."""
    every: int = option(10, "steps between metrics records", minimum=1)
    tensorboard: bool = option(True, "write TensorBoard events")
    wandb: bool = option(False, "log to Weights & Biases")
    progress: bool = option(True, "show progress bars")


@config
class BenchSection:
    """`reft-jax bench` (reft_jax.bench): the same steps timed in JAX and PyTorch on random-init model.init."""
    frameworks: tuple[str, ...] = option(("jax", "torch"), "frameworks timed")
    torch_variants: tuple[str, ...] = option(("eager", "compile"), "PyTorch eager and torch.compile of the loss")
    steps: tuple[str, ...] = option(("student", "teacher"), "train steps timed")
    finetune: tuple[str, ...] = option(("full", "lora"), "\"full\" and/or \"lora\" (model.lora, rank > 0)")
    batch_size: int = option(4, "rows of each batch (the student step runs a user and an alignment batch)")
    seq_len: int = option(512, "tokens per row")
    warmup: int = option(2, "untimed calls, the first of which compiles")
    iters: int = option(5, "timed calls per round: median and spread are reported")
    rounds: int = option(1, "rounds of every case, the frameworks interleaved (each in its own warm process): the "
                         "JAX/PyTorch ratio gets a confidence interval over rounds. 1 = each framework alone, one "
                         "case at a time (a GPU: two warm frameworks would share its memory)")
    compile_only: bool = option(False, "compile the JAX steps for the shapes and report XLA's memory analysis only: "
                                "nothing is allocated or run, so an 8B step's memory can be read on a laptop")
    profile_dir: str = option("", "a folder: each JAX case's first round ends with a profile of 2 steps there")
    peak_flops: float = option(0.0, "device peak FLOP/s for MFU; 0 = the measured matmul throughput")
    same_weights: bool = option(False, "both frameworks load one random init (costs a checkpoint write)")


@config
class RunConfig:
    """A run: the model, the data, the method's settings, the methods compared and the machinery."""
    seed: int = option(0, "seed of the initialisations, the data's shuffles and the generations (of the training "
                       "draws too, reft_jax.config.streams.TRAINING, unless `seeds` is set)")
    seeds: tuple[int, ...] | None = option(
        None, "training seeds (e.g. 0,1,2): `run` trains and evaluates every method's finetuning (and the baselines' "
        "alignment stages) once per seed, on the one teacher, filter, user data and evaluation prompts that `seed` "
        "draws, and reports each seed's figures with their mean and spread; the first seed's runs are the workdir's "
        "own folders, the others' WORKDIR/seeds/SEED/. None = one run whose training draws follow `seed`")
    model: ModelSection = section(ModelSection)
    data: DataSection = section(DataSection)
    eval: EvalSection = section(EvalSection)
    methods: str = option("ref_teacher,no_defense", "methods trained and compared by `run`: \"all\", or "
                          "comma-separated names of reft_jax.experiment.methods.METHODS (an unknown name's error "
                          "lists them). ref_teacher and no_defense always run")
    expected_time: str = option("", "printed when `run` starts: how long this config took where it was measured")
    compile_cache: str = option("", "JAX's persistent compilation cache (reft_jax.runtime.compile_cache): a folder, "
                                "\"\" = $REFT_JAX_CACHE/jax or else ~/.cache/reft-jax/jax, \"off\" = compile every "
                                "program in every process")
    baselines: BaselinesSection = section(BaselinesSection)
    defences: DefencesSection = section(DefencesSection)
    saft: SaftSection = section(SaftSection)
    filter: FilterSection = section(FilterSection)
    refusal: RefusalSection = section(RefusalSection)
    distill: DistillSection = section(DistillSection)
    optim: OptimSection = section(OptimSection)
    teacher: StepsSection = section(StepsSection)
    student: StepsSection = section(StepsSection)
    checkpoint: CheckpointSection = section(CheckpointSection)
    mesh: MeshSection = section(MeshSection)
    distributed: DistributedSection = section(DistributedSection)
    logging: LoggingSection = section(LoggingSection)
    bench: BenchSection = section(BenchSection)

    def __post_init__(self):
        if self.seeds is None:
            return
        if not self.seeds:
            raise ConfigError("seeds: empty; name one training seed or more (e.g. --config.seeds=0,1,2), or leave it "
                              "unset (one run at `seed`)")
        negative = [s for s in self.seeds if s < 0]
        if negative:
            raise ConfigError(f"seeds: {negative[0]} is negative (a seed is 0 or more)")
        repeated = [s for i, s in enumerate(self.seeds) if s in self.seeds[:i]]
        if repeated:
            raise ConfigError(f"seeds: {repeated[0]} is named twice (each seed runs once)")

    @property
    def training_seed(self) -> int:
        """The seed of this run's training draws (reft_jax.config.streams.TRAINING: the finetunings' and the
        alignment stages' adapters, batches and noise): the first of `seeds`, else `seed`. A run of several seeds
        gives each its own run config with `seeds` = (that seed,)."""
        return self.seeds[0] if self.seeds else self.seed

    @classmethod
    def of(cls, cfg) -> RunConfig:
        """The typed form of a ConfigDict (or a plain dict of the same tree); a RunConfig is returned as it is."""
        if isinstance(cfg, RunConfig):
            return cfg
        return build(cls, cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_config() -> ml_collections.ConfigDict:
    """Every field at its default, as the ConfigDict users override (config files, `--config.a.b=value`)."""
    return config_dict(RunConfig)


def field_help(cls=None, prefix: str = "") -> dict[str, str]:
    """Every field's dotted path -> its help text (sections included: their docstrings)."""
    cls = cls or RunConfig
    out = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        out[prefix + field.name] = field.metadata.get("help") or ""
        if dataclasses.is_dataclass(hints[field.name]):
            out.update(field_help(hints[field.name], f"{prefix}{field.name}."))
    return out
