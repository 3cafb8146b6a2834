# shellcheck shell=bash
# The globals below are read by the scripts that source this file.
# shellcheck disable=SC2034
# Shared helpers for the Cloud TPU VM launch scripts. Source it, do not run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Every script defines a `usage` function (printed on --help and on argument
# errors) before calling the parsing helpers below. Globals set here:
#   DRY_RUN       1 under --dry-run: commands are printed, not executed.
#   PROJECT       value of --project ("" = gcloud's configured project).
#   FLAG_VALUE    value parsed by take_value.
#   FLAG_SHIFT    how many words the flag being parsed consumed.
#   FLAG_TABLE    the FLAG TARGET rows given to parse_flags.
#   EXTRA_ARGS    arguments passed through to drlih_jax.main (parse_flags).
#   LAUNCH_DIR    the folder holding these scripts (to run one from another).
#   STATE_CMD     gcloud arguments set by state_command.

# Where things live on every TPU VM worker (relative to the remote $HOME). The
# tilde is deliberately unexpanded here: the remote shell expands it.
# shellcheck disable=SC2088
REMOTE_SRC='~/drlih_jax'
# shellcheck disable=SC2088
REMOTE_VENV='~/drlih_venv'
# shellcheck disable=SC2088
REMOTE_LOGS='~/drlih_logs'
REMOTE_PYTHON="${REMOTE_VENV}/bin/python"
# Name of the source archive in the remote $HOME (install.sh, local-copy mode).
REMOTE_ARCHIVE='drlih_jax-src.tar.gz'

DRY_RUN=0
PROJECT=""
FLAG_VALUE=""
FLAG_SHIFT=0
FLAG_TABLE=()
EXTRA_ARGS=()
STATE_CMD=()
SCRIPT_NAME="$(basename "$0")"
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"

# Prints an error and the usage text to stderr, then exits with status 2.
usage_error() {
  printf '%s: error: %s\n\n' "${SCRIPT_NAME}" "$1" >&2
  usage >&2
  exit 2
}

# Prints an error (no usage text) to stderr, then exits with status 1.
die() {
  printf '%s: error: %s\n' "${SCRIPT_NAME}" "$1" >&2
  exit 1
}

# Parses the value of a flag given as `--flag value` or `--flag=value`.
# Call as `take_value "$@"` with the flag at $1; sets FLAG_VALUE, FLAG_SHIFT.
take_value() {
  local flag="$1"
  if [[ "${flag}" == *=* ]]; then
    FLAG_VALUE="${flag#*=}"
    FLAG_SHIFT=1
    flag="${flag%%=*}"
  elif (($# >= 2)) && [[ "$2" != --* ]]; then
    FLAG_VALUE="$2"
    FLAG_SHIFT=2
  else
    usage_error "flag ${flag} needs a value"
  fi
  if [[ -z "${FLAG_VALUE}" ]]; then
    usage_error "flag ${flag} needs a non-empty value"
  fi
}

# Fails with a usage error naming FLAG when VALUE is empty.
require_flag() {
  local flag="$1" value="$2"
  if [[ -z "${value}" ]]; then
    usage_error "missing required flag ${flag}"
  fi
}

# Handles the flags every script shares. Returns 1 when $1 is not one of them.
# Sets FLAG_SHIFT to the number of words consumed.
parse_common_flag() {
  case "$1" in
    --dry-run)
      DRY_RUN=1
      FLAG_SHIFT=1
      ;;
    --project | --project=*)
      take_value "$@"
      PROJECT="${FLAG_VALUE}"
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      return 1
      ;;
  esac
}

# Fails with a usage error for an unrecognized argument.
unknown_flag() {
  usage_error "unknown flag or argument: $1"
}

# Parses a script's arguments: first against its table of flags, then the
# common ones (parse_common_flag); anything else is a usage error. The table
# is given as FLAG TARGET rows before the `--` that precedes the arguments:
#
#   parse_flags --name name --spot spot=1 -- "$@"
#
# Rows:
#   --flag var        takes a value, `--flag V` or `--flag=V`, into var.
#   --flag var=VALUE  a switch (no value, exact match): sets var to VALUE.
#   --flag array+     repeatable: appends each value to the array `array`; the
#                     value may itself start with -- (`--flag --other=x`).
#   --config.* EXTRA_ARGS
#                     passes `--config.KEY=VALUE` overrides and every argument
#                     after `--` through, appended in order to EXTRA_ARGS.
# Variables are assigned with printf -v, so they can be the caller's locals;
# they must not be named like parse_table_flag's locals (row, row_flag,
# row_target). Rows are tried in order, before the common flags.
parse_flags() {
  FLAG_TABLE=()
  EXTRA_ARGS=()
  while (($# >= 2)) && [[ "$1" != -- ]]; do
    FLAG_TABLE+=("$1" "$2")
    shift 2
  done
  if [[ "${1-}" != -- ]]; then
    die "parse_flags: the flag table must hold FLAG TARGET pairs and end with --"
  fi
  shift
  while (($#)); do
    parse_table_flag "$@" || parse_common_flag "$@" || unknown_flag "$1"
    shift "${FLAG_SHIFT}"
  done
}

# Handles $1 when a row of FLAG_TABLE matches it; sets FLAG_SHIFT. Returns 1
# when no row matches.
parse_table_flag() {
  local row row_flag row_target
  for ((row = 0; row < ${#FLAG_TABLE[@]}; row += 2)); do
    row_flag="${FLAG_TABLE[row]}"
    row_target="${FLAG_TABLE[row + 1]}"
    if [[ "${row_flag}" == '--config.*' ]]; then
      if [[ "$1" == --config.* ]]; then
        check_config_override "$1"
        EXTRA_ARGS+=("$1")
        FLAG_SHIFT=1
        return 0
      elif [[ "$1" == -- ]]; then
        EXTRA_ARGS+=("${@:2}")
        FLAG_SHIFT=$#
        return 0
      fi
    elif [[ "${row_target}" == *+ ]]; then
      if [[ "$1" == "${row_flag}" || "$1" == "${row_flag}="* ]]; then
        if [[ "$1" != *=* ]] && (($# >= 2)); then
          FLAG_VALUE="$2"
          FLAG_SHIFT=2
        else
          take_value "$@"
        fi
        eval "${row_target%+}+=(\"\${FLAG_VALUE}\")"
        return 0
      fi
    elif [[ "${row_target}" == *=* ]]; then
      if [[ "$1" == "${row_flag}" ]]; then
        printf -v "${row_target%%=*}" '%s' "${row_target#*=}"
        FLAG_SHIFT=1
        return 0
      fi
    elif [[ "$1" == "${row_flag}" || "$1" == "${row_flag}="* ]]; then
      take_value "$@"
      printf -v "${row_target}" '%s' "${FLAG_VALUE}"
      return 0
    fi
  done
  return 1
}

# Validates a non-negative integer flag value.
check_count() {
  local flag="$1" value="$2"
  if [[ ! "${value}" =~ ^[0-9]+$ ]]; then
    usage_error "${flag} must be a non-negative integer, got '${value}'"
  fi
}

# Validates a TPU VM worker selector: `all` or a non-negative integer.
check_worker() {
  local flag="$1" value="$2"
  if [[ "${value}" != all && ! "${value}" =~ ^[0-9]+$ ]]; then
    usage_error "${flag} must be 'all' or a worker index (0, 1, ...), got '${value}'"
  fi
}

# Validates a name used for remote log/pid files.
check_simple_name() {
  local flag="$1" value="$2"
  if [[ ! "${value}" =~ ^[A-Za-z0-9._-]+$ ]]; then
    usage_error "${flag} must match [A-Za-z0-9._-]+, got '${value}'"
  fi
}

# Validates a `--config.key=value` override and fails on other shapes.
check_config_override() {
  local arg="$1"
  if [[ ! "${arg}" =~ ^--config\.[A-Za-z_][A-Za-z0-9_.]*=.*$ ]]; then
    usage_error "config overrides must look like --config.key=value, got '${arg}'"
  fi
}

# Prints one word quoted for a POSIX shell: bare when it is made of safe
# characters only; in double quotes when it holds none of $ ` \ " !;
# otherwise in single quotes (a ' becomes '\'').
quote_word() {
  local word="$1"
  local safe='^[A-Za-z0-9_@%+=:,./-]+$'
  local unsafe_in_double_quotes='[$`\\"!]'
  if [[ "${word}" =~ ${safe} ]]; then
    printf '%s' "${word}"
  elif [[ ! "${word}" =~ ${unsafe_in_double_quotes} ]]; then
    printf '"%s"' "${word}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Prints one argument in copy-pasteable form; `--flag=value` keeps the
# `--flag=` prefix bare and quotes only the value.
quote_arg() {
  local arg="$1"
  local flag_re='^(--[A-Za-z0-9][A-Za-z0-9._-]*=)(.*)$'
  if [[ "${arg}" =~ ${flag_re} ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word "${BASH_REMATCH[2]}"
  else
    quote_word "${arg}"
  fi
}

# Prints a command line: the arguments, each quoted, separated by spaces.
format_command() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote_arg "${arg}")"
  done
  printf '%s' "${out}"
}

# Prints `+ COMMAND` on stdout and, unless --dry-run, runs it.
run() {
  printf '+ %s\n' "$(format_command "$@")"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# Fails early (outside --dry-run) when gcloud is not on PATH.
need_gcloud() {
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk)"
  fi
}

# Runs `gcloud ARG...` through `run`, adding --project=P when --project was given.
run_gcloud() {
  if [[ -n "${PROJECT}" ]]; then
    run gcloud "$@" "--project=${PROJECT}"
  else
    run gcloud "$@"
  fi
}

# Runs REMOTE_COMMAND on the TPU VM workers of NAME through gcloud ssh.
# Usage: tpu_ssh NAME ZONE WORKER REMOTE_COMMAND
tpu_ssh() {
  local name="$1" zone="$2" worker="$3" command="$4"
  run_gcloud compute tpus tpu-vm ssh "${name}" "--zone=${zone}" \
    "--worker=${worker}" "--command=${command}"
}

# Prints the remote shell snippet that enters the source tree and exports the
# environment shared by train and eval (TFDS_DATA_DIR when given).
# Usage: remote_env_prefix TFDS_DATA_DIR
remote_env_prefix() {
  local tfds_dir="$1"
  local prefix="cd ${REMOTE_SRC}; export PYTHONUNBUFFERED=1;"
  if [[ -n "${tfds_dir}" ]]; then
    prefix+=" export TFDS_DATA_DIR=$(quote_word "${tfds_dir}");"
  fi
  printf '%s' "${prefix}"
}

# Prints the `python -m drlih_jax.main ARG...` command for the workers, with
# the arguments quoted for the remote shell.
# Usage: remote_main_command ARG...
remote_main_command() {
  printf '%s -m drlih_jax.main %s' "${REMOTE_PYTHON}" "$(format_command "$@")"
}

# Runs gcloud ARG... without printing it (for polling), adding --project=P when
# --project was given.
gcloud_silent() {
  if [[ -n "${PROJECT}" ]]; then
    gcloud "$@" "--project=${PROJECT}"
  else
    gcloud "$@"
  fi
}

# Prints a status line with a UTC time stamp: `[TIME] SCRIPT: MESSAGE`.
log_status() {
  printf '[%s] %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${SCRIPT_NAME}" "$1"
}

# Sets STATE_CMD to the gcloud arguments that print the state of the TPU VM
# NAME or, when QUEUED is 1, of the queued resource NAME.
# Usage: state_command NAME ZONE QUEUED
state_command() {
  local name="$1" zone="$2" queued="$3"
  if ((queued)); then
    STATE_CMD=(compute tpus queued-resources describe "${name}" "--zone=${zone}"
      "--format=value(state.state)")
  else
    STATE_CMD=(compute tpus tpu-vm describe "${name}" "--zone=${zone}"
      "--format=value(state)")
  fi
}

# Prints the state of the TPU VM (or queued resource) NAME as gcloud gives it
# (TPU VM: READY, CREATING, PREEMPTED, TERMINATED, ...; queued resource:
# WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ...), MISSING
# when gcloud answers NOT_FOUND, UNKNOWN when it fails otherwise.
# Usage: slice_state NAME ZONE QUEUED
slice_state() {
  local out err_file rc=0
  state_command "$@"
  err_file="$(mktemp)"
  out="$(gcloud_silent "${STATE_CMD[@]}" 2>"${err_file}")" || rc=$?
  out="${out//[[:space:]]/}"
  if ((rc == 0)) && [[ -n "${out}" ]]; then
    printf '%s\n' "${out}"
  elif grep -q NOT_FOUND "${err_file}"; then
    echo MISSING
  else
    echo UNKNOWN
  fi
  rm -f "${err_file}"
}

# Runs another script of launch/ with ARG... (plus --project and --dry-run
# when given here), printing it first as `+ bash PATH ARG...`. It runs under
# --dry-run too: then it only prints its own commands.
# Usage: run_launch_script SCRIPT ARG...
run_launch_script() {
  local script="$1"
  shift
  local -a cmd=(bash "${LAUNCH_DIR}/${script}" "$@")
  if [[ -n "${PROJECT}" ]]; then
    cmd+=("--project=${PROJECT}")
  fi
  if ((DRY_RUN)); then
    cmd+=(--dry-run)
  fi
  printf '+ %s\n' "$(format_command "${cmd[@]}")"
  "${cmd[@]}"
}
