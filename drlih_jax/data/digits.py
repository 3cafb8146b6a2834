"""The embedded dataset: scikit-learn's bundled 8x8 digits (no download), and its protocol.

scikit-learn ships the 1,797 images (values 0-16) inside its package, so this source works offline. The
tfds builder (`tfds_builders/drlih_digits`) stores them as uint8 8x8x1 images scaled to 0-255
(`round(v * 255 / 16)`); the protocol then draws, with `dataset.split_seed`, `dataset.num_queries` queries
class-balanced (36 per class for 360) and makes the remaining 1,437 images both the training set and the
database.

Where TensorFlow is not importable (accelerator hosts without TF) the same arrays are built straight
from scikit-learn; both paths give identical pixels, labels and ids.
"""

from __future__ import annotations

import numpy as np

from drlih_jax import errors
from drlih_jax.data import image_io
from drlih_jax.data import types

NUM_CLASSES = 10


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The 1,797 digits as uint8 [n, 8, 8, 1] images and int32 labels, in scikit-learn's order."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  digits = load_digits()
  images = np.rint(digits.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int32)


def load_all(data_dir: str | None = None, loader: str = "auto") -> types.Split:
  """Loads all 1,797 digits, through tfds (prepared into `data_dir` once) or straight from scikit-learn.

  Args:
    data_dir: tfds data dir; None uses tfds' default.
    loader: "tfds", "pillow"/"sklearn" (no TensorFlow), or "auto" (tfds where TensorFlow imports).

  Returns:
    A Split ordered by id.
  """
  if loader not in ("auto", "tfds", "pillow", "sklearn"):
    raise errors.ConfigError(f"dataset.loader must be auto, tfds or pillow, got {loader!r}")
  if loader in ("pillow", "sklearn") or (loader == "auto" and not image_io.tensorflow_available()):
    images, labels = digits_arrays()
    return types.Split(images, labels, np.arange(len(images), dtype=np.int64))
  # pylint: disable=g-import-not-at-top,import-outside-toplevel  (tensorflow_datasets)
  from drlih_jax.data import tfds_io
  from drlih_jax.data.tfds_builders.drlih_digits import drlih_digits_dataset_builder
  # pylint: enable=g-import-not-at-top,import-outside-toplevel
  builder = tfds_io.prepare(lambda: drlih_digits_dataset_builder.Builder(data_dir=data_dir))
  return tfds_io.read_split(builder, "train")


def class_balanced_queries(labels: np.ndarray, num_queries: int, num_classes: int, seed: int) -> np.ndarray:
  """Picks `num_queries // num_classes` positions per class with a seeded permutation, sorted."""
  if num_queries % num_classes:
    raise errors.ConfigError(f"dataset.num_queries={num_queries} must be a multiple of the {num_classes} classes")
  per_class = num_queries // num_classes
  rng = np.random.default_rng(seed)
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) <= per_class:
      raise errors.DataError(f"class {c} has {len(members)} images, fewer than {per_class + 1} needed for "
                       f"{per_class} queries and a non-empty database")
    chosen.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(chosen))


def load_digits(dataset_config) -> types.RetrievalData:
  """The digits protocol: class-balanced queries; the rest is both training set and database."""
  split = load_all(dataset_config.get("data_dir"), dataset_config.get("loader", "auto"))
  query_pos = class_balanced_queries(split.labels, dataset_config.num_queries, NUM_CLASSES,
                                     dataset_config.split_seed)
  rest = np.setdiff1d(np.arange(len(split)), query_pos)
  database = split.take(rest)
  return types.RetrievalData(train=database, query=split.take(query_pos), database=database,
                             num_classes=NUM_CLASSES)
