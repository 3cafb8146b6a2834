#!/usr/bin/env bash
# Installs drlih_jax and JAX for TPU on every worker of a TPU VM.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: install.sh --name NAME --zone ZONE [--repo URL [--ref REF] | --src DIR]
                  [--constraints FILE | --no-constraints] [--python-version V]
                  [--jax-spec SPEC] [--project P] [--dry-run]

Installs the project on every worker (--worker=all) of the TPU VM NAME into a
virtual environment ~/drlih_venv (Python V, made with uv, because the TPU VM
images ship Python 3.10 and drlih_jax needs >= 3.11), with the source in
~/drlih_jax. On each worker it runs

  uv pip install --python ~/drlih_venv/bin/python --upgrade \
      -c ~/drlih_jax/constraints.txt "jax[tpu]" -e ~/drlih_jax"[weights]"

so the workers get the exact versions CI tested (constraints.txt pins jax and
jaxlib among the others; libtpu is not in it and comes from the pin that
jax's own `tpu` extra carries for that jax version), plus the `weights` extra
(safetensors, for config.model.pretrained). Rerunning replaces the source and
reinstalls.

Source, one of:
  (default)        copy the local checkout: the files git lists in DIR (tracked
                   and untracked-but-not-ignored, so uncommitted edits go too)
                   are packed into $TMPDIR/drlih_jax-src.tar.gz, copied with
                   `gcloud compute tpus tpu-vm scp --worker=all` and unpacked.
  --src DIR        the checkout to copy (default: the one holding this script).
  --repo URL       `git clone URL` on every worker instead of copying;
  --ref REF        with --repo: branch, tag or commit to check out.

  --name NAME            TPU VM name.
  --zone ZONE            its zone.
  --constraints FILE     constraints file, relative to the source tree
                         (default constraints.txt); the install fails when the
                         source has none.
  --no-constraints       install without constraints (newest versions).
  --python-version V     Python for the venv (default 3.11, the version the
                         constraints were made for).
  --jax-spec SPEC        pip requirement for JAX (default 'jax[tpu]'; with
                         constraints, a version other than the pinned one
                         fails to resolve: use --no-constraints with it).
  --project P            Google Cloud project (default: gcloud config).
  --dry-run              print the commands, do not run them.
EOF
}

# Prints the remote shell command that installs the project on a worker.
# Usage: remote_install_command FETCH_SNIPPET PYTHON_VERSION JAX_SPEC CONSTRAINTS
# (CONSTRAINTS: a path relative to the source tree, or "" for none).
remote_install_command() {
  local fetch="$1" python_version="$2" jax_spec="$3" constraints="$4"
  local venv_python="${REMOTE_VENV}/bin/python" constraint_args=""
  printf '%s' "set -euo pipefail;"
  printf '%s' " export PATH=\"\$HOME/.local/bin:\$PATH\";"
  printf '%s' " command -v uv >/dev/null || python3 -m pip install --user --quiet --upgrade uv;"
  printf '%s' " ${fetch}"
  if [[ -n "${constraints}" ]]; then
    local file
    file="${REMOTE_SRC}/$(quote_word "${constraints}")"
    printf '%s' " if [ ! -f ${file} ]; then echo \"\$(hostname): ${file} is missing"
    printf '%s' " (install.sh --no-constraints installs without it)\" >&2; exit 1; fi;"
    constraint_args=" -c ${file}"
  fi
  printf '%s' " uv venv --allow-existing --python $(quote_word "${python_version}") ${REMOTE_VENV};"
  printf '%s' " uv pip install --python ${venv_python} --upgrade${constraint_args}"
  printf '%s' " $(quote_word "${jax_spec}") -e ${REMOTE_SRC}\"[weights]\";"
  printf '%s' " ${venv_python} -c \"import jax, drlih_jax; print(jax.__version__)\""
}

main() {
  local name="" zone="" repo="" ref="" src="" python_version="3.11"
  local jax_spec="jax[tpu]" constraints="constraints.txt" use_constraints=1
  parse_flags \
    --name name \
    --zone zone \
    --repo repo \
    --ref ref \
    --src src \
    --python-version python_version \
    --jax-spec jax_spec \
    --constraints constraints \
    --no-constraints use_constraints=0 \
    -- "$@"
  require_flag --name "${name}"
  require_flag --zone "${zone}"
  if [[ -n "${ref}" && -z "${repo}" ]]; then
    usage_error "--ref needs --repo (the local-copy mode copies the working tree as it is)"
  fi
  if [[ -n "${repo}" && -n "${src}" ]]; then
    usage_error "give either --repo or --src, not both"
  fi
  if [[ ! "${python_version}" =~ ^3\.[0-9]+$ ]]; then
    usage_error "--python-version must look like 3.11, got '${python_version}'"
  fi
  if [[ ! "${constraints}" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ || "${constraints}" == *..* ]]; then
    usage_error "--constraints must be a path inside the source tree (like constraints.txt), got '${constraints}'"
  fi
  if ((!use_constraints)); then
    constraints=""
  fi
  need_gcloud

  local fetch
  if [[ -n "${repo}" ]]; then
    fetch="rm -rf ${REMOTE_SRC}; git clone --quiet $(quote_word "${repo}") ${REMOTE_SRC};"
    if [[ -n "${ref}" ]]; then
      fetch+=" git -C ${REMOTE_SRC} checkout --quiet $(quote_word "${ref}");"
    fi
  else
    if [[ -z "${src}" ]]; then
      src="$(dirname "${BASH_SOURCE[0]}")/.."
    fi
    if [[ ! -d "${src}/.git" && ! -f "${src}/.git" ]]; then
      usage_error "--src ${src} is not a git checkout (needed to list its files); use --repo URL"
    fi
    src="$(cd "${src}" && pwd -P)"
    local archive="${TMPDIR:-/tmp}/${REMOTE_ARCHIVE}"
    # git lists tracked and untracked-but-not-ignored files; tar skips the
    # ones deleted in the working tree (--ignore-failed-read).
    local pack
    pack="git -C $(quote_word "${src}") ls-files -z --cached --others --exclude-standard"
    pack+=" | tar -czf $(quote_word "${archive}") -C $(quote_word "${src}")"
    pack+=" --null --ignore-failed-read --no-recursion -T -"
    run bash -c "set -euo pipefail; ${pack}"
    run_gcloud compute tpus tpu-vm scp "${archive}" "${name}:${REMOTE_ARCHIVE}" \
      "--zone=${zone}" --worker=all
    fetch="rm -rf ${REMOTE_SRC}; mkdir -p ${REMOTE_SRC};"
    fetch+=" tar -xzf ~/${REMOTE_ARCHIVE} -C ${REMOTE_SRC}; rm -f ~/${REMOTE_ARCHIVE};"
  fi
  tpu_ssh "${name}" "${zone}" all \
    "$(remote_install_command "${fetch}" "${python_version}" "${jax_spec}" "${constraints}")"
}

main "$@"
