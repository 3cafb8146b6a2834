"""Checks a whole config before any data is loaded or any file is written.

`validate(config)` runs the check of every block, each exported by the module that reads the block, and
checks the top-level keys and the `train` block (read by the training loop) itself. Every failure is a
`ConfigError` (or `MissingExtraError` for an absent optional package) naming the key.
"""

from __future__ import annotations

from drlih_jax import errors
from drlih_jax import evaluate
from drlih_jax import input_pipeline
from drlih_jax import losses
from drlih_jax import models
from drlih_jax import optim
from drlih_jax.data import protocols


def _int(key: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise errors.ConfigError(f"{key} must be an int >= {minimum}, got {value!r}")


def check_train_config(config) -> None:
  """Checks the top-level keys (`seed`, `mesh_devices`) and the `train` block (the loop's schedule)."""
  _int("seed", config.seed, 0)
  _int("mesh_devices", config.get("mesh_devices", 0), 0)
  train = config.train
  _int("train.steps", train.steps, 1)
  _int("train.log_every", train.log_every, 1)
  _int("train.eval_every", train.eval_every, 0)
  _int("train.checkpoint_every", train.checkpoint_every, 1)
  _int("train.keep_checkpoints", train.keep_checkpoints, 1)
  _int("train.max_nonfinite_in_a_row", train.max_nonfinite_in_a_row, 0)
  if train.get("max_minutes", 0) < 0:
    raise errors.ConfigError(f"train.max_minutes must be >= 0 (0: no limit), got {train.max_minutes!r}")
  if train.get("stop_min_gain", 0) < 0:
    raise errors.ConfigError(f"train.stop_min_gain must be >= 0 (0: off), got {train.stop_min_gain!r}")
  if train.get("stop_min_gain", 0) > 0 and not train.eval_every:
    raise errors.ConfigError("train.stop_min_gain needs train.eval_every > 0 (the rule reads the evaluations)")
  patience = train.get("stop_patience", 1)
  if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
    raise errors.ConfigError(f"train.stop_patience must be an integer >= 1, got {patience!r}")
  if not 0.0 < train.get("stop_window", 0.2) < 1.0:
    raise errors.ConfigError(f"train.stop_window must lie in (0, 1), got {train.stop_window!r}")


def validate(config, training: bool = True) -> None:
  """Raises ConfigError (or MissingExtraError) naming the first offending key.

  Args:
    config: the ConfigDict.
    training: False for evaluation and encoding, which never read `model.pretrained`.
  """
  check_train_config(config)
  losses.check_config(config)
  models.check_config(config, training=training)
  optim.check_config(config.optim)
  input_pipeline.check_config(config)
  evaluate.check_config(config)
  protocols.validate_config(config.dataset)
