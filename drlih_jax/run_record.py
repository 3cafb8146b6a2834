"""A run's record in its workdir: `config.json`, `splits.json`, the rules for resuming and evaluating.

Every path goes through `etils.epath`, so a workdir may be local or a `gs://` URL.

Resume rules (training again in a workdir that holds `config.json`):
* Refused, with the keys named: keys that change the parameter or optimiser-state structure, the data
  split or the meaning of the code (`REFUSED_ON_RESUME`): `objective`, `seed`, `hash.*` (but
  `hash.eval_bits`), `model.*` (but `model.pretrained`, read only when a run starts), `dataset.*` (but the
  data's location, `LOCATION_KEYS`), `optim.*`.
* Until the run's first checkpoint nothing is refused: a changed config replaces the record (logged).
* Allowed, and logged: everything else, e.g. `train.steps` (to extend a run; the AdamW cosine schedule is
  then stretched over the new total), the log/eval/checkpoint frequencies, `rl.*`, `input.*`,
  `mesh_devices`, `hash.eval_bits`. `config.json` then records the new values.

Evaluation and encoding read `config.json` (the run's own record). A `--config` file may be given too; it
must agree with the record on every refused key. Overrides may change only the evaluation options
(`EVAL_OPTIONS`); a report made under evaluation options other than the run's is written beside the run's
(`report_name`), never over it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from absl import logging
from etils import epath
import numpy as np

from drlih_jax import configuration
from drlih_jax import errors

CONFIG_FILE = "config.json"
SPLITS_FILE = "splits.json"
DONE_FILE = "DONE"
CHECKPOINT_DIR = "checkpoints"  # orbax's steps, <workdir>/checkpoints/<step> (`checkpointing`)

LOCATION_KEYS = ("dataset.root", "dataset.list_dir", "dataset.data_dir", "dataset.loader", "dataset.num_workers")
# Evaluation options that a report depends on (its file name says when they differ from the run's).
REPORT_OPTIONS = ("train.eval_database_order", "hash.eval_bits")
EVAL_OPTIONS = REPORT_OPTIONS + ("train.eval_batch_size", "mesh_devices") + LOCATION_KEYS
_REFUSED_PREFIXES = ("hash.", "model.", "dataset.", "optim.")
_REFUSED_KEYS = ("objective", "seed")
_RESUMABLE_EXCEPTIONS = ("hash.eval_bits", "model.pretrained") + LOCATION_KEYS


def refused_on_resume(key: str) -> bool:
  """Whether changing `key` between a run and its resumption is refused (see the module docstring)."""
  if key in _RESUMABLE_EXCEPTIONS:
    return False
  return key in _REFUSED_KEYS or key.startswith(_REFUSED_PREFIXES)


def path(workdir, name: str) -> epath.Path:
  return epath.Path(workdir) / name


def _read_json(file: epath.Path) -> Any:
  try:
    return json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise errors.RunRecordError(f"{file} is not valid JSON ({e}); restore it or use a new workdir") from e


def write_json(file: epath.Path, payload: Any) -> None:
  """Writes JSON (through a temporary file and a rename on local disks, so a reader never sees half)."""
  text = json.dumps(payload, indent=1, sort_keys=True, default=str)
  file.parent.mkdir(parents=True, exist_ok=True)
  if "://" not in str(file):
    tmp = file.parent / f".{file.name}.tmp"
    tmp.write_text(text)
    tmp.replace(file)
  else:  # Object stores write whole objects: no partial reads to guard against.
    file.write_text(text)


def check_writable(workdir) -> None:
  """Creates the workdir; raises WorkdirError naming it when it cannot be written."""
  root = epath.Path(workdir)
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe = root / ".write_test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise errors.WorkdirError(f"workdir {workdir} is not writable: {getattr(e, 'strerror', None) or e}") from e


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{key: (saved, current)} for keys present in both flattened configs whose values differ."""
  return {k: (saved[k], current[k]) for k in sorted(set(saved) & set(current)) if saved[k] != current[k]}


def _describe(diffs: Mapping[str, tuple[Any, Any]], old: str, new: str) -> str:
  return "; ".join(f"{k}: {old} {a!r}, {new} {b!r}" for k, (a, b) in diffs.items())


def has_checkpoint(workdir) -> bool:
  """Whether `<workdir>/checkpoints` holds a step (`CHECKPOINT_DIR`/<step>): a run to protect.

  A workdir whose run ended before its first checkpoint (the data failed to load, the first steps ran out
  of memory, ...) holds a config.json and maybe a splits.json, but nothing that depends on them.
  """
  directory = path(workdir, CHECKPOINT_DIR)
  return directory.exists() and any(child.name.isdigit() for child in directory.iterdir())


def record_config_for_training(workdir, config, *, write: bool) -> dict[str, tuple[Any, Any]]:
  """Writes `config.json`, or checks a resumed run against it and records the allowed changes.

  A recorded config binds only once the run has saved a checkpoint: before that, a changed config replaces
  it (with a warning naming the changes), so a run that failed early can be fixed and started again.

  Args:
    workdir: the run directory.
    config: the run's ConfigDict.
    write: whether this process writes (process 0); every process checks.

  Returns:
    {key: (recorded, now)} of the keys that changed ({} for a new run).

  Raises:
    RunRecordError: the config differs from the recorded one on refused keys (all of them named) and the
      run has a checkpoint.
  """
  file = path(workdir, CONFIG_FILE)
  current = configuration.flatten(config)
  diffs = {}
  if file.exists():
    saved = _read_json(file)
    diffs = differences(saved, current)
    refused = {k: v for k, v in diffs.items() if refused_on_resume(k)}
    if refused and not has_checkpoint(workdir):
      logging.warning("%s records a run that saved no checkpoint; this config replaces it (%s)", file,
                      _describe(diffs, "was", "now"))
    elif refused:
      raise errors.RunRecordError(
          f"the config differs from the run recorded in {file} on keys that may not change when a run resumes "
          f"({_describe(refused, 'recorded', 'now')}); use a new workdir or restore those values")
    elif diffs:
      logging.warning("Resuming %s with changed keys: %s", workdir, _describe(diffs, "was", "now"))
  if write:
    write_json(file, current)
  return diffs


def read_config(workdir):
  """The run's ConfigDict from `<workdir>/config.json`.

  Raises:
    RunRecordError: no run is recorded in `workdir`.
  """
  file = path(workdir, CONFIG_FILE)
  if not epath.Path(workdir).exists():
    raise errors.RunRecordError(f"no run in {workdir}: the directory does not exist")
  if not file.exists():
    raise errors.RunRecordError(f"no run in {workdir}: {file} not found (was the run trained with this workdir?)")
  return configuration.from_flat(_read_json(file))


def config_for_evaluation(workdir, overrides: Mapping[str, str], config_file=None):
  """The config that evaluates (or encodes) the run in `workdir`: its record plus evaluation options.

  Args:
    workdir: the run directory (must hold config.json).
    overrides: `--config.KEY=VALUE` texts; only `EVAL_OPTIONS` may differ from the record.
    config_file: an optional ConfigDict loaded from `--config`; it must agree with the record on every
      refused key (its other values are not used).

  Returns:
    (config, run_config): the effective ConfigDict and the recorded one.

  Raises:
    RunRecordError: no run in workdir, or `config_file` disagrees with it on refused keys.
    ConfigError: an override of a key that is not an evaluation option (naming it), or an unknown key.
  """
  recorded = read_config(workdir)
  saved = configuration.flatten(recorded)
  if config_file is not None:
    diffs = {k: v for k, v in differences(saved, configuration.flatten(config_file)).items()
             if refused_on_resume(k)}
    if diffs:
      raise errors.RunRecordError(
          f"--config differs from the run recorded in {path(workdir, CONFIG_FILE)} on keys that define the "
          f"model and its code ({_describe(diffs, 'recorded', '--config')}); evaluation uses the run's record, "
          "so --config is optional here")
  config = configuration.apply_overrides(recorded, overrides)
  changed = differences(saved, configuration.flatten(config))
  not_eval = sorted(k for k in changed if k not in EVAL_OPTIONS)
  if not_eval:
    raise errors.ConfigError(
        f"--config.{not_eval[0]} cannot change when evaluating a recorded run (recorded {saved[not_eval[0]]!r}); "
        f"only the evaluation options {', '.join(EVAL_OPTIONS)} may be overridden")
  return config, recorded


def own_reports(workdir) -> list[tuple[int, epath.Path]]:
  """[(step, path)] of the run's `eval_<step>.json` under its own evaluation options, in step order.

  Reports made under other options (`eval_<step>.<options>.json`, see `report_name`) are left out.
  """
  found = []
  for file in epath.Path(workdir).glob("eval_*.json"):
    match = re.fullmatch(r"eval_(\d+)\.json", file.name)
    if match:
      found.append((int(match.group(1)), file))
  return sorted(found, key=lambda item: item[0])


def report_name(step: int, config, run_config) -> str:
  """`eval_<step>` for the run's own evaluation options, else `eval_<step>.<options>` (never overwritten)."""
  tags = []
  current, recorded = configuration.flatten(config), configuration.flatten(run_config)
  for key in REPORT_OPTIONS:
    if current.get(key) != recorded.get(key):
      value = current.get(key)
      text = "-".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
      tags.append(f"{key.rsplit('.', 1)[-1]}-{text}")
  return f"eval_{step}" + ("." + ".".join(tags) if tags else "")


# ------------------------------------------------------------------------------------------------
# splits.json


def splits_record(dataset_values: Mapping[str, Any], data) -> dict[str, Any]:
  """What `splits.json` holds for `data`, loaded with the (validated) dataset settings."""
  ids = {"train": data.train.ids, "query": data.query.ids, "database": data.database.ids}
  return {
      "protocol": dataset_values["name"],
      "seed": int(dataset_values["split_seed"]),
      "source": dataset_values["source"],
      "root": dataset_values.get("root"),
      "list_dir": dataset_values.get("list_dir"),
      "image_size": dataset_values.get("image_size"),
      "num_classes": int(data.num_classes),
      "counts": {k: int(len(v)) for k, v in ids.items()},
      "ids": {k: [int(i) for i in v] for k, v in ids.items()},
  }


def check_splits(workdir, record: Mapping[str, Any]) -> bool:
  """Checks `<workdir>/splits.json` against `record`; returns False when there is no such file.

  Raises:
    SplitMismatchError: the file records another protocol, seed, source or other ids.
  """
  file = path(workdir, SPLITS_FILE)
  if not file.exists():
    return False
  old = _read_json(file)
  for key in ("protocol", "seed", "source"):
    if old.get(key) != record[key]:
      raise errors.SplitMismatchError(f"{file} records {key} {old.get(key)!r} but this run has {record[key]!r}; "
                                      "use a new workdir or the recorded dataset settings")
  for split in ("train", "query", "database"):
    before = np.asarray(old.get("ids", {}).get(split, []), np.int64)
    now = np.asarray(record["ids"][split], np.int64)
    if not np.array_equal(before, now):
      n = min(len(before), len(now))
      diff = np.flatnonzero(before[:n] != now[:n])
      at = int(diff[0]) if len(diff) else n
      raise errors.SplitMismatchError(
          f"{file}: the recomputed {split!r} split differs from the recorded one ({len(before)} ids recorded, "
          f"{len(now)} now, first difference at position {at}); the data or its bad-image skips changed. "
          "Use a new workdir, or restore the data the run started with")
  return True


def record_splits(workdir, record: Mapping[str, Any], *, write: bool) -> None:
  """Checks `splits.json` against `record`, or writes it (when `write`) if the workdir has none.

  As with config.json, splits that no checkpoint was trained on are replaced (with a warning), not refused.
  """
  try:
    recorded = check_splits(workdir, record)
  except errors.SplitMismatchError as error:
    if has_checkpoint(workdir):
      raise
    logging.warning("%s; no checkpoint was trained on the recorded splits: they are replaced", error)
    recorded = False
  if not recorded and write:
    write_json(path(workdir, SPLITS_FILE), dict(record))


# ------------------------------------------------------------------------------------------------
# DONE: written when training has ended (by its step count, its time budget or its stopping rule).


def write_done(workdir, step: int, reason: str, train_seconds: float) -> None:
  write_json(path(workdir, DONE_FILE), {"step": int(step), "reason": reason, "train_seconds": float(train_seconds)})


def read_done(workdir) -> dict[str, Any] | None:
  """The DONE record ({"step", "reason", "train_seconds"}) of a run whose training has ended, else None."""
  file = path(workdir, DONE_FILE)
  return _read_json(file) if file.exists() else None


def clear_done(workdir) -> None:
  file = path(workdir, DONE_FILE)
  if file.exists():
    file.unlink()
