"""Orbax checkpoints of a run: saving, restoring, and telling a corrupt checkpoint from an incompatible one.

Checkpoints live in `<workdir>/checkpoints/<step>/` (the workdir may be a gs:// URL; orbax gets it as is),
each with three items: `model` (step, parameters, batch statistics), `opt` (the optimiser state) and `meta`
(JSON: training wall time, evaluation history, why training stopped). Evaluation restores `model` alone.

Restoring walks the steps from newest to oldest:
* a checkpoint whose structure or shapes differ from the model's is an error naming what differs
  (`CheckpointError`); it is never skipped, so a changed model cannot restart over existing checkpoints;
* an unreadable or truncated checkpoint is skipped with a warning naming it. When training, it is moved
  aside to `checkpoints/<step>.corrupt-<UTC time>` (orbax ignores that name), so the step is saved again
  when training reaches it; evaluation leaves the workdir as it is.
With several processes, every process tries the same step and they agree (all must succeed) before one is
used; process 0 moves the corrupt ones aside.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from drlih_jax import errors
from drlih_jax import run_record

CHECKPOINT_DIR = run_record.CHECKPOINT_DIR
_ITEMS = ("model", "opt", "meta")


def checkpoint_dir(workdir) -> epath.Path:
  """`<workdir>/checkpoints`, absolute for local paths (orbax's tensorstore layer refuses relative ones)."""
  path = epath.Path(workdir) / CHECKPOINT_DIR
  return path if "://" in str(path) else path.resolve()


@dataclasses.dataclass(frozen=True)
class Restored:
  """A restored checkpoint: the state (opt_state None when restored without it), its step and meta."""

  state: Any
  step: int
  meta: dict


class _Unreadable(Exception):
  """A checkpoint that cannot be read (truncated, half-written, corrupt)."""


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _signature(tree) -> dict[str, tuple]:
  """{leaf name: shape} with the dotted names orbax gives array leaves ("params.backbone.Conv_0.kernel")."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {".".join(_key_name(k) for k in path): tuple(np.shape(x)) for path, x in flat}


def _stored_signature(metadata) -> dict[str, tuple]:
  tree = getattr(metadata, "tree", metadata)
  return {leaf.name: tuple(leaf.shape) for leaf in jax.tree.leaves(tree)}


def _mismatch(what: str, stored: dict, wanted: dict) -> str | None:
  if stored == wanted:
    return None
  missing = sorted(set(wanted) - set(stored))
  extra = sorted(set(stored) - set(wanted))
  shapes = sorted(f"{k}: checkpoint {stored[k]}, model {wanted[k]}" for k in set(stored) & set(wanted)
                  if stored[k] != wanted[k])
  parts = []
  for label, items in (("missing in the checkpoint", missing), ("not in the model", extra),
                       ("different shapes", shapes)):
    if items:
      more = f" and {len(items) - 5} more" if len(items) > 5 else ""
      parts.append(f"{label}: {', '.join(items[:5])}{more}")
  return f"the {what} differs ({'; '.join(parts)})"


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
  """The run's checkpoints: an orbax CheckpointManager plus the restore rules of the module docstring."""

  def __init__(self, workdir, keep: int, *, read_only: bool = False):
    """Opens `<workdir>/checkpoints`.

    Args:
      workdir: the run directory (local path or URL).
      keep: how many of the newest checkpoints to keep (orbax `LatestN`).
      read_only: evaluation: create nothing, move nothing.
    """
    self.directory = checkpoint_dir(workdir)
    self.read_only = read_only
    self._manager = None
    if read_only and not self.directory.exists():
      return
    options = ocp.CheckpointManagerOptions(
        create=not read_only, preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=not read_only)
    handlers = {"model": ocp.StandardCheckpointHandler(), "opt": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps()) if self._manager is not None else []

  def save(self, step: int, state, meta: dict) -> None:
    """Saves `state` (a TrainState) and `meta` as the checkpoint of `step` (asynchronously)."""
    model = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats}
    self._manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model), opt=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()

  def _check_compatible(self, step: int, like, params_only: bool) -> None:
    """Raises CheckpointError when `step` does not fit `like`; _Unreadable when its metadata can't be read."""
    try:
      metadata = self._manager.item_metadata(step)
      stored = {name: metadata[name] for name in _ITEMS if name in metadata.keys()}
    except Exception as e:  # pylint: disable=broad-except  (any failure to read metadata = unreadable)
      raise _Unreadable(f"{type(e).__name__}: {e}") from e
    where = self.directory / str(step)
    if stored.get("model") is None:
      raise errors.CheckpointError(f"{where} has no 'model' item (written by an older drlih_jax?); "
                                   "use a new workdir")
    wanted = {"model": {"step": like.step, "params": like.params, "batch_stats": like.batch_stats}}
    if not params_only:
      wanted["opt"] = like.opt_state
    for name, tree in wanted.items():
      if stored.get(name) is None:
        raise _Unreadable(f"its {name!r} item is missing")
      problem = _mismatch("parameters and batch statistics" if name == "model" else "optimiser state",
                          _stored_signature(stored[name]), _signature(tree))
      if problem:
        raise errors.CheckpointError(
            f"checkpoint {where} does not match this model: {problem}. The config changes the model or the "
            "optimiser; use a new workdir, or the config the run was trained with")

  def _restore_step(self, step: int, like, params_only: bool) -> Restored:
    self._check_compatible(step, like, params_only)
    model_like = {"step": like.step, "params": like.params, "batch_stats": like.batch_stats}
    args = {"model": ocp.args.StandardRestore(_abstract(model_like))}
    if not params_only:
      args["opt"] = ocp.args.StandardRestore(_abstract(like.opt_state))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # pylint: disable=broad-except  (metadata matched: the data is unreadable)
      raise _Unreadable(f"{type(e).__name__}: {e}") from e
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"] or {}
    except Exception:  # pylint: disable=broad-except  (meta is optional: timings and history only)
      logging.warning("checkpoint %s: no readable 'meta' item; its training time and history are lost",
                      self.directory / str(step))
      meta = {}
    model = restored["model"]
    state = like.replace(step=model["step"], params=model["params"], batch_stats=model["batch_stats"],
                         opt_state=None if params_only else restored["opt"])
    return Restored(state=state, step=step, meta=dict(meta))

  def _move_aside(self, step: int) -> None:
    source = self.directory / str(step)
    target = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    if "://" in str(source):  # Object stores have no directories to rename: copy the objects, then delete.
      _copy_tree(source, target)
      source.rmtree()
    else:
      source.rename(target)
    logging.warning("Moved the unreadable checkpoint %s aside to %s; step %d will be saved again", source,
                    target, step)

  def restore(self, like, step: int | None = None, params_only: bool = False) -> Restored | None:
    """Restores `step` (default: the newest readable step) into the structure and shardings of `like`.

    Args:
      like: a TrainState whose leaves give structure, shapes and shardings (arrays or ShapeDtypeStructs).
      step: the step to restore; None walks from the newest to the oldest.
      params_only: restore parameters and batch statistics only (`opt_state` is None in the result).

    Returns:
      The Restored checkpoint, or None when there is none (or none readable).

    Raises:
      CheckpointError: a checkpoint does not match `like` (naming what differs), or the requested `step`
        does not exist or cannot be read.
    """
    available = self.steps()
    if step is not None and step not in available:
      raise errors.CheckpointError(f"no checkpoint at step {step} in {self.directory} "
                                   f"(available steps: {available or 'none'})")
    for candidate in ([step] if step is not None else sorted(available, reverse=True)):
      try:
        restored, problem = self._restore_step(candidate, like, params_only), None
      except _Unreadable as e:
        restored, problem = None, str(e)
      if _all_processes_agree(restored is not None):
        return restored
      where = self.directory / str(candidate)
      if step is not None:
        raise errors.CheckpointError(f"checkpoint {where} cannot be read: {problem or 'on another process'}")
      logging.warning("Skipping unreadable checkpoint %s: %s", where, problem or "unreadable on another process")
      if not self.read_only:
        if jax.process_index() == 0:
          self._move_aside(candidate)
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices(f"drlih_moved_checkpoint_{candidate}")
        self._manager.reload()
    return None


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
  """Copies every file below `source` to the same place below `target` (epath's rglob refuses gs://)."""
  target.mkdir(parents=True, exist_ok=True)
  for item in source.iterdir():
    if item.is_dir():
      _copy_tree(item, target / item.name)
    else:
      (target / item.name).write_bytes(item.read_bytes())


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (one process: `ok` itself)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.array([ok], np.int32))
  return bool(np.all(flags))
