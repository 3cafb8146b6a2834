#!/usr/bin/env bash
# Starts drlih_jax training in the background on every worker of a TPU VM, and
# optionally supervises it until it is done (recreating a preempted slice).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: train.sh --name NAME --zone ZONE --workdir gs://BUCKET/RUN
                [--config FILE] [--tfds-data-dir gs://...] [--run-name RUN]
                [--supervise --accelerator-type TYPE [--version RUNTIME]
                 [--spot] [--queued] [--install-arg ARG ...] [--poll S]
                 [--max-restarts N] [--delete-when-done]]
                [--project P] [--dry-run] [--config.KEY=VALUE ...] [-- ARG ...]

Runs, on every worker (--worker=all) of the TPU VM NAME, in the background
under nohup:

  ~/drlih_venv/bin/python -m drlih_jax.main --config=FILE --workdir=WORKDIR \
      --mode=train --distributed=on [--config.KEY=VALUE ...] [ARG ...]

from ~/drlih_jax, with output appended to ~/drlih_logs/RUN.log and the process
id in ~/drlih_logs/RUN.pid on each worker. It refuses to start while that pid
is alive. All workers run the same command, and --distributed=on makes each
call jax.distributed.initialize(), which finds the slice's workers in the TPU
metadata (one process per worker; a single-host VM is a run of one process).
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
  --dry-run              print the gcloud commands, do not run them.

Supervisor (--supervise): stays in the foreground and, every S seconds,
  1. stops with status 0 when WORKDIR/DONE exists (the trainer writes it after
     the final step's checkpoint; delete it to train further in WORKDIR);
  2. reads the slice's state (gcloud compute tpus tpu-vm describe, or
     queued-resources describe with --queued);
  3. READY (queued: ACTIVE): checks the job on every worker; starts it when it
     runs nowhere, and when it runs on some workers only, stops it (stop.sh)
     and starts it again;
     PREEMPTED, TERMINATED or gone (queued: SUSPENDED, FAILED or gone):
     deletes the slice (delete_tpu_vm.sh), creates it again (create_tpu_vm.sh
     with the flags below), installs (install.sh) and starts the job, which
     resumes from the latest checkpoint in WORKDIR;
     any other state (CREATING, WAITING_FOR_RESOURCES, ...): waits.
  Each recreation and each restart counts; past N it gives up (status 1).
  Interrupting it (Ctrl-C) leaves the job running.
  Under --dry-run it prints the commands of those steps once.

  --supervise            run the supervisor.
  --accelerator-type T   for recreating the slice (required), as given to
                         create_tpu_vm.sh; likewise --version, --spot and
                         --queued (--queued: delete/create a queued resource).
  --install-arg ARG      passed to install.sh when reinstalling (repeatable),
                         e.g. --install-arg --repo=URL.
  --poll S               seconds between checks (default 60).
  --max-restarts N       give up after N recreations or restarts (default 10).
  --delete-when-done     delete the slice once WORKDIR/DONE exists.
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

# Prints the remote command that tells, on each worker, whether the job RUN is
# alive: one line `HOST: drlih-job running` or `HOST: drlih-job stopped`.
# Usage: remote_status_command RUN
remote_status_command() {
  local pid="${REMOTE_LOGS}/$1.pid"
  printf '%s' "if [ -f ${pid} ] && kill -0 \"\$(cat ${pid})\" 2>/dev/null;"
  printf '%s' " then echo \"\$(hostname): drlih-job running\";"
  printf '%s' " else echo \"\$(hostname): drlih-job stopped\"; fi"
}

# The supervised run, set by main.
SUP_NAME=""
SUP_ZONE=""
SUP_RUN=""
SUP_QUEUED=0
SUP_MARKER=""
SUP_START_COMMAND=""
SUP_CREATE_ARGS=()
SUP_INSTALL_ARGS=()

# Starts the job on every worker; returns gcloud's status.
start_job() {
  tpu_ssh "${SUP_NAME}" "${SUP_ZONE}" all "${SUP_START_COMMAND}"
}

# Prints the job's state over the workers: running (on every worker that
# answered, and all answered), stopped (on every worker that answered),
# partial (running on some, stopped on others) or unknown (no answer).
job_status() {
  local out rc=0
  out="$(gcloud_silent compute tpus tpu-vm ssh "${SUP_NAME}" "--zone=${SUP_ZONE}" --worker=all \
    "--command=$(remote_status_command "${SUP_RUN}")" </dev/null 2>/dev/null)" || rc=$?
  case "${out}" in
    *"drlih-job stopped"*"drlih-job running"* | *"drlih-job running"*"drlih-job stopped"*)
      echo partial
      ;;
    *"drlih-job stopped"*) echo stopped ;;
    *"drlih-job running"*)
      if ((rc == 0)); then
        echo running
      else
        echo unknown
      fi
      ;;
    *) echo unknown ;;
  esac
}

# Succeeds when WORKDIR/DONE exists.
marker_exists() {
  gcloud_silent storage ls "${SUP_MARKER}" >/dev/null 2>&1
}

# Prints what the supervisor does in a slice state: up, recreate or wait.
state_action() {
  if ((SUP_QUEUED)); then
    case "$1" in
      ACTIVE) echo up ;;
      SUSPENDED | FAILED | MISSING) echo recreate ;;
      *) echo wait ;;
    esac
  else
    case "$1" in
      READY) echo up ;;
      PREEMPTED | TERMINATED | MISSING) echo recreate ;;
      *) echo wait ;;
    esac
  fi
}

# Prints the commands of one supervisor round (under --dry-run).
supervise_dry_run() {
  local -a delete_args=(--name "${SUP_NAME}" --zone "${SUP_ZONE}" --quiet)
  if ((SUP_QUEUED)); then
    delete_args+=(--queued)
  fi
  run_gcloud storage ls "${SUP_MARKER}"
  state_command "${SUP_NAME}" "${SUP_ZONE}" "${SUP_QUEUED}"
  run_gcloud "${STATE_CMD[@]}"
  tpu_ssh "${SUP_NAME}" "${SUP_ZONE}" all "$(remote_status_command "${SUP_RUN}")"
  run_launch_script delete_tpu_vm.sh "${delete_args[@]}"
  run_launch_script create_tpu_vm.sh "${SUP_CREATE_ARGS[@]}"
  run_launch_script install.sh --name "${SUP_NAME}" --zone "${SUP_ZONE}" \
    ${SUP_INSTALL_ARGS[@]+"${SUP_INSTALL_ARGS[@]}"}
  start_job
}

# Runs the supervisor loop (see usage). Returns 0 once WORKDIR/DONE exists.
# Usage: supervise POLL MAX_RESTARTS DELETE_WHEN_DONE
supervise() {
  local poll="$1" max_restarts="$2" delete_when_done="$3"
  local restarts=0 started=0 needs_install=0 state action job
  local -a delete_args=(--name "${SUP_NAME}" --zone "${SUP_ZONE}" --quiet)
  if ((SUP_QUEUED)); then
    delete_args+=(--queued)
  fi
  while true; do
    if marker_exists; then
      log_status "${SUP_MARKER} exists: training is done"
      if ((delete_when_done)); then
        run_launch_script delete_tpu_vm.sh "${delete_args[@]}"
      fi
      return 0
    fi
    state="$(slice_state "${SUP_NAME}" "${SUP_ZONE}" "${SUP_QUEUED}")"
    action="$(state_action "${state}")"
    if [[ "${action}" == recreate ]]; then
      restarts=$((restarts + 1))
      if ((restarts > max_restarts)); then
        die "slice ${SUP_NAME} is ${state} and --max-restarts=${max_restarts} is used up; giving up"
      fi
      log_status "slice ${SUP_NAME} is ${state}: recreating it (restart ${restarts} of at most ${max_restarts})"
      if [[ "${state}" != MISSING ]] && ! run_launch_script delete_tpu_vm.sh "${delete_args[@]}"; then
        log_status "deleting ${SUP_NAME} failed; retrying in ${poll} s"
        sleep "${poll}"
        continue
      fi
      if ! run_launch_script create_tpu_vm.sh "${SUP_CREATE_ARGS[@]}"; then
        log_status "creating ${SUP_NAME} failed; retrying in ${poll} s"
        sleep "${poll}"
        continue
      fi
      needs_install=1
      action=up
    fi
    if [[ "${action}" == up ]]; then
      if ((needs_install)); then
        if ! run_launch_script install.sh --name "${SUP_NAME}" --zone "${SUP_ZONE}" \
          ${SUP_INSTALL_ARGS[@]+"${SUP_INSTALL_ARGS[@]}"}; then
          log_status "installing on ${SUP_NAME} failed; retrying in ${poll} s"
          sleep "${poll}"
          continue
        fi
        needs_install=0
        job=stopped
      else
        job="$(job_status)"
      fi
      case "${job}" in
        running)
          log_status "slice ${SUP_NAME} ${state}, job ${SUP_RUN} running"
          ;;
        stopped | partial)
          if marker_exists; then
            continue
          fi
          if ((started)) || [[ "${job}" == partial ]]; then
            restarts=$((restarts + 1))
            if ((restarts > max_restarts)); then
              die "job ${SUP_RUN} ${job} and --max-restarts=${max_restarts} is used up; giving up (see launch/logs.sh)"
            fi
            log_status "job ${SUP_RUN} is not running on every worker: restarting it (restart ${restarts} of at most ${max_restarts})"
          fi
          if [[ "${job}" == partial ]]; then
            run_launch_script stop.sh --name "${SUP_NAME}" --zone "${SUP_ZONE}" --run-name "${SUP_RUN}" ||
              log_status "stop.sh failed; starting anyway"
          fi
          log_status "starting job ${SUP_RUN} on every worker"
          if start_job; then
            started=1
          else
            log_status "starting the job failed; retrying in ${poll} s"
          fi
          ;;
        *)
          log_status "slice ${SUP_NAME} ${state}, workers did not answer; retrying in ${poll} s"
          ;;
      esac
    else
      log_status "slice ${SUP_NAME} is ${state}; waiting"
    fi
    sleep "${poll}"
  done
}

main() {
  local name="" zone="" workdir="" config="configs/cifar.py" tfds_dir=""
  local run_name="train" supervise=0 accelerator_type="" version="" spot=0 queued=0
  local poll="" max_restarts="" delete_when_done=0
  local -a install_args=()
  parse_flags \
    --name name \
    --zone zone \
    --workdir workdir \
    --config config \
    --tfds-data-dir tfds_dir \
    --run-name run_name \
    --supervise supervise=1 \
    --accelerator-type accelerator_type \
    --version version \
    --spot spot=1 \
    --queued queued=1 \
    --install-arg install_args+ \
    --poll poll \
    --max-restarts max_restarts \
    --delete-when-done delete_when_done=1 \
    '--config.*' EXTRA_ARGS \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  require_flag --workdir "${workdir}"
  if [[ "${workdir}" != gs://?* ]]; then
    usage_error "--workdir must be a gs:// path (workers share it and it outlives a preempted VM), got '${workdir}'"
  fi
  check_simple_name --run-name "${run_name}"
  if ((supervise)); then
    require_flag --accelerator-type "${accelerator_type}"
    check_count --poll "${poll:=60}"
    check_count --max-restarts "${max_restarts:=10}"
  elif [[ -n "${accelerator_type}${version}${poll}${max_restarts}" ]] ||
    ((spot || queued || delete_when_done || ${#install_args[@]})); then
    usage_error "--accelerator-type, --version, --spot, --queued, --install-arg, --poll, --max-restarts and --delete-when-done need --supervise"
  fi
  need_gcloud

  local command
  command="$(remote_train_command "${run_name}" "${tfds_dir}" "--config=${config}" \
    "--workdir=${workdir}" --mode=train --distributed=on ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
  if ((!supervise)); then
    tpu_ssh "${name}" "${zone}" all "${command}"
    return
  fi

  SUP_NAME="${name}"
  SUP_ZONE="${zone}"
  SUP_RUN="${run_name}"
  SUP_QUEUED="${queued}"
  SUP_MARKER="${workdir%/}/DONE"
  SUP_START_COMMAND="${command}"
  SUP_CREATE_ARGS=(--name "${name}" --zone "${zone}" --accelerator-type "${accelerator_type}")
  if [[ -n "${version}" ]]; then
    SUP_CREATE_ARGS+=(--version "${version}")
  fi
  if ((spot)); then
    SUP_CREATE_ARGS+=(--spot)
  fi
  if ((queued)); then
    SUP_CREATE_ARGS+=(--queued --poll "${poll}")
  fi
  SUP_INSTALL_ARGS=(${install_args[@]+"${install_args[@]}"})
  if ((DRY_RUN)); then
    supervise_dry_run
  else
    supervise "${poll}" "${max_restarts}" "${delete_when_done}"
  fi
}

main "$@"
