"""Subprocess entry for the scale-out tests: trains the small digits config and saves the final params.

    python tests/helpers/run_training.py WORKDIR OUT.npz [key=value ...]

Environment: XLA_FLAGS may force several host devices; DRLIH_COORDINATOR/DRLIH_NUM_PROCESSES/
DRLIH_PROCESS_ID make it one process of a jax.distributed run on CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top

if os.environ.get("DRLIH_COORDINATOR"):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=os.environ["DRLIH_COORDINATOR"],
                             num_processes=int(os.environ["DRLIH_NUM_PROCESSES"]),
                             process_id=int(os.environ["DRLIH_PROCESS_ID"]))

import numpy as np  # pylint: disable=g-import-not-at-top

from tests import test_train  # pylint: disable=g-import-not-at-top
from drlih_jax import train  # pylint: disable=g-import-not-at-top


def _parse(value):
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value


def main():
  workdir, out = sys.argv[1], sys.argv[2]
  overrides = {k: _parse(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
  config = test_train.small_config(**overrides)
  state = train.train_and_evaluate(config, workdir)
  leaves = jax.tree.leaves(jax.device_get(state.params))
  if jax.process_index() == 0:
    np.savez(out, *[np.asarray(x) for x in leaves], step=np.asarray(jax.device_get(state.step)))
  print(f"done step {int(jax.device_get(state.step))} process {jax.process_index()}", flush=True)


if __name__ == "__main__":
  main()
