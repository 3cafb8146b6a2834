#!/usr/bin/env bash
# Stops a training job started by train.sh (SIGTERM, then waits for it to exit).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: stop.sh --name NAME --zone ZONE [--run-name RUN] [--timeout S]
               [--worker all|N] [--project P] [--dry-run]

Sends SIGTERM to the process in ~/drlih_logs/RUN.pid on every worker
(default --worker=all) of the TPU VM NAME and waits up to S seconds for it to
exit. The trainer saves a checkpoint on SIGTERM; rerunning the same train.sh
command resumes from it.

  --name NAME      TPU VM name.
  --zone ZONE      its zone.
  --run-name RUN   name given to train.sh (default train).
  --timeout S      seconds to wait for the exit (default 600).
  --worker all|N   workers to signal (default all; a multi-host job needs all).
  --project P      Google Cloud project (default: gcloud config).
  --dry-run        print the gcloud command, do not run it.
EOF
}

# Prints the remote command that signals the job and waits for it.
# Usage: remote_stop_command RUN TIMEOUT
remote_stop_command() {
  local run_name="$1" timeout="$2"
  printf '%s' "p=${REMOTE_LOGS}/${run_name}.pid;"
  printf '%s' " if [ -f \"\$p\" ] && kill -0 \"\$(cat \"\$p\")\" 2>/dev/null; then"
  printf '%s' " pid=\$(cat \"\$p\"); kill -TERM \"\$pid\";"
  printf '%s' " echo \"\$(hostname): sent SIGTERM to \$pid\"; waited=0;"
  printf '%s' " while kill -0 \"\$pid\" 2>/dev/null && [ \"\$waited\" -lt ${timeout} ]; do"
  printf '%s' " sleep 1; waited=\$((waited + 1)); done;"
  printf '%s' " if kill -0 \"\$pid\" 2>/dev/null; then"
  printf '%s' " echo \"\$(hostname): pid \$pid still running after ${timeout} s\" >&2; exit 1; fi;"
  printf '%s' " echo \"\$(hostname): stopped\"; else echo \"\$(hostname): not running\"; fi"
}

main() {
  local name="" zone="" run_name="train" timeout="600" worker="all"
  parse_flags \
    --name name \
    --zone zone \
    --run-name run_name \
    --timeout timeout \
    --worker worker \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  if [[ ! "${timeout}" =~ ^[0-9]+$ ]]; then
    usage_error "--timeout must be a non-negative integer, got '${timeout}'"
  fi
  check_worker --worker "${worker}"
  check_simple_name --run-name "${run_name}"
  need_gcloud

  tpu_ssh "${name}" "${zone}" "${worker}" "$(remote_stop_command "${run_name}" "${timeout}")"
}

main "$@"
