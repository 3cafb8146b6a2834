"""Containers for in-memory retrieval datasets.

Every data source (the embedded digits, class-folder trees, list files, tfds cifar10) is turned into a
`RetrievalData`: three `Split`s of uint8 NHWC images with their labels and stable example ids. The
device-resident input pipeline, evaluation and the protocol presets all speak this one format.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory.

  Attributes:
    images: uint8 array [n, H, W, C].
    labels: int32 class ids [n] (single-label) or uint8 multi-hot [n, num_classes] (multi-label).
    ids: int64 [n], the example's index in its source (stable across runs, used to record splits).
    paths: str [n], each image's file relative to `dataset.root` (as a list file names it), so an id leads
      back to its file; None for sources without files (digits, the official tfds cifar10).
  """

  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray
  paths: Optional[np.ndarray] = None

  def __post_init__(self):
    n = len(self.images)
    sizes = [len(self.labels), len(self.ids)] + ([] if self.paths is None else [len(self.paths)])
    if any(size != n for size in sizes):
      raise ValueError(f"Split arrays disagree in length: images {n}, labels {len(self.labels)}, ids "
                       f"{len(self.ids)}" + ("" if self.paths is None else f", paths {len(self.paths)}"))

  def __len__(self) -> int:
    return len(self.images)

  @property
  def multi_label(self) -> bool:
    return self.labels.ndim == 2

  def take(self, index: np.ndarray) -> "Split":
    """Returns the sub-split at the given positions."""
    paths = None if self.paths is None else self.paths[index]
    return Split(self.images[index], self.labels[index], self.ids[index], paths)


@dataclasses.dataclass(frozen=True)
class RetrievalData:
  """A training set, a query set and a database, as a protocol defines them."""

  train: Split
  query: Split
  database: Split
  num_classes: int

  @property
  def multi_label(self) -> bool:
    return self.train.multi_label
