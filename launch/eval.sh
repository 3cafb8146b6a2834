#!/usr/bin/env bash
# Evaluates (or encodes with) a checkpoint on a TPU VM, in the foreground.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: eval.sh --name NAME --zone ZONE --workdir gs://BUCKET/RUN
               [--step N] [--mode eval|encode] [--worker 0|all]
               [--config FILE] [--tfds-data-dir gs://...] [--run-name RUN]
               [--project P] [--dry-run] [--config.KEY=VALUE ...] [-- ARG ...]

Runs, on worker 0 (default) of the TPU VM NAME, in the foreground:

  ~/drlih_venv/bin/python -m drlih_jax.main --config=FILE --workdir=WORKDIR \
      --mode=eval --distributed=on [--step=N] [--config.KEY=VALUE ...] [ARG ...]

restoring the orbax checkpoint of step N (default: the latest) from WORKDIR;
output is shown and appended to ~/drlih_logs/RUN.log (default eval.log).
It refuses to start while a job started by train.sh holds the TPU (stop it
first with stop.sh).

Single host vs. multi-host: a checkpoint saved by a multi-host run restores on
one host. On a single-host TPU VM (v4-8, v5litepod-8, ...) worker 0 is the
whole slice. On a multi-host slice (v5litepod-16, v4-16, ...), a JAX program
started on one worker alone waits for the others; there, pass --worker=all
(eval runs as a multi-host job), or evaluate on a separate single-host TPU VM
pointed at the same gs:// workdir. --distributed=on makes every process call
jax.distributed.initialize() (on a single-host VM: a run of one process).

  --name NAME            TPU VM name.
  --zone ZONE            its zone.
  --workdir gs://...     the training workdir (checkpoints).
  --step N               checkpoint step (default: latest).
  --mode eval|encode     drlih_jax.main mode (default eval).
  --worker 0|all         where to run (default 0).
  --config FILE          config file (default configs/cifar.py); use the one
                         the run was trained with.
  --tfds-data-dir DIR    exported as TFDS_DATA_DIR on the workers.
  --run-name RUN         log name (default eval).
  --config.KEY=VALUE     config override, passed through (repeatable).
  -- ARG ...             everything after -- is passed to drlih_jax.main.
  --project P            Google Cloud project (default: gcloud config).
  --dry-run              print the gcloud command, do not run it.
EOF
}

# Prints the remote command that runs drlih_jax.main in the foreground.
# Usage: remote_eval_command RUN TFDS_DATA_DIR MAIN_ARG...
remote_eval_command() {
  local run_name="$1" tfds_dir="$2"
  shift 2
  local log="${REMOTE_LOGS}/${run_name}.log"
  printf '%s' "set -o pipefail; mkdir -p ${REMOTE_LOGS};"
  printf '%s' " for f in ${REMOTE_LOGS}/*.pid; do"
  printf '%s' " if [ -f \"\$f\" ] && kill -0 \"\$(cat \"\$f\")\" 2>/dev/null; then"
  printf '%s' " echo \"\$(hostname): \$f is alive, the TPU is busy (launch/stop.sh stops it)\" >&2;"
  printf '%s' " exit 1; fi; done;"
  printf '%s' " $(remote_env_prefix "${tfds_dir}")"
  printf '%s' " $(remote_main_command "$@") 2>&1 | tee -a ${log}"
}

main() {
  local name="" zone="" workdir="" config="configs/cifar.py" tfds_dir=""
  local run_name="eval" step="" mode="eval" worker="0"
  parse_flags \
    --name name \
    --zone zone \
    --workdir workdir \
    --step step \
    --mode mode \
    --worker worker \
    --config config \
    --tfds-data-dir tfds_dir \
    --run-name run_name \
    '--config.*' EXTRA_ARGS \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  require_flag --workdir "${workdir}"
  if [[ "${mode}" != eval && "${mode}" != encode ]]; then
    usage_error "--mode must be eval or encode, got '${mode}'"
  fi
  if [[ -n "${step}" && ! "${step}" =~ ^[0-9]+$ ]]; then
    usage_error "--step must be a non-negative integer, got '${step}'"
  fi
  check_worker --worker "${worker}"
  check_simple_name --run-name "${run_name}"
  need_gcloud

  local -a main_args=("--config=${config}" "--workdir=${workdir}" "--mode=${mode}" --distributed=on)
  if [[ -n "${step}" ]]; then
    main_args+=("--step=${step}")
  fi
  tpu_ssh "${name}" "${zone}" "${worker}" "$(remote_eval_command "${run_name}" \
    "${tfds_dir}" "${main_args[@]}" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
}

main "$@"
