"""Config files, command-line overrides and the flattened form recorded in a run's `config.json`.

A config file is a Python file whose `get_config()` (or `get_config(arg)`, selected as `FILE:ARG`) returns
an `ml_collections.ConfigDict`. Overrides are `KEY=VALUE` pairs with dotted keys (`hash.bits=64`); the
value is parsed as the type of the value it replaces (tuples and None-valued keys take a Python literal,
falling back to the plain string). An unknown key is a `ConfigError` naming the nearest valid key.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import sys
from typing import Any, Mapping, Sequence

from etils import epath
import ml_collections

from drlih_jax import errors

_OVERRIDE_PREFIX = "--config."


def load_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `FILE` or `FILE:ARG` (the argument given to `get_config`).

  Raises:
    ConfigError: the file does not exist, has no `get_config`, or rejects the argument.
  """
  path_text, _, arg = spec.partition(":")
  path = epath.Path(path_text)
  if not path.is_file():
    raise errors.ConfigError(f"--config={spec}: no such config file {path_text!r}")
  path = path.resolve()
  # A config inside a package folder (configs/__init__.py) imports its siblings as `configs.default`.
  if (path.parent / "__init__.py").exists() and str(path.parent.parent) not in sys.path:
    sys.path.insert(0, str(path.parent.parent))
  module_spec = importlib.util.spec_from_file_location(f"_drlih_config_{path.stem}", str(path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise errors.ConfigError(f"--config={spec}: {path_text} defines no get_config()")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except (ValueError, KeyError) as e:
    raise errors.ConfigError(f"--config={spec}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(f"--config={spec}: get_config() returned {type(config).__name__}, "
                             "not an ml_collections.ConfigDict")
  return config


def split_override_args(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.KEY=VALUE` (or `--config.KEY VALUE`) arguments from the others.

  Returns:
    (the other arguments in order, {KEY: VALUE text} in order of appearance; a repeated key keeps the
    last value).

  Raises:
    ConfigError: `--config.KEY` without a value.
  """
  rest, overrides = [], {}
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(_OVERRIDE_PREFIX):
      key, eq, value = arg[len(_OVERRIDE_PREFIX):].partition("=")
      if not eq:
        if i + 1 >= len(args):
          raise errors.ConfigError(f"{arg} needs a value ({arg}=VALUE)")
        value = args[i + 1]
        i += 1
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def flatten(config) -> dict[str, Any]:
  """{"a.b": value} for every leaf of a ConfigDict (tuples as lists, as JSON stores them)."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
    else:
      out[key] = list(value) if isinstance(value, tuple) else value
  return out


def from_flat(flat: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The ConfigDict of a flattened record (JSON lists back to tuples), unlocked."""
  nested: dict[str, Any] = {}
  for key, value in flat.items():
    node = nested
    *parents, leaf = key.split(".")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return ml_collections.ConfigDict(nested)


def nearest_key(key: str, keys) -> str | None:
  """The valid key closest to a mistyped `key`, or None when nothing is close."""
  keys = list(keys)
  matches = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  if not matches:  # Try the last component alone (`hash.bitz` -> `hash.bits`, `bitz` -> `hash.bits`).
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    matches = [leaves[close[0]]] if close else []
  return matches[0] if matches else None


def check_keys(keys, config, what: str = "config key") -> None:
  """Raises ConfigError for the first key that `config` does not have, naming the nearest valid one."""
  valid = flatten(config)
  for key in keys:
    if key not in valid:
      suggestion = nearest_key(key, valid)
      hint = f"; did you mean '{suggestion}'?" if suggestion else ""
      raise errors.ConfigError(f"unknown {what} '{key}'{hint}")


def parse_value(key: str, text: str, current: Any) -> Any:
  """Parses an override's text as the type of the value it replaces.

  Raises:
    ConfigError: naming the key, when the text is not of that type.
  """
  def fail(kind):
    raise errors.ConfigError(f"--config.{key}={text}: expected {kind} (the current value is {current!r})")

  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    fail("true or false")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      fail("an integer")
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      fail("a number")
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      fail("a tuple such as '(12, 24)'")
    if isinstance(value, (int, float, str)):
      value = (value,)
    if not isinstance(value, (tuple, list)):
      fail("a tuple such as '(12, 24)'")
    return tuple(value)
  if text.strip().lower() == "none":
    return None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return tuple(value) if isinstance(value, list) else value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` ({dotted key: text}) parsed and applied.

  Field references survive (a config whose `train.eval_every` follows `train.steps` keeps following it).

  Raises:
    ConfigError: an unknown key (naming the nearest valid one) or a value of the wrong type.
  """
  check_keys(overrides, config)
  current = flatten(config)
  updated = copy.deepcopy(config)  # keeps field references (e.g. eval_every following train.steps)
  updated.unlock()
  values = {}
  for key, text in overrides.items():
    old = current[key]
    values[key] = parse_value(key, text, tuple(old) if isinstance(old, list) else old)
  try:
    updated.update_from_flattened_dict(values)
  except (TypeError, KeyError, ValueError) as e:
    raise errors.ConfigError(f"config override {sorted(values)}: {e}") from e
  return updated
