# shellcheck shell=bash
# Shared by the launchers: the pipeline stages that one `reft-jax` invocation per stage runs.
# Usage (sourced): run_stages CONFIG WORKDIR [--config.a.b=value ...]; STAGES overrides the stage list.

STAGES=${STAGES:-"train-teacher filter finetune"}
# reft-jax's exit code when SIGTERM stopped a stage after a checkpoint (reft_jax.cli.PREEMPTED_EXIT): run again
# (requeue) and it goes on from there.
# shellcheck disable=SC2034  # read by the launchers that source this
PREEMPTED_EXIT=75

run_stages() {
  local config=$1 workdir=$2
  shift 2
  local stage
  for stage in $STAGES; do
    reft-jax "$stage" --config "$config" --workdir "$workdir" "$@"
  done
}
