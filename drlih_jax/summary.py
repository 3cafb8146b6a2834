"""Scalar metrics to TensorBoard event files (tensorboardX: no TensorFlow needed), from process 0 only."""

from __future__ import annotations

import os

import jax


class MetricWriter:
  """Writes scalars under `<workdir>/tensorboard`; a no-op on processes other than 0."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def scalars(self, step: int, values: dict) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
