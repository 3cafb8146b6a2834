"""The configured source through tfds: drlih_class_folder, drlih_image_list or the official cifar10.

Imports tensorflow_datasets: `protocols` (loader "tfds"/"auto") and `streaming` import this module only
when they use tfds. Every source is prepared once by `tfds_io.prepare` (process 0 first; a prepared copy
is reused while the files' fingerprint is unchanged) into `dataset.data_dir` (None: tfds' default; may be
a gs:// URL), with the decode settings as the config name (`decode_config`).

The official tfds `cifar10` ids are `train_<k>` -> k and `test_<k>` -> 50,000 + k (`cifar10_id`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import tensorflow_datasets as tfds

from drlih_jax import errors
from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data import image_lists
from drlih_jax.data import protocols
from drlih_jax.data import storage
from drlih_jax.data import tfds_io
from drlih_jax.data.tfds_builders import decode_config
from drlih_jax.data.tfds_builders.drlih_class_folder import drlih_class_folder_dataset_builder
from drlih_jax.data.tfds_builders.drlih_image_list import drlih_image_list_dataset_builder
from drlih_jax.data.types import Split


def cifar10_id(text: str) -> int:
  """The official tfds cifar10 `id` ("train_16399", "test_00042") as an int64 id (test offset 50,000)."""
  split, _, number = text.partition("_")
  if split not in ("train", "test") or not number.isdigit():
    raise errors.DataError(f"unexpected tfds cifar10 id {text!r}")
  return int(number) + (50_000 if split == "test" else 0)


@dataclasses.dataclass(frozen=True)
class Source:
  """A prepared source: its builder, split names, number of classes and label dtype."""

  builder: tfds.core.DatasetBuilder
  splits: tuple[str, ...]
  num_classes: int
  label_dtype: type


def prepare_source(values: dict[str, Any], processes: Optional[tfds_io.Processes] = None) -> Source:
  """Prepares (once) the tfds dataset of a validated dataset config (`protocols.validate_config`)."""
  data_dir, workers = values["data_dir"], int(values["num_workers"])
  config = decode_config.config_name(values["image_size"], values["on_bad_image"])
  if values["source"] == "tfds":
    try:
      builder = tfds_io.prepare(lambda: tfds.builder("cifar10", data_dir=data_dir), processes=processes)
    except OSError as error:  # requests' ConnectionError and the like: the download, not a bug here
      raise errors.DataError(
          f"tfds could not download cifar10 into {data_dir or 'the tfds data dir (TFDS_DATA_DIR)'} "
          f"({type(error).__name__}: {str(error)[:200]}). Without internet access, prepare it where there is "
          "access and copy the data dir here (--config.dataset.data_dir), or read a CIFAR-10 class-folder "
          "tree: --config.dataset.source=folder --config.dataset.root=DIR") from error
    return Source(builder, ("train", "test"), builder.info.features["label"].num_classes, np.int32)
  if values["source"] == "folder":
    tree = folder_tree.list_tree(values["root"])
    builder = tfds_io.prepare(
        lambda: drlih_class_folder_dataset_builder.Builder(config=config, data_dir=data_dir, num_workers=workers),
        manual_dir=tree.root, fingerprint=tree.fingerprint(workers), processes=processes)
    return Source(builder, tuple(tree.splits), len(tree.class_names), np.int32)
  required = protocols.REQUIRED_LISTS[values["name"]]
  index = image_lists.index_lists(values["list_dir"], values["root"],
                                  protocols.LABEL_WIDTHS.get(values["name"]), required)
  list_dir = storage.absolute(values["list_dir"])
  builder = tfds_io.prepare(
      lambda: drlih_image_list_dataset_builder.Builder(config=config, data_dir=data_dir, list_dir=list_dir,
                                                       num_workers=workers),
      manual_dir=index.root, fingerprint=index.fingerprint(workers), processes=processes)
  return Source(builder, tuple(index.files), index.num_labels, np.uint8)


def _ids(source: Source, arrays: dict[str, np.ndarray]) -> np.ndarray:
  if source.builder.name == "cifar10":
    return np.array([cifar10_id(t) for t in tfds_io.text_array(arrays["id"])], np.int64)
  return arrays["id"].astype(np.int64)


def load_splits(values: dict[str, Any],
                processes: Optional[tfds_io.Processes] = None) -> tuple[dict[str, Split], int]:
  """Every split of the configured source, decoded, in id order.

  Returns:
    (split name -> Split, number of classes); the same pixels, labels, ids and paths as the Pillow loader.
  """
  source = prepare_source(values, processes)
  out = {}
  for split in source.splits:
    arrays = tfds_io.read_all(source.builder, split)
    ids = _ids(source, arrays)
    images = arrays["image"]
    size = values["image_size"]
    if size is not None and images.shape[1:3] != (size, size):  # The official cifar10 is 32x32.
      images = np.stack([image_io.resize_image(im, size) for im in images])
    order = np.argsort(ids, kind="stable")
    paths = tfds_io.text_array(arrays["path"][order]) if "path" in arrays else None
    out[split] = Split(images[order], arrays["label"][order].astype(source.label_dtype), ids[order], paths)
  return out, source.num_classes


def encoded_splits(values: dict[str, Any], processes: Optional[tfds_io.Processes] = None
                   ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Every split of the configured source with its images left encoded (PNG bytes), in stored order.

  Returns:
    split name -> (encoded images [n] object, labels, int64 ids).
  """
  source = prepare_source(values, processes)
  out = {}
  for split in source.splits:
    arrays = tfds_io.read_all(source.builder, split, decoders={"image": tfds.decode.SkipDecoding()})
    out[split] = (arrays["image"], arrays["label"].astype(source.label_dtype), _ids(source, arrays))
  return out

