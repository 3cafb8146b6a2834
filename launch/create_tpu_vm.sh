#!/usr/bin/env bash
# Creates a Cloud TPU VM (single-host or multi-host slice) with gcloud.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: create_tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE
                        [--version RUNTIME] [--spot] [--project P] [--dry-run]

Creates a TPU VM with `gcloud compute tpus tpu-vm create`.

  --name NAME              TPU VM name (e.g. drlih-v4).
  --zone ZONE              zone with capacity for TYPE (e.g. us-central2-b for
                           v4, us-west4-a or us-central1-a for v5litepod).
  --accelerator-type TYPE  e.g. v4-8 (1 host), v5litepod-8 (1 host),
                           v5litepod-16 (4 hosts), v6e-8.
  --version RUNTIME        TPU software (runtime) version. Default by family:
                           v2/v3/v4 -> tpu-ubuntu2204-base,
                           v5litepod (v5e) -> v2-alpha-tpuv5-lite,
                           v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e.
  --spot                   create a Spot VM (cheap, can be preempted at any
                           time; a preempted Spot TPU must be deleted and
                           recreated).
  --project P              Google Cloud project (default: gcloud config).
  --dry-run                print the gcloud command, do not run it.
EOF
}

# Prints the default runtime version for an accelerator type, or nothing.
default_runtime_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) ;;
  esac
}

main() {
  local name="" zone="" accelerator_type="" version="" spot=0
  parse_flags \
    --name name \
    --zone zone \
    --accelerator-type accelerator_type \
    --version version \
    --spot spot=1 \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  require_flag --accelerator-type "${accelerator_type}"
  if [[ ! "${accelerator_type}" =~ ^[a-z0-9]+-[0-9]+$ ]]; then
    usage_error "--accelerator-type must look like v4-8 or v5litepod-16, got '${accelerator_type}'"
  fi
  if [[ -z "${version}" ]]; then
    version="$(default_runtime_version "${accelerator_type}")"
    if [[ -z "${version}" ]]; then
      usage_error "no default runtime version for --accelerator-type ${accelerator_type}; pass --version"
    fi
  fi
  need_gcloud

  local -a cmd=(compute tpus tpu-vm create "${name}" "--zone=${zone}"
    "--accelerator-type=${accelerator_type}" "--version=${version}")
  if ((spot)); then
    cmd+=(--spot)
  fi
  run_gcloud "${cmd[@]}"
}

main "$@"
