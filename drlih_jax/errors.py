"""The package's own error types: mistakes a user can fix, as opposed to programming errors.

`python -m drlih_jax.main` prints an `Error` as one line on stderr and exits with status 1, without a
traceback; any other exception keeps its traceback. Each class also derives from the built-in exception
it refines (`ConfigError` is a `ValueError`, ...), so callers that catch the built-ins keep working.
"""

from __future__ import annotations

import importlib


class Error(Exception):
  """Base class of every error the command line reports as one line."""


class ConfigError(Error, ValueError):
  """A config value, a command-line flag or an override is invalid (the message names the key)."""


class DataError(Error, ValueError):
  """Input data is missing or malformed (the message names the file, folder or line)."""


class SplitMismatchError(Error, RuntimeError):
  """The recomputed split differs from the one recorded in `<workdir>/splits.json`."""


class RunRecordError(Error, RuntimeError):
  """The workdir's record (config.json, splits.json, checkpoints) conflicts with the request."""


class CheckpointError(Error, RuntimeError):
  """A checkpoint cannot be used: none found, or it does not match the model (names what differs)."""


class WorkdirError(Error, OSError):
  """The workdir cannot be created or written."""


class MissingExtraError(Error, ImportError):
  """An optional dependency is missing; the message names the `pip install` command."""


def require_module(module: str, purpose: str, install: str):
  """Imports `module`, or raises MissingExtraError naming `purpose` and the `install` command.

  Args:
    module: the importable name (e.g. "safetensors").
    purpose: what needs it (e.g. "model.pretrained").
    install: the command that installs it (e.g. "pip install 'drlih_jax[weights]'").

  Returns:
    The imported module.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(f"{purpose} needs the '{module}' package, which is not installed: "
                            f"{install}") from e
