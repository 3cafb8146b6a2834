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
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of orbax (a dozen lines per checkpoint) so the training log stays readable."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
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
