r"""Command line: train, evaluate or encode.

    python -m drlih_jax.main --config=configs/digits.py --workdir=runs/digits
    python -m drlih_jax.main --workdir=runs/digits --mode=eval [--step=N]
    python -m drlih_jax.main --workdir=runs/digits --mode=encode --split=database [--output=codes.npz]

Training needs `--config`; eval and encode read the run's own `config.json` (a `--config` given there is
checked against it). Any config key can be overridden with `--config.KEY=VALUE` (in eval/encode only the
evaluation options, see `drlih_jax/run_record.py`). A mistake the user can fix (a bad flag or key, missing
data, a workdir that holds another run, ...) is reported as one line on stderr with exit status 2 (command
line) or 1 (everything else), without a traceback and before anything is written.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from drlih_jax import configuration
from drlih_jax import distributed
from drlih_jax import errors
from drlih_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file (FILE or FILE:ARG); required to train, optional to eval/encode.")
flags.DEFINE_string("workdir", None, "Run directory (local path or gs:// URL) for checkpoints, metrics, reports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "encode"], "What to do.")
flags.DEFINE_integer("step", None, "eval/encode: the checkpoint step (default: the latest).", lower_bound=0)
flags.DEFINE_enum("split", "database", ["query", "database", "train"], "encode: the split to encode.")
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


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records of orbax (a dozen lines per checkpoint) so the training log stays readable."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _fail(message: str, status: int) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with the `--config.KEY=VALUE` overrides split off; errors as one line, status 2.

  Returns:
    [program, *override arguments] (what `main` receives).
  """
  try:
    rest, overrides = configuration.split_override_args(argv[1:])
    unparsed = FLAGS([argv[0], *rest])
  except (flags.Error, errors.ConfigError) as e:
    _fail(str(e).splitlines()[0], 2)
  if len(unparsed) > 1:
    _fail(f"unexpected arguments {unparsed[1:]} (flags are --name=value)", 2)
  if not FLAGS.workdir:
    _fail("--workdir is required", 2)
  if FLAGS.mode == "train" and not FLAGS.config:
    _fail("--config is required to train (eval and encode read the run's config.json)", 2)
  if FLAGS.mode != "encode" and FLAGS.output:
    _fail("--output is for --mode=encode", 2)
  return [argv[0], *(f"--config.{key}={value}" for key, value in overrides.items())]


def _initialize_distributed():
  """Connects the processes of a multi-process run before any other JAX call (see distributed.py).

  A contradictory or incomplete set of --distributed/--coordinator_address/--num_processes/--process_id
  flags ends the program with one line on stderr and exit status 2, before anything is written.
  """
  try:
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  except distributed.DistributedFlagsError as e:
    _fail(str(e), 2)
  if jax.process_count() > 1:
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def run(argv: list[str]) -> None:
  """Runs the mode selected by the flags; `argv[1:]` are the `--config.KEY=VALUE` overrides."""
  _, overrides = configuration.split_override_args(argv[1:])
  config_file = configuration.load_file(FLAGS.config) if FLAGS.config else None
  _initialize_distributed()
  if FLAGS.mode == "train":
    if FLAGS.step is not None:
      raise errors.ConfigError("--step is for --mode=eval/encode (training resumes from the newest checkpoint)")
    train.train_and_evaluate(configuration.apply_overrides(config_file, overrides), FLAGS.workdir)
  elif FLAGS.mode == "eval":
    train.evaluate_checkpoint(FLAGS.workdir, step=FLAGS.step, overrides=overrides, config=config_file)
  else:
    train.encode_checkpoint(FLAGS.workdir, FLAGS.split, output=FLAGS.output, step=FLAGS.step,
                            overrides=overrides, config=config_file)


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    run(argv)
  except errors.Error as e:
    _fail(str(e), 1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
