#!/usr/bin/env bash
# Creates a Cloud TPU VM (single-host or multi-host slice) with gcloud.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: create_tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE
                        [--version RUNTIME] [--spot]
                        [--queued [--valid-until-duration D] [--no-wait] [--poll S]]
                        [--project P] [--dry-run]

Creates a TPU VM with `gcloud compute tpus tpu-vm create`, or, with --queued,
requests one with `gcloud compute tpus queued-resources create` and waits
until it is provisioned.

  --name NAME              TPU VM name (e.g. drlih-v4); with --queued also the
                           queued resource's name.
  --zone ZONE              zone with capacity for TYPE (e.g. us-central2-b for
                           v4, us-west4-a or us-central1-a for v5litepod).
  --accelerator-type TYPE  e.g. v4-8 (1 host), v4-32 (4 hosts), v5litepod-8
                           (1 host), v5litepod-16 (4 hosts), v5litepod-64
                           (16 hosts), v6e-8.
  --version RUNTIME        TPU software (runtime) version. Default by family:
                           v2/v3/v4 -> tpu-ubuntu2204-base,
                           v5litepod (v5e) -> v2-alpha-tpuv5-lite,
                           v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e.
  --spot                   Spot capacity (cheap, can be preempted at any time;
                           a preempted Spot TPU must be deleted and recreated).
  --queued                 use a queued resource (named NAME, node id NAME):
                           the request waits for capacity instead of failing
                           when the zone has none. This script then polls
                           `gcloud compute tpus queued-resources describe`
                           until the state is ACTIVE (fails on FAILED or
                           SUSPENDED). Delete with delete_tpu_vm.sh --queued.
  --valid-until-duration D with --queued: give up the request if it is not
                           provisioned within D (e.g. 6h, 2d).
  --no-wait                with --queued: return once the request is made.
  --poll S                 with --queued: seconds between state checks
                           (default 30).
  --project P              Google Cloud project (default: gcloud config).
  --dry-run                print the gcloud commands, do not run them.
USAGE
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

# Polls the queued resource NAME until it is ACTIVE; fails when it ends up
# FAILED, SUSPENDED or deleted. Under --dry-run, prints the poll command once.
# Usage: wait_until_active NAME ZONE POLL
wait_until_active() {
  local name="$1" zone="$2" poll="$3" state last=""
  state_command "${name}" "${zone}" 1
  if ((DRY_RUN)); then
    run_gcloud "${STATE_CMD[@]}"
    return 0
  fi
  while true; do
    state="$(slice_state "${name}" "${zone}" 1)"
    case "${state}" in
      ACTIVE)
        log_status "queued resource ${name} is ACTIVE"
        return 0
        ;;
      FAILED | SUSPENDED | SUSPENDING | MISSING)
        die "queued resource ${name} is ${state}; see gcloud compute tpus queued-resources describe ${name} --zone=${zone}"
        ;;
      *)
        if [[ "${state}" != "${last}" ]]; then
          log_status "queued resource ${name} is ${state}; waiting for ACTIVE"
          last="${state}"
        fi
        ;;
    esac
    sleep "${poll}"
  done
}

main() {
  local name="" zone="" accelerator_type="" version="" spot=0 queued=0
  local valid_until="" wait=1 poll=30
  parse_flags \
    --name name \
    --zone zone \
    --accelerator-type accelerator_type \
    --version version \
    --spot spot=1 \
    --queued queued=1 \
    --valid-until-duration valid_until \
    --no-wait wait=0 \
    --poll poll \
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
  check_count --poll "${poll}"
  if ((!queued)) && [[ -n "${valid_until}" || "${wait}" == 0 ]]; then
    usage_error "--valid-until-duration and --no-wait need --queued"
  fi
  need_gcloud

  local -a cmd
  if ((queued)); then
    cmd=(compute tpus queued-resources create "${name}" "--zone=${zone}" "--node-id=${name}"
      "--accelerator-type=${accelerator_type}" "--runtime-version=${version}")
    if [[ -n "${valid_until}" ]]; then
      cmd+=("--valid-until-duration=${valid_until}")
    fi
  else
    cmd=(compute tpus tpu-vm create "${name}" "--zone=${zone}"
      "--accelerator-type=${accelerator_type}" "--version=${version}")
  fi
  if ((spot)); then
    cmd+=(--spot)
  fi
  run_gcloud "${cmd[@]}"
  if ((queued && wait)); then
    wait_until_active "${name}" "${zone}" "${poll}"
  fi
}

main "$@"
