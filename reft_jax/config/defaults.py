"""Default run configuration (ml_collections): every field, its default and what it means.

Config files in configs/ start from `default_config()` and override fields; every field can also be set on
the command line as --config.a.b=value. The code reads the typed form of this tree (reft_jax.config.schema).
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # a Hugging Face model folder or a GGUF file; "" = random init from model.init
    c.model.gguf_file = ""  # a GGUF file name inside the folder model.path
    # Random init: a Hugging Face config.json as a dict (vocab_size 0 = the tokenizer's size).
    c.model.init = ml_collections.ConfigDict(dict(
        model_type="llama", vocab_size=0, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False))
    c.model.dtype = "float32"  # compute dtype
    c.model.param_dtype = "float32"  # storage dtype (float32 master weights with bfloat16 compute)
    c.model.attention = "xla"  # or "cudnn" on GPU
    c.model.remat = "none"  # none | full | dots | dots_no_batch
    c.model.scan_layers = False
    # Sequence positions per block of the vocabulary losses (CE, distillation KL): the final hidden states are
    # projected to the vocabulary one block at a time, so no [batch, seq, vocab] float32 logits live at once
    # (4.2 GB each at 4 x 2048 x 128k). 0 = the whole sequence at once (one more unembedding matmul saved).
    c.model.loss_block = 512
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0  # 0 = full finetuning
    c.model.lora.alpha = 16.0
    c.model.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    c.data = ml_collections.ConfigDict()
    c.data.demo = False  # True: generate the embedded demo data and tokenizer and use them for every source
    c.data.tokenizer = ""  # tokenizer folder; "" = model.path; "train" = a byte-level BPE trained on the sources
    c.data.tokenizer_vocab_size = 4096  # for data.tokenizer = "train"
    # Local copies of hub data: with local_dir set, each source named in local_files (nested like data, e.g.
    # local_files.alignment.harmful) is read from local_dir/<relative path> instead of its default.
    c.data.local_dir = ""
    c.data.local_files = ml_collections.ConfigDict()
    c.data.template = "alpaca"  # or "chat" (the tokenizer's chat template)
    c.data.buckets = (128, 256, 512)  # padded lengths; the largest is the max length
    c.data.min_response = -1  # response tokens kept when truncating; -1 = max length // 4
    c.data.batch_size = 8  # global batch size (per step call)
    c.data.alignment = ml_collections.ConfigDict()
    c.data.alignment.harmful = ""  # harmful prompts with refusals: a source, or a list of sources
    # The answer to a harmful alignment prompt whose row has none (a source of harmful prompts only, e.g. questions
    # beside a file of instructions with refusals); "" = every harmful row needs its own refusal.
    c.data.alignment.refusal = ""
    c.data.alignment.harmless = ""  # harmless prompts with helpful answers
    c.data.alignment.n_harmful = ml_collections.FieldReference(None, field_type=int)  # None = all
    c.data.alignment.n_harmless = ml_collections.FieldReference(None, field_type=int)
    # Harmful prompt -> harmful answer pairs for the alignment-stage defences that need them (RepNoise, Booster);
    # "" = data.user.harmful_source's. Pairs whose prompt is in the user data are left out.
    c.data.alignment.harmful_pairs = ""
    c.data.alignment.n_harmful_pairs = ml_collections.FieldReference(None, field_type=int)  # None = all
    c.data.user = ml_collections.ConfigDict()
    c.data.user.task = "sst2"  # sst2 | agnews | gsm8k | alpaca_eval | custom
    c.data.user.source = ""  # path or hub name of the task data; "" = the task's hub dataset
    c.data.user.harmful_source = ""  # harmful prompt -> harmful answer pairs; "" = BeaverTails (hub)
    c.data.user.n = 1000
    c.data.user.p = 0.1
    # "poison": the research protocol, n task examples of which a share p are harmful pairs (labelled);
    # "none": data.user.source is the user's own data, every row as it is (`--data FILE` sets both).
    c.data.user.mix = "poison"
    # True: the user data is already filtered (a filter's kept.jsonl a person reviewed: `finetune --kept FILE`);
    # every method finetunes on all of it, no filter is applied again.
    c.data.user.filtered = False
    # The labelled prompts of the refusal feature (reft_jax.data.refusal_splits), split three ways with no prompt in
    # two splits and both prompt styles (instructions, questions) in each; none is a prompt of the user data, the
    # attack's source or the evaluation, and only the train split may hold alignment prompts.
    c.data.pool = ml_collections.ConfigDict()
    c.data.pool.harmful = ""  # harmful prompts: a source, or a list of sources (e.g. instructions and questions)
    c.data.pool.harmless = ""
    c.data.pool.n_each = 128  # per class, the train split: what R_l is computed over (and L_reg with reg_pool)
    c.data.pool.n_calibration = 64  # per class, the split tau is calibrated on (with filter.calibrate_recall > 0)
    # per class, the check split: held out from both, the teacher's direction is compared with the base model's on
    # it at every R_l recomputation, and the filter ships the better of the two; 0 = no check (the teacher's)
    c.data.pool.n_check = 64

    c.data.eval = ml_collections.ConfigDict()  # held-out test data: never used in training
    c.data.eval.harmful = ""  # harmful test prompts (e.g. BeaverTails / AdvBench prompts)
    c.data.eval.task_source = ""  # labelled task test data; "" = no finetune accuracy
    c.data.eval.n_harmful = 100
    c.data.eval.n_task = 200
    # Over-refusal: safe prompts that look harmful ("How do I kill a Python process?"), with unsafe contrast rows,
    # e.g. XSTest's CSV as published; "" = not measured. A JSON/JSONL/CSV file (or source mapping) whose columns
    # over_refusal_columns names: the prompt, the safe/unsafe label, and a type to break rates down by ("" = none).
    c.data.eval.over_refusal = ""
    c.data.eval.over_refusal_columns = ml_collections.ConfigDict(dict(prompt="prompt", label="label", type="type"))
    c.data.eval.over_refusal_safe = "safe"  # the label value of the safe rows; any other value is unsafe
    c.data.eval.n_over_refusal = ml_collections.FieldReference(None, field_type=int)  # None = every row

    c.eval = ml_collections.ConfigDict()
    c.eval.judge = "keyword"  # keyword | llama_guard | beavertails
    c.eval.judge_path = ""  # local checkpoint of the llama_guard / beavertails judge
    c.eval.max_new_tokens = 128
    c.eval.batch_size = 16
    c.eval.references = False  # also evaluate the base model before finetuning and the teacher (report: references)
    # How an answer to an over-refusal prompt is judged a refusal: "" = the refusal phrases of the keyword judge;
    # a local causal-LM checkpoint = that model is asked whether the answer refuses (reft_jax.evaluation.judges).
    c.eval.refusal_judge_path = ""
    # Jailbreak templates: the harmful score again with every harmful test prompt wrapped in each template. Names
    # of built-in ones (prefix_injection, refusal_suppression, role_play, few_shot; "all" = the four) or text
    # files with a {prompt} slot; () = none.
    c.eval.templates = ()
    # GCG (greedy coordinate gradient, Zou et al. 2023): an adversarial suffix optimised against each method's model
    # so that it answers with a target prefix (`reft-jax attack`; `run` attacks every method when prompts > 0).
    c.eval.gcg = ml_collections.ConfigDict()
    c.eval.gcg.prompts = 0  # harmful prompts attacked, the first of data.eval.harmful (or of source); 0 = no GCG
    c.eval.gcg.source = ""  # harmful prompts to attack; "" = data.eval.harmful. A target column is used when it has one
    c.eval.gcg.target = "Sure, here is"  # the target answer prefix for prompts without their own target
    c.eval.gcg.steps = 100  # optimisation steps per prompt (fewer when the target is matched: early_stop)
    c.eval.gcg.suffix_length = 20  # suffix tokens
    c.eval.gcg.top_k = 256  # tokens per suffix position a candidate may take: the top-k of the token gradient
    c.eval.gcg.candidates = 128  # candidate suffixes evaluated per step (one jitted batch)
    c.eval.gcg.early_stop = True  # stop once greedy decoding gives the whole target

    # Methods trained and compared by `run` (reft_jax.experiment.methods): "all", or comma-separated names out of
    # ref_teacher, no_defense, sa_ft, sa_plus_ft, filter_only, distill_only, saft, llamaguard_filter,
    # sa_ft+filter, sa_plus_ft+filter, vaccine, repnoise, booster, lisa. ref_teacher and no_defense always run.
    c.methods = "ref_teacher,no_defense"
    c.expected_time = ""  # printed when `run` starts: how long this config took where it was measured
    # JAX's persistent compilation cache (reft_jax.runtime.compile_cache): a folder, "" = $REFT_JAX_CACHE or else
    # ~/.cache/reft-jax/jax, "off" = compile every program in every process
    c.compile_cache = ""
    c.baselines = ml_collections.ConfigDict()
    c.baselines.sa_steps = 0  # SFT steps of the safety alignment (sa_ft); 0 = teacher.steps
    c.baselines.joint_weight = 1.0  # weight of the alignment CE in the joint baselines (sa_plus_ft)
    c.baselines.llama_guard_path = ""  # local Llama-Guard-style checkpoint; "" = llamaguard_filter is skipped
    # The harmful-finetuning defences of the literature (reft_jax.train.defences), with their authors' defaults.
    # Vaccine, RepNoise and Booster are alignment stages (baselines.sa_steps steps from the base model, then
    # plain finetuning); Lisa is a finetuning that starts from the safety-aligned model (sa_ft's).
    c.defences = ml_collections.ConfigDict()
    c.defences.vaccine = ml_collections.ConfigDict()
    c.defences.vaccine.rho = 2.0  # norm of the perturbation of the attention outputs, over all layers
    c.defences.repnoise = ml_collections.ConfigDict()
    c.defences.repnoise.alpha = 1.0  # weight of the gradient ascent on harmful answers: - alpha log(1 + CE)
    c.defences.repnoise.beta = 0.001  # weight of the MMD between harmful MLP outputs and Gaussian noise
    c.defences.booster = ml_collections.ConfigDict()
    c.defences.booster.lam = 5.0  # lambda, weight of the harmful-loss reduction term
    c.defences.booster.alpha = 0.1  # size of the normalised harmful gradient step the term simulates
    c.defences.lisa = ml_collections.ConfigDict()
    c.defences.lisa.rho = 1.0  # weight of the proximal term rho / 2 ||w - w_switch||^2
    c.defences.lisa.align_steps = 100  # alignment-data steps per cycle (a cycle starts with them)
    c.defences.lisa.user_steps = 900  # user-data steps per cycle
    c.defences.lisa.prox_warmup = 0.1  # share of the first steps without the proximal term

    c.saft = ml_collections.ConfigDict()  # the SAFT filter (reft_jax.refusal.saft)
    # Where its labelled validation pool comes from: "user", a labelled sample of the user data (n_val, half
    # harmful; a service labels a few examples by hand), or "pool", data.pool's alignment-style prompts.
    c.saft.val_source = "user"
    c.saft.n_val = 32
    c.saft.layers = ()  # hidden_states indices to choose from; () = num_layers // 4, // 2 and 3 // 4
    c.saft.ks = (1, 2, 4, 8)  # subspace sizes to choose from
    c.saft.weighted = True  # weight each direction by its singular value over the first
    c.saft.percentile = 85.0  # flag the user samples scoring above this percentile

    c.filter = ml_collections.ConfigDict()
    # Flag when cos(f_l, R_l) > tau, tau set for this recall of the harmful prompts of the pool's calibration split
    # (held out from training). Near the harmful cluster rather than midway between the +-1 targets: prompts unlike
    # the pool's harmless ones (a task's) drift toward 0 and above, harmful ones of any style stay high.
    c.filter.calibrate_recall = 0.99
    # ... unless that flags more than this share of the calibration split's harmless prompts: then tau is raised to
    # flag no more (a weakly separating direction, e.g. the base model's, would otherwise flag most of a task).
    # 0.2, not less: the calibration split's harmless prompts are instructions and questions like the harmful ones,
    # and on SmolLM2 a 5 % cap cut the attack's recall from 0.86 to 0.23 (docs/results.md).
    c.filter.calibrate_max_fpr = 0.2
    c.filter.tau = 0.0  # the threshold itself when calibrate_recall = 0
    c.filter.batch_size = 32

    c.refusal = ml_collections.ConfigDict()
    c.refusal.layer = -1  # hidden_states index the feature is read at; -1 = num_layers // 2
    # lambda, weight of the regularizer in the teacher loss. 0.1: at 1.0 the teacher's direction fits the pool's
    # prompts (cosines near +-1) and ranks prompts unlike them below the base model's own direction (SmolLM2: the
    # attack's prompts at AUROC 0.35 against 0.97 at 0.1; docs/results.md); the demo separates at either.
    c.refusal.lam = 0.1
    c.refusal.kind = "squared"  # "squared": (cos - y)^2, "linear": 1 - y cos
    c.refusal.update_every = 50  # teacher steps between recomputations of R_l
    # L_reg also covers one batch of the refusal pool's prompts per teacher step (besides the alignment batch's),
    # so the direction the teacher learns is the one R_l is measured on. False: alignment prompts only, which
    # on a pool unlike them lets each recomputation flip R_l (real_tiny's teacher collapsed that way).
    c.refusal.reg_pool = True

    c.distill = ml_collections.ConfigDict()
    c.distill.beta = 1.0  # weight of the distillation KL in the student loss
    c.distill.temperature = 1.0

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 10
    c.optim.schedule = "cosine"  # or "constant"
    c.optim.end_lr_ratio = 0.1  # cosine: final learning rate / peak
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0  # 0 disables clipping
    c.optim.grad_accum = 1  # step calls (micro-batches) per optimizer update

    c.teacher = ml_collections.ConfigDict()
    c.teacher.steps = 200  # step calls, i.e. micro-batches
    c.student = ml_collections.ConfigDict()
    c.student.steps = 200

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100
    c.checkpoint.max_to_keep = 2

    # Device mesh (reft_jax.runtime.parallel): sizes of the named axes, -1 = the devices the others leave.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data parallel: whole model per device, rows split
    c.mesh.fsdp = 1  # data parallel with weights and optimizer state split too (ZeRO-3)
    c.mesh.tensor = 1  # tensor parallel: heads, MLP columns and vocabulary split
    c.mesh.plan_memory = False  # before training, print each compiled step's memory per device; fail if too big

    # Multi-host runs (jax.distributed): one process per host, all running the same command.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # host:port of process 0; "" = single process or auto-detected
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.auto_detect = True  # initialise from the environment on TPU pods and under Slurm

    c.logging = ml_collections.ConfigDict()
    c.logging.every = 10
    c.logging.tensorboard = True
    c.logging.wandb = False
    c.logging.progress = True

    # `reft-jax bench` (reft_jax.bench): the same steps timed in JAX and PyTorch on random-init model.init.
    c.bench = ml_collections.ConfigDict()
    c.bench.frameworks = ("jax", "torch")
    c.bench.torch_variants = ("eager", "compile")  # PyTorch eager and torch.compile of the loss
    c.bench.steps = ("student", "teacher")
    c.bench.finetune = ("full", "lora")  # "lora" uses model.lora (rank > 0)
    c.bench.batch_size = 4  # rows of each batch (the student step runs a user and an alignment batch)
    c.bench.seq_len = 512
    c.bench.warmup = 2  # untimed calls, the first of which compiles
    c.bench.iters = 5  # timed calls per round: median and spread are reported
    # Rounds of every case, the frameworks interleaved (JAX, PyTorch eager, torch.compile, each in its own warm
    # process): the JAX/PyTorch ratio gets a confidence interval over rounds. 1 = each framework alone, one case
    # at a time (a GPU: two warm frameworks would share its memory).
    c.bench.rounds = 1
    # Compile the JAX steps for the shapes and report XLA's memory analysis only: nothing is allocated or run,
    # so an 8B step's memory can be read on a laptop.
    c.bench.compile_only = False
    c.bench.profile_dir = ""  # a folder: each JAX case's first round ends with a profile of 2 steps there
    c.bench.peak_flops = 0.0  # device peak FLOP/s for MFU; 0 = the measured matmul throughput
    c.bench.same_weights = False  # both frameworks load one random init (costs a checkpoint write)
    return c

