#!/usr/bin/env bash
# Issue 16 on 2 CPU cores: cifar10-2, 32 bits, drlih and triplet, seeds 0-2, each run trained until it stops
# improving (configs/cifar10_resnet.py "plateau": the 32-bit tie-aware mAP@all gains < 0.005 over the last
# fifth of the steps, at two evaluations in a row) or for 60 minutes of training, whichever comes first.
#
#   SEEDS="0 1 2" bash scripts/cifar10_plateau_cpu.sh        # trains (resumes) the runs, then collects
#   COLLECT_ONLY=1 COLLECT_SEEDS=0 bash scripts/cifar10_plateau_cpu.sh   # only the results of finished runs
#
# Each seed's drlih and triplet runs train side by side, one core each (taskset), single-threaded XLA, at
# low priority (nice): both objectives see the same conditions. The workdirs are exactly those of
# `python -m drlih_jax.experiments` (printed by its --dry-run), so the last step below finds the finished
# runs (their DONE files), evaluates the LSH/ITQ baselines on each run's own feature, and writes
# runs/c102_plateau/results_cifar10-2.json and RESULTS.md. A run stopped midway (SIGTERM, or `touch
# runs/c102_plateau/STOP` to stop after the current seed) resumes from its checkpoint when this script is
# started again; train_seconds (what the 60 minutes count) is the time of the training sessions, their
# evaluations included, summed over sessions: the time between sessions does not count.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=runs/c102_plateau
CONFIG=configs/cifar10_resnet.py:cifar10-2,plateau
ROOT=${OUT}/data/cifar10
PY=${PYTHON:-python}
mkdir -p "${OUT}/logs"
if [ ! -f "${ROOT}/.extracted" ]; then
  mkdir -p "${ROOT}" && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "${ROOT}" \
    && echo "../shared/data/cifar10-jpeg.tar.gz" > "${ROOT}/.extracted"
fi
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 JAX_PLATFORMS=cpu
if [ -z "${COLLECT_ONLY:-}" ]; then
  for seed in ${SEEDS:-0 1 2}; do
    pids=()
    core=0
    for objective in drlih triplet; do
      nice -n 10 taskset -c "${core}" "${PY}" -m drlih_jax.main --config="${CONFIG}" \
        --workdir="${OUT}/cifar10-2/${objective}_32b_s${seed}" --config.dataset.root="${ROOT}" \
        --config.objective="${objective}" --config.seed="${seed}" --config.hash.bits=32 \
        >> "${OUT}/logs/${objective}_s${seed}.log" 2>&1 &
      pids+=($!)
      core=$((core + 1))
    done
    echo "$(date -u +%FT%TZ) seed ${seed}: pids ${pids[*]}" >> "${OUT}/logs/driver.log"
    wait "${pids[@]}"
    if [ -f "${OUT}/STOP" ]; then
      echo "$(date -u +%FT%TZ) stopped after seed ${seed}" >> "${OUT}/logs/driver.log"
      break
    fi
  done
fi
# Collect: finished runs are read, not trained again (a run without DONE would be trained here, serially;
# --seeds names only the seeds whose runs have ended).
SEEDS_DONE=${COLLECT_SEEDS:-0,1,2}
"${PY}" -m drlih_jax.experiments --config="${CONFIG}" --config.dataset.root="${ROOT}" --bits=32 \
  --objectives=drlih,triplet --seeds="${SEEDS_DONE}" --out="${OUT}" \
  --label="CPU, until the stopping rule: cifar10-2, 32 bits, seeds ${SEEDS_DONE} (tiny ResNet 16-32-64, batch 100, at most 60 min)"
