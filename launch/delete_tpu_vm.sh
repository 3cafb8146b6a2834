#!/usr/bin/env bash
# Deletes a Cloud TPU VM (or the queued resource that holds it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: delete_tpu_vm.sh --name NAME --zone ZONE [--queued] [--quiet]
                        [--project P] [--dry-run]

Deletes the TPU VM NAME (all its workers and their local disks: logs under
~/drlih_logs go too; checkpoints in the gs:// workdir stay).

  --name NAME   TPU VM name.
  --zone ZONE   its zone.
  --queued      it was made with create_tpu_vm.sh --queued: delete the queued
                resource NAME and its TPU VM
                (`gcloud compute tpus queued-resources delete --force`).
  --quiet       do not ask for confirmation (passes --quiet to gcloud).
  --project P   Google Cloud project (default: gcloud config).
  --dry-run     print the gcloud command, do not run it.
USAGE
}

main() {
  local name="" zone="" quiet=0 queued=0
  parse_flags \
    --name name \
    --zone zone \
    --queued queued=1 \
    --quiet quiet=1 \
    -q quiet=1 \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  need_gcloud

  local -a cmd
  if ((queued)); then
    cmd=(compute tpus queued-resources delete "${name}" "--zone=${zone}" --force)
  else
    cmd=(compute tpus tpu-vm delete "${name}" "--zone=${zone}")
  fi
  if ((quiet)); then
    cmd+=(--quiet)
  fi
  run_gcloud "${cmd[@]}"
}

main "$@"
