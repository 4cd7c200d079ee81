#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, in order of priority, each logged and copied to OUT as soon as it
# ends (a session cut short keeps what it measured). Run from the checkout on a machine with one CUDA GPU and
# jax[cuda], torch (CUDA), transformers, peft and ml-collections installed:
#   OUT=runs/gpu launch/gpu_session.sh jax     # cuDNN check, JAX steps at 4 x 2048 (1B, 8B), memory, profiles
#   OUT=runs/gpu launch/gpu_session.sh torch   # PyTorch eager and torch.compile at the same shapes
set -uo pipefail
part=${1:-jax}
OUT=${OUT:-runs/gpu_session}
work=${WORK:-/tmp/reft_jax_gpu}
mkdir -p "$OUT" "$work"
log="$OUT/session_$part.log"
cli='import sys; from reft_jax.cli import main; sys.exit(main())'  # reft-jax, without installing the package

# stage NAME SECONDS COMMAND...: runs one stage under a time limit, its output into the session log.
stage() {
  local name=$1 limit=$2; shift 2
  echo "== $(date -u +%H:%M:%S) $name" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}

# bench NAME SECONDS CONFIG ARGS...: one `reft-jax bench`, its bench.json copied to OUT/NAME.json.
bench() {
  local name=$1 limit=$2 config=$3; shift 3
  stage "$name" "$limit" python3 -c "$cli" bench --config "$config" --workdir "$work/$name" "$@"
  cp "$work/$name/bench.json" "$OUT/$name.json" 2>/dev/null
}

if [ "$part" = jax ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$log"
  python3 -c 'import jax, jaxlib, flax; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__)' \
    | tee -a "$log"
  stage cudnn 120 env JAX_PLATFORMS= python3 -m pytest -q -p no:cacheprovider tests/test_cudnn_attention.py
  bench student_1b 300 configs/bench_llama3_1b.py --config.bench.frameworks=jax --config.bench.steps=student \
    --config.bench.profile_dir="$work/profile"
  for f in "$work"/profile/*/op_times.json; do cp "$f" "$OUT/ops_$(basename "$(dirname "$f")").json"; done
  # Where a case did not fit, the same case with every block recomputed in the backward pass.
  if grep -q '"error"' "$OUT/student_1b.json" 2>/dev/null; then
    bench student_1b_remat 200 configs/bench_llama3_1b.py --config.bench.frameworks=jax --config.bench.steps=student \
      --config.model.remat=full
  fi
  bench student_8b_lora 300 configs/bench_llama3_8b.py:lora --config.bench.frameworks=jax --config.bench.steps=student
  bench teacher_1b 200 configs/bench_llama3_1b.py --config.bench.frameworks=jax --config.bench.steps=teacher
  # XLA's memory analysis of the same steps with the whole [B, T, V] logits (loss_block 0): the "before".
  bench memory_1b_plain 200 configs/bench_llama3_1b.py --config.bench.steps=student --config.bench.compile_only=True \
    --config.model.loss_block=0
  bench memory_8b_plain 200 configs/bench_llama3_8b.py:lora --config.bench.steps=student \
    --config.bench.compile_only=True --config.model.loss_block=0
else
  bench torch_student_1b 400 configs/bench_llama3_1b.py --config.bench.frameworks=torch --config.bench.steps=student
fi
