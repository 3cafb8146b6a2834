#!/usr/bin/env bash
# Shows the training log of one worker of a TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: logs.sh --name NAME --zone ZONE [--worker N] [--run-name RUN]
               [--lines K] [--no-follow] [--project P] [--dry-run]

Prints the last K lines of ~/drlih_logs/RUN.log on worker N of the TPU VM NAME
and follows it (tail -F) until Ctrl-C; the training keeps running.

  --name NAME      TPU VM name.
  --zone ZONE      its zone.
  --worker N       worker index (default 0; on a multi-host slice every worker
                   logs, worker 0 is the one that writes summaries).
  --run-name RUN   log name given to train.sh/eval.sh (default train).
  --lines K        lines of history to print first (default 100).
  --no-follow      print and exit instead of following.
  --project P      Google Cloud project (default: gcloud config).
  --dry-run        print the gcloud command, do not run it.
EOF
}

main() {
  local name="" zone="" worker="0" run_name="train" lines="100" follow=1
  parse_flags \
    --name name \
    --zone zone \
    --worker worker \
    --run-name run_name \
    --lines lines \
    --no-follow follow=0 \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  if [[ ! "${worker}" =~ ^[0-9]+$ ]]; then
    usage_error "--worker must be one worker index (0, 1, ...), got '${worker}'"
  fi
  if [[ ! "${lines}" =~ ^[0-9]+$ ]]; then
    usage_error "--lines must be a non-negative integer, got '${lines}'"
  fi
  check_simple_name --run-name "${run_name}"
  need_gcloud

  local tail_cmd="tail -n ${lines}"
  if ((follow)); then
    tail_cmd+=" -F"
  fi
  tpu_ssh "${name}" "${zone}" "${worker}" "${tail_cmd} ${REMOTE_LOGS}/${run_name}.log"
}

main "$@"
