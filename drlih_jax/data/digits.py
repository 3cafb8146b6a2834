"""The embedded dataset: scikit-learn's bundled 8x8 digits as a tfds builder (no download).

scikit-learn ships the 1,797 images (values 0-16) inside its package, so this source works offline. The
builder stores them as uint8 8x8x1 images scaled to 0-255 (`round(v * 255 / 16)`); the protocol then
draws, with `dataset.split_seed`, `dataset.num_queries` queries class-balanced (36 per class for 360) and
makes the remaining 1,437 images both the training set and the database.

Where TensorFlow is not importable (accelerator hosts without TF) the same arrays are built straight
from scikit-learn; both paths give identical pixels, labels and ids.
"""

from __future__ import annotations

import numpy as np

from drlih_jax.data import types

NUM_CLASSES = 10


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The 1,797 digits as uint8 [n, 8, 8, 1] images and int32 labels, in scikit-learn's order."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = np.rint(digits.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int32)


def _make_builder_class():
  """Defines the tfds builder class on first use, so importing this module needs no TensorFlow."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class DrlihDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), one split "train"."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
              "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
              "id": np.int64,
          }),
          supervised_keys=("image", "label"),
          description="scikit-learn's bundled 8x8 handwritten digits.")

    def _split_generators(self, dl_manager):
      del dl_manager  # Nothing to download: the data ships with scikit-learn.
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      images, labels = _digits_arrays()
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image, "label": int(label), "id": i}

  return DrlihDigits


_BUILDER_CLASS = None


def builder(data_dir: str | None = None):
  """Returns the tfds builder of the digits dataset (needs tensorflow_datasets)."""
  global _BUILDER_CLASS  # Class definition is cached: tfds registers builder names once.
  if _BUILDER_CLASS is None:
    _BUILDER_CLASS = _make_builder_class()
  return _BUILDER_CLASS(data_dir=data_dir)


def _tensorflow_available() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def load_all(data_dir: str | None = None, loader: str = "auto") -> types.Split:
  """Loads all 1,797 digits, through tfds (prepared into `data_dir` once) or straight from scikit-learn.

  Args:
    data_dir: tfds data dir; None uses tfds' default.
    loader: "tfds", "pillow"/"sklearn" (no TensorFlow), or "auto" (tfds where TensorFlow imports).

  Returns:
    A Split ordered by id.
  """
  if loader not in ("auto", "tfds", "pillow", "sklearn"):
    raise ValueError(f"dataset.loader must be auto, tfds or pillow, got {loader!r}")
  use_tfds = loader == "tfds" or (loader == "auto" and _tensorflow_available())
  if not use_tfds:
    images, labels = _digits_arrays()
    return types.Split(images, labels, np.arange(len(images), dtype=np.int64))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  b = builder(data_dir)
  b.download_and_prepare()
  data = tfds.as_numpy(b.as_dataset(split="train", batch_size=-1))
  order = np.argsort(data["id"], kind="stable")
  return types.Split(data["image"][order].astype(np.uint8), data["label"][order].astype(np.int32),
                     data["id"][order].astype(np.int64))


def class_balanced_queries(labels: np.ndarray, num_queries: int, num_classes: int, seed: int) -> np.ndarray:
  """Picks `num_queries // num_classes` positions per class with a seeded permutation, sorted."""
  if num_queries % num_classes:
    raise ValueError(f"dataset.num_queries={num_queries} must be a multiple of the {num_classes} classes")
  per_class = num_queries // num_classes
  rng = np.random.default_rng(seed)
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) <= per_class:
      raise ValueError(f"class {c} has {len(members)} images, fewer than {per_class + 1} needed for "
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
