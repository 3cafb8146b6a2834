#!/usr/bin/env bash
# Starts drlih_jax training in the background on every worker of a TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: train.sh --name NAME --zone ZONE --workdir gs://BUCKET/RUN
                [--config FILE] [--tfds-data-dir gs://...] [--run-name RUN]
                [--project P] [--dry-run] [--config.KEY=VALUE ...] [-- ARG ...]

Runs, on every worker (--worker=all) of the TPU VM NAME, in the background
under nohup:

  ~/drlih_venv/bin/python -m drlih_jax.main --config=FILE --workdir=WORKDIR \
      --mode=train [--config.KEY=VALUE ...] [ARG ...]

from ~/drlih_jax, with output appended to ~/drlih_logs/RUN.log and the process
id in ~/drlih_logs/RUN.pid on each worker. It refuses to start while that pid
is alive. All workers must run the same command (multi-host JAX).
Rerunning the same command after a preemption or a stop resumes from the
latest checkpoint in WORKDIR.

  --name NAME            TPU VM name.
  --zone ZONE            its zone.
  --workdir gs://...     checkpoints and summaries; must be on GCS (shared by
                         all workers, survives the VM).
  --config FILE          config file, relative to the source tree
                         (default configs/cifar.py).
  --tfds-data-dir DIR    exported as TFDS_DATA_DIR on the workers.
  --run-name RUN         name of the log and pid files (default train).
  --config.KEY=VALUE     config override, passed through (repeatable).
  -- ARG ...             everything after -- is passed to drlih_jax.main.
  --project P            Google Cloud project (default: gcloud config).
  --dry-run              print the gcloud command, do not run it.
EOF
}

# Prints the remote command that starts training in the background.
# Usage: remote_train_command RUN TFDS_DATA_DIR MAIN_ARG...
remote_train_command() {
  local run_name="$1" tfds_dir="$2"
  shift 2
  local log="${REMOTE_LOGS}/${run_name}.log" pid="${REMOTE_LOGS}/${run_name}.pid"
  printf '%s' "mkdir -p ${REMOTE_LOGS};"
  printf '%s' " if [ -f ${pid} ] && kill -0 \"\$(cat ${pid})\" 2>/dev/null; then"
  printf '%s' " echo \"\$(hostname): already running (pid \$(cat ${pid}))\" >&2; exit 1; fi;"
  printf '%s' " $(remote_env_prefix "${tfds_dir}")"
  printf '%s' " echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) start on \$(hostname)\" >> ${log};"
  printf '%s' " nohup $(remote_main_command "$@") >> ${log} 2>&1 < /dev/null &"
  printf '%s' " echo \$! > ${pid}; echo \"\$(hostname): started pid \$!, log ${log}\""
}

main() {
  local name="" zone="" workdir="" config="configs/cifar.py" tfds_dir=""
  local run_name="train"
  parse_flags \
    --name name \
    --zone zone \
    --workdir workdir \
    --config config \
    --tfds-data-dir tfds_dir \
    --run-name run_name \
    '--config.*' EXTRA_ARGS \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  require_flag --workdir "${workdir}"
  if [[ "${workdir}" != gs://?* ]]; then
    usage_error "--workdir must be a gs:// path (workers share it and it outlives a preempted VM), got '${workdir}'"
  fi
  check_simple_name --run-name "${run_name}"
  need_gcloud

  tpu_ssh "${name}" "${zone}" all "$(remote_train_command "${run_name}" \
    "${tfds_dir}" "--config=${config}" "--workdir=${workdir}" --mode=train \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
}

main "$@"
