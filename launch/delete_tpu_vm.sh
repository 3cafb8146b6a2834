#!/usr/bin/env bash
# Deletes a Cloud TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: delete_tpu_vm.sh --name NAME --zone ZONE [--quiet] [--project P] [--dry-run]

Deletes the TPU VM NAME (all its workers and their local disks: logs under
~/drlih_logs go too; checkpoints in the gs:// workdir stay).

  --name NAME   TPU VM name.
  --zone ZONE   its zone.
  --quiet       do not ask for confirmation (passes --quiet to gcloud).
  --project P   Google Cloud project (default: gcloud config).
  --dry-run     print the gcloud command, do not run it.
EOF
}

main() {
  local name="" zone="" quiet=0
  parse_flags \
    --name name \
    --zone zone \
    --quiet quiet=1 \
    -q quiet=1 \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  need_gcloud

  if ((quiet)); then
    run_gcloud compute tpus tpu-vm delete "${name}" "--zone=${zone}" --quiet
  else
    run_gcloud compute tpus tpu-vm delete "${name}" "--zone=${zone}"
  fi
}

main "$@"
