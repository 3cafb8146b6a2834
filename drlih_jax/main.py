r"""Command line: train, evaluate or encode with a config file.

    python -m drlih_jax.main --config=configs/digits.py --workdir=runs/digits
    python -m drlih_jax.main --config=configs/digits.py --workdir=runs/digits --mode=eval [--step=N]
    python -m drlih_jax.main --config=configs/digits.py --workdir=runs/digits --mode=encode --split=database
Any config key can be overridden: --config.hash.bits=64 --config.objective=triplet.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from drlih_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "encode"], "What to do.")
flags.DEFINE_integer("step", None, "eval/encode: the checkpoint step (default: the latest).")
flags.DEFINE_string("split", "database", "encode: query, database or train.")
flags.DEFINE_string("output", None, "encode: output .npz path (default: <workdir>/codes_<split>_<step>.npz).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Multi-host start-up: auto initialises jax.distributed on Cloud TPU VMs and multi-host GKE "
                  "TPU pods; on always initialises (JAX detects the cluster); off never does. "
                  "See drlih_jax/distributed.py.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs JAX cannot detect (GPU clusters): host:port of process 0; give "
                    "--num_processes and --process_id with it.")
flags.DEFINE_integer("num_processes", None, "Multi-process: the number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of orbax (a dozen lines per checkpoint) so the training log stays readable."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _initialize_distributed():
  """Connects the processes of a multi-process run before any other JAX call.

  A contradictory or incomplete set of --distributed/--coordinator_address/--num_processes/--process_id
  flags ends the program with one line on stderr and exit status 2, before anything is written.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from drlih_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  except distributed.DistributedFlagsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_count() > 1:
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _initialize_distributed()
  config = FLAGS.config
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      train.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.step)
    else:
      train.encode_checkpoint(config, FLAGS.workdir, FLAGS.split, FLAGS.output, FLAGS.step)
  except (ValueError, FileNotFoundError, OSError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
