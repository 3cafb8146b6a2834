"""Retrieval protocols: which images are queries, training images and database, from which source.

`load_retrieval_data(dataset_config, workdir)` is the one entry point. `dataset_config` keys:

* `name`: the protocol, one of `PROTOCOLS`:
  - "cifar10": the pool is every image of the source (train + test, 60,000 for CIFAR-10); per class,
    100 queries and 500 training images are drawn at random (seeded by `split_seed`); the database is the
    rest of the pool (54,000): queries and training images are both left out.
  - "cifar10-1": the same queries and training images (same seed, same draw); the database is every
    non-query image (59,000, the training images included): the DRLIH paper's setting.
  - "cifar10-2": queries are the source's test split (10,000), training set = database = its train split
    (50,000). No randomness (`split_seed` is recorded only).
  - "folder": a generic class-folder tree (`root/<split>/<class>/<image>`), as cifar10-2: train -> training
    set and database, test -> queries.
  - "nuswide_21" (21 labels) and "mirflickr" (38 labels): DeepHash-pytorch list files in `list_dir`, over
    images in `root`: train.txt -> training set, test.txt -> queries, database.txt -> database.
    mirflickr needs all three files. nuswide_21 as shipped here has only train.txt and test.txt; when
    database.txt is absent the database is the training set (train.txt), which is logged. (DeepHash-pytorch
    ships a nus_wide_21 database.txt; put it in `list_dir` to use it.)
  - "coco" (MS-COCO, 80 labels), "imagenet100" (ImageNet-100, 100 one-hot labels) and "voc2012" (20 labels):
    DeepHash-pytorch list files, train.txt / test.txt / database.txt all required, as for mirflickr.
  - "list": generic list files, like nuswide_21 with the label width taken from the first line.
  - "digits": the embedded sklearn digits (`drlih_jax.data.digits`).
* `source`: "tfds" (the official tfds `cifar10` builder; cifar10* protocols only), "folder" (class-folder
  tree at `root`), "list" (list files in `list_dir`), "digits".
* `root`, `list_dir`, `data_dir` (tfds data dir, None = tfds' default; each may be a local path or a
  `gs://` URL, see `storage`), `split_seed` (int), `image_size` (int: resize to this square size; None:
  native size, which every image must share), `on_bad_image` ("error" | "skip", see `image_io`), `loader`
  ("auto" | "tfds" | "pillow": auto = the tfds builders (`tfds_sources`, prepared once into `data_dir`)
  when tensorflow and tensorflow_datasets import, else Pillow), `num_workers` (Pillow threads).

Every returned split is in ascending id order (ids: see `folder_tree` and `image_lists`; the tfds cifar10
ids: `tfds_sources.cifar10_id`), and carries each image's path relative to `root` (`Split.paths`, None for
digits and the tfds cifar10). Images that `on_bad_image = "skip"` dropped are not in the pool the protocol
draws from, so the draw depends on which images decoded.

Multi-label data: images without any label are kept in every split; their number per split is logged
(a query without labels has no relevant item: AP 0). Use `labelled_mask` to leave them out of training
triplets.

A run records the chosen ids per split in `<workdir>/splits.json` (`drlih_jax/run_record.py`); a resumed or
evaluated run checks the recomputed split against it, so it cannot silently use other images.

Errors: a bad `dataset.*` value is a `ConfigError` naming the key; unusable data is a `DataError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import numpy as np

from drlih_jax import errors
from drlih_jax.data import digits
from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data import image_lists
from drlih_jax.data.types import RetrievalData
from drlih_jax.data.types import Split

PROTOCOLS = ("digits", "cifar10", "cifar10-1", "cifar10-2", "nuswide_21", "mirflickr", "coco", "imagenet100",
             "voc2012", "folder", "list")
SOURCES = {
    "digits": ("digits",),
    "cifar10": ("tfds", "folder"),
    "cifar10-1": ("tfds", "folder"),
    "cifar10-2": ("tfds", "folder"),
    "folder": ("folder",),
    "nuswide_21": ("list",),
    "mirflickr": ("list",),
    "coco": ("list",),
    "imagenet100": ("list",),
    "voc2012": ("list",),
    "list": ("list",),
}
LOADERS = ("auto", "tfds", "pillow")
LABEL_WIDTHS = {"nuswide_21": 21, "mirflickr": 38, "coco": 80, "imagenet100": 100, "voc2012": 20}
REQUIRED_LISTS = {"nuswide_21": ("train", "test"), "mirflickr": ("train", "test", "database"),
                  "coco": ("train", "test", "database"), "imagenet100": ("train", "test", "database"),
                  "voc2012": ("train", "test", "database"),
                  "list": ("train", "test")}
QUERIES_PER_CLASS = 100
TRAIN_PER_CLASS = 500
_DEFAULTS = {"root": None, "list_dir": None, "data_dir": None, "split_seed": 0, "image_size": None,
             "on_bad_image": "error", "loader": "auto", "num_workers": 4}


@dataclasses.dataclass(frozen=True)
class SourceIndex:
  """Labels and ids of a source's splits (no pixels): what the protocols draw from."""

  labels: dict[str, np.ndarray]
  ids: dict[str, np.ndarray]
  num_classes: int


def labelled_mask(labels: np.ndarray) -> np.ndarray:
  """bool [n]: True where the image has a label (always, for single-label int labels [n]).

  Args:
    labels: int class ids [n] or multi-hot [n, C].
  """
  labels = np.asarray(labels)
  if labels.ndim == 1:
    return np.ones(labels.shape, bool)
  return labels.reshape(len(labels), -1).any(axis=1)


def count_unlabelled(labels: np.ndarray) -> int:
  """How many images have no label (0 for single-label data)."""
  return int(len(labels) - labelled_mask(labels).sum())


def _get(config, key: str):
  value = config.get(key, _DEFAULTS[key]) if hasattr(config, "get") else getattr(config, key, _DEFAULTS[key])
  return value


def validate_config(config) -> dict[str, Any]:
  """Checks the dataset config and returns its values with defaults filled in.

  Raises:
    ValueError: an unknown protocol, source or loader, or a bad value (naming the `dataset.*` key).
  """
  name = config.get("name") if hasattr(config, "get") else getattr(config, "name", None)
  if name not in PROTOCOLS:
    raise errors.ConfigError(f"dataset.name must be one of {PROTOCOLS}, got {name!r}")
  default_source = SOURCES[name][0]
  source = config.get("source", default_source) if hasattr(config, "get") else getattr(
      config, "source", default_source)
  if source not in SOURCES[name]:
    raise errors.ConfigError(f"dataset.source must be one of {SOURCES[name]} for dataset.name {name!r}, "
                             f"got {source!r}")
  values = {key: _get(config, key) for key in _DEFAULTS}
  values.update(name=name, source=source)
  image_io.check_on_bad_image(values["on_bad_image"])
  if values["loader"] not in LOADERS:
    raise errors.ConfigError(f"dataset.loader must be one of {LOADERS}, got {values['loader']!r}")
  size = values["image_size"]
  if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0):
    raise errors.ConfigError(f"dataset.image_size must be a positive int or None, got {size!r}")
  workers = values["num_workers"]
  if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
    raise errors.ConfigError(f"dataset.num_workers must be an int >= 0, got {workers!r}")
  if isinstance(values["split_seed"], bool) or not isinstance(values["split_seed"], (int, np.integer)):
    raise errors.ConfigError(f"dataset.split_seed must be an int, got {values['split_seed']!r}")
  if source == "tfds" and values["loader"] == "pillow":
    raise errors.ConfigError("dataset.loader 'pillow' cannot read dataset.source 'tfds' (the tfds cifar10 builder); "
                     "use dataset.source 'folder' with the CIFAR-10 JPEG tree, or loader 'auto'/'tfds'")
  return values


def use_tfds(values: dict[str, Any]) -> bool:
  """Whether this config loads through tfds (resolving loader "auto")."""
  if values["source"] == "tfds" or values["loader"] == "tfds":
    if not image_io.tensorflow_available():
      raise errors.ConfigError(f"dataset.loader {values['loader']!r} / dataset.source {values['source']!r} needs "
                       "tensorflow and tensorflow_datasets, which do not import; use dataset.loader 'pillow'")
    return True
  if values["loader"] == "pillow":
    return False
  return image_io.tensorflow_available()


# --------------------------------------------------------------------------------------------------
# Sources: split name -> Split (pixels, labels, ids, paths), in id order.


def load_source(values: dict[str, Any]) -> tuple[dict[str, Split], int]:
  """Loads every split of the configured source (pixels included), through tfds or Pillow (`use_tfds`).

  Returns:
    (split name -> Split in id order, number of classes).
  """
  if use_tfds(values):
    from drlih_jax.data import tfds_sources  # pylint: disable=import-outside-toplevel  (imports TensorFlow)
    return tfds_sources.load_splits(values)
  common = dict(image_size=values["image_size"], on_bad_image=values["on_bad_image"],
                num_workers=int(values["num_workers"]))
  if values["source"] == "folder":
    tree = folder_tree.list_tree(values["root"])
    return folder_tree.load_tree_pillow(tree, **common), len(tree.class_names)
  index = image_lists.index_lists(values["list_dir"], values["root"], LABEL_WIDTHS.get(values["name"]),
                                  REQUIRED_LISTS[values["name"]])
  return image_lists.load_lists_pillow(index, **common), index.num_labels


def _check_same_size(splits: dict[str, Split]) -> None:
  shapes = {name: s.images.shape[1:] for name, s in splits.items() if len(s)}
  if len(set(shapes.values())) > 1:
    raise image_io.ImageSizeError(
        f"image sizes differ between splits {shapes} and dataset.image_size is None; set dataset.image_size")


# --------------------------------------------------------------------------------------------------
# Protocols: ids per split, from labels and ids only.


def cifar_style_ids(labels: np.ndarray, ids: np.ndarray, seed: int, *, database_includes_train: bool,
                    queries_per_class: int = QUERIES_PER_CLASS,
                    train_per_class: int = TRAIN_PER_CLASS) -> dict[str, np.ndarray]:
  """Draws queries and training images per class from a single-label pool.

  For each class in ascending order, the class's ids (sorted) are permuted with one
  `np.random.default_rng(seed)` stream: the first `queries_per_class` are queries, the next
  `train_per_class` training images, the rest database only.

  Args:
    labels: int [n] class ids of the pool.
    ids: int64 [n] ids of the pool.
    seed: the split seed.
    database_includes_train: True: database = every non-query (cifar10-1); False: database = the rest
      (cifar10).
    queries_per_class: queries drawn per class.
    train_per_class: training images drawn per class.

  Returns:
    "train", "query", "database" -> sorted int64 ids.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise errors.DataError("the cifar10 protocols need single-label data (int labels [n])")
  rng = np.random.default_rng(seed)
  query, train, rest = [], [], []
  for c in np.unique(labels):
    members = np.sort(ids[labels == c])
    need = queries_per_class + train_per_class
    if len(members) < need:
      raise errors.DataError(f"class {c} has {len(members)} images; the protocol draws {queries_per_class} queries "
                       f"and {train_per_class} training images per class ({need})")
    members = members[rng.permutation(len(members))]
    query.append(members[:queries_per_class])
    train.append(members[queries_per_class:need])
    rest.append(members[need:])
  query, train, rest = (np.sort(np.concatenate(x)).astype(np.int64) for x in (query, train, rest))
  database = np.union1d(train, rest) if database_includes_train else rest
  return {"train": train, "query": query, "database": database}


def protocol_ids(name: str, labels: dict[str, np.ndarray], ids: dict[str, np.ndarray],
                 seed: int) -> dict[str, np.ndarray]:
  """Ids of the training set, queries and database for a protocol over a source's splits.

  Args:
    name: the protocol (not "digits").
    labels: source split name -> labels.
    ids: source split name -> int64 ids.
    seed: the split seed.

  Returns:
    "train", "query", "database" -> sorted int64 ids.
  """
  if name in ("cifar10", "cifar10-1"):
    all_labels = np.concatenate([labels[s] for s in ids])
    all_ids = np.concatenate([ids[s] for s in ids])
    return cifar_style_ids(all_labels, all_ids, seed, database_includes_train=name == "cifar10-1")
  for needed in ("train", "test"):
    if needed not in ids:
      raise errors.ConfigError(f"dataset.name {name!r} needs a {needed!r} split; the source has {sorted(ids)}")
  train = np.sort(ids["train"])
  query = np.sort(ids["test"])
  if name in ("cifar10-2", "folder"):
    database = train
  elif "database" in ids:
    database = np.sort(ids["database"])
  else:
    logging.warning("dataset.name %r: no database.txt in dataset.list_dir; the database is the training set "
                    "(train.txt)", name)
    database = train
  return {"train": train, "query": query, "database": database}


def _take_ids(table: Split, wanted: np.ndarray) -> Split:
  position = np.searchsorted(table.ids, wanted)
  if np.any(position >= len(table.ids)) or np.any(table.ids[np.minimum(position, len(table.ids) - 1)] != wanted):
    raise ValueError("internal error: protocol ids missing from the source")
  return table.take(position)


def _concat(splits: dict[str, Split]) -> Split:
  """All splits in one id-sorted table, each id once (list sources may list an image in two files)."""
  images = np.concatenate([s.images for s in splits.values()])
  labels = np.concatenate([s.labels for s in splits.values()])
  ids = np.concatenate([s.ids for s in splits.values()])
  with_paths = all(s.paths is not None for s in splits.values())
  paths = np.concatenate([s.paths for s in splits.values()]) if with_paths else None
  _, first = np.unique(ids, return_index=True)
  return Split(images, labels, ids, paths).take(first)


# --------------------------------------------------------------------------------------------------


def _log_unlabelled(data: RetrievalData, name: str) -> None:
  if not data.multi_label:
    return
  for split in ("query", "train", "database"):
    part = getattr(data, split)
    missing = count_unlabelled(part.labels)
    if missing:
      note = " (no relevant item: AP 0 in mAP)" if split == "query" else ""
      logging.warning("dataset %s: %d of %d %s images have no label%s", name, missing, len(part), split, note)


def load_retrieval_data(dataset_config) -> RetrievalData:
  """Loads a protocol's training set, queries and database (see the module docstring).

  Args:
    dataset_config: the `dataset` ConfigDict (keys in the module docstring).

  Returns:
    The RetrievalData (uint8 NHWC images, int32 labels [n] or uint8 multi-hot [n, C], int64 ids).
  """
  values = validate_config(dataset_config)
  if values["name"] == "digits":
    data = digits.load_digits(dataset_config)
  else:
    splits, num_classes = load_source(values)
    for split_name, part in splits.items():
      if not len(part):
        raise errors.DataError(f"dataset {values['name']!r}: source split {split_name!r} has no usable image "
                         "(every image was skipped)")
    if values["image_size"] is None:
      _check_same_size(splits)
    ids = protocol_ids(values["name"], {k: v.labels for k, v in splits.items()},
                       {k: v.ids for k, v in splits.items()}, int(values["split_seed"]))
    table = _concat(splits)
    data = RetrievalData(train=_take_ids(table, ids["train"]), query=_take_ids(table, ids["query"]),
                         database=_take_ids(table, ids["database"]), num_classes=num_classes)
  logging.info("dataset %s (source %s, seed %d): train %d, query %d, database %d, %d classes", values["name"],
               values["source"], values["split_seed"], len(data.train), len(data.query), len(data.database),
               data.num_classes)
  _log_unlabelled(data, values["name"])
  return data
