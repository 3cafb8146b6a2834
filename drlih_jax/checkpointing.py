"""Orbax checkpoints of the TrainState, with automatic resume and a fallback past unreadable ones.

Checkpoints live in `<workdir>/checkpoints/<step>`. `restore_latest` walks the steps from newest to
oldest and returns the first one that restores; each one skipped (truncated, corrupt, half-written) is
reported with a warning naming its directory and the error.
"""

from __future__ import annotations

import os

from absl import logging
import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager over `<workdir>/checkpoints` keeping the newest `keep` checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, state, step: int) -> bool:
  """Saves `state` as the checkpoint of `step` (asynchronously), unless that step is already saved."""
  if step in manager.all_steps():
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=True)


def _abstract(state):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore(manager: ocp.CheckpointManager, step: int, like):
  """Restores the checkpoint at `step` into the structure, shapes and shardings of `like`."""
  return manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))


def restore_latest(manager: ocp.CheckpointManager, like):
  """Restores the newest readable checkpoint; returns (state, step) or (None, None) when there is none."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, step, like), step
    except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint is skipped)
      logging.warning("Skipping unreadable checkpoint %s: %s: %s",
                      os.path.join(checkpoint_dir_of(manager), str(step)), type(e).__name__, e)
  return None, None


def checkpoint_dir_of(manager: ocp.CheckpointManager) -> str:
  return str(manager.directory)
