"""Class-folder image trees: listing, TensorFlow-free loading, and a tfds builder.

Layout (the one the DRLIH authors' code and `torchvision.datasets.ImageFolder` read):

    <root>/<split>/<class>/<image>      e.g. train/cat/0001.jpg, test/cat/0001.jpg

Every sub-folder of `root` is a split (usually `train` and `test`); every sub-folder of a split is a class.
Images may sit in nested folders below their class folder. Files whose extension is not an image
extension (see `image_io.IMAGE_EXTENSIONS`) and hidden files are ignored (counted, logged at INFO).

Class ids: the class folder names sorted (numerically when every name is an integer, as in the authors'
`train/<class_id>/` trees, else as strings), numbered from 0. Every split must have the same class folders.

Example ids: images are numbered over the splits in the order `train`, `test`, then the other split names
sorted, and within a split by (class id, path relative to the class folder). CIFAR-10 as
`train/<class>/NNNN.jpg` + `test/<class>/NNNN.jpg` therefore gets ids 0-49,999 for train and
50,000-59,999 for test. The ids depend only on the file names, not on the loader.

Bad data:

* `root` missing or without split folders, a split without class folders: `ValueError` naming the folder.
* A class folder with no image files ("empty class folder"), or a class folder present in one split and
  missing in another: `ValueError` naming the folder (class ids would otherwise shift silently). This is
  not skippable.
* Unreadable, truncated or corrupt images, grayscale images, images of different sizes: see `image_io`.

The tfds builder (`DrlihClassFolder`, tfds name "drlih_class_folder", not registered in the tfds
registry) decodes with `image_io.decode_image` at prepare time and stores the decoded pixels as PNG
(lossless), so reading it back gives the same uint8 pixels as the Pillow loader, bit for bit. Its config
name includes a fingerprint of the tree (relative paths, sizes, modification times), the image size and
the bad-image policy: a changed tree is prepared again into a new folder of `data_dir`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Optional

from absl import logging
import numpy as np

from drlih_jax.data import image_io
from drlih_jax.data.types import Split

BUILDER_NAME = "drlih_class_folder"
_CHUNK = 2048  # Images decoded per thread-pool call while preparing the tfds dataset.


@dataclasses.dataclass(frozen=True)
class FolderTree:
  """The listing of a class-folder tree.

  Attributes:
    root: the tree's root folder (absolute).
    class_names: class folder names, in class-id order.
    splits: split name -> (paths [n] (absolute), labels int32 [n], ids int64 [n]), in id order.
  """

  root: str
  class_names: tuple[str, ...]
  splits: dict[str, tuple[list[str], np.ndarray, np.ndarray]]

  def fingerprint(self) -> str:
    """A hash of every file's relative path, size and modification time."""
    digest = hashlib.sha256()
    for name in self.splits:
      for path in self.splits[name][0]:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, self.root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def split_order(names) -> list[str]:
  """train, test, then the other split names sorted."""
  first = [n for n in ("train", "test") if n in names]
  return first + sorted(n for n in names if n not in ("train", "test"))


def _sorted_classes(names) -> list[str]:
  names = list(names)
  if names and all(n.isdigit() for n in names):
    return sorted(names, key=lambda n: (int(n), n))
  return sorted(names)


def _subdirs(folder: str) -> list[str]:
  return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def list_tree(root: str) -> FolderTree:
  """Lists a class-folder tree (no image is opened).

  Args:
    root: the folder holding the split folders.

  Returns:
    The tree's classes and per-split paths, labels and ids.

  Raises:
    ValueError: missing root, no split folders, a split without class folders, an empty class folder or
      class folders that differ between splits (the message names the folder).
  """
  if not root:
    raise ValueError("dataset.root must name the class-folder tree (root/<split>/<class>/<image>)")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise ValueError(f"dataset.root {root} is not a folder")
  split_names = split_order(_subdirs(root))
  if not split_names:
    raise ValueError(f"class-folder tree {root} has no split folders (expected root/<split>/<class>/<image>)")
  classes_per_split = {}
  for split in split_names:
    classes = _subdirs(os.path.join(root, split))
    if not classes:
      raise ValueError(f"split folder {os.path.join(root, split)} has no class folders")
    classes_per_split[split] = set(classes)
  all_classes = set().union(*classes_per_split.values())
  for split in split_names:
    missing = sorted(all_classes - classes_per_split[split])
    if missing:
      raise ValueError(
          f"split folder {os.path.join(root, split)} lacks class folder(s) {missing} that other splits have; "
          "every split must have the same class folders")
  class_names = _sorted_classes(all_classes)

  splits = {}
  next_id = 0
  ignored = 0
  for split in split_names:
    paths, labels = [], []
    for label, name in enumerate(class_names):
      folder = os.path.join(root, split, name)
      found = []
      for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
          path = os.path.join(dirpath, filename)
          if image_io.is_image_file(filename):
            found.append(os.path.relpath(path, folder))
          else:
            ignored += 1
      if not found:
        raise ValueError(
            f"class folder {folder} contains no image files (extensions {image_io.IMAGE_EXTENSIONS}); "
            "remove the folder or add its images")
      found.sort()
      paths.extend(os.path.join(folder, f) for f in found)
      labels.extend([label] * len(found))
    n = len(paths)
    splits[split] = (paths, np.asarray(labels, np.int32), np.arange(next_id, next_id + n, dtype=np.int64))
    next_id += n
  if ignored:
    logging.info("class-folder tree %s: ignored %d non-image files", root, ignored)
  return FolderTree(root=root, class_names=tuple(class_names), splits=splits)


def load_tree_pillow(tree: FolderTree, *, image_size: Optional[int], on_bad_image: str,
                     num_workers: int) -> dict[str, Split]:
  """Decodes every image of the tree with Pillow (threaded), without TensorFlow.

  Returns:
    split name -> Split (in id order; skipped images are left out).
  """
  out = {}
  expected_hw = None
  for split, (paths, labels, ids) in tree.splits.items():
    result = image_io.load_images(paths, image_size=image_size, on_bad_image=on_bad_image,
                                  num_workers=num_workers, expected_hw=expected_hw)
    if image_size is None and len(result.images):
      expected_hw = result.images.shape[1:3]
    out[split] = Split(result.images, labels[result.kept], ids[result.kept])
  return out


@functools.cache
def builder_class():
  """The tfds builder class (defined on first use, so importing this module does not import TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  @dataclasses.dataclass(eq=False)
  class ClassFolderConfig(tfds.core.BuilderConfig):
    """Where the tree is and how to decode it."""
    root: str = ""
    image_size: Optional[int] = None
    on_bad_image: str = "error"
    num_workers: int = 4
    class_names: tuple = ()
    split_names: tuple = ()

  class DrlihClassFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of a class-folder tree: image (uint8 HxWx3, PNG), label (ClassLabel), id (int64)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Decoded with Pillow, stored as PNG."}
    BUILDER_CONFIG_CLASS = ClassFolderConfig

    def _info(self):
      size = self.builder_config.image_size
      shape = (size, size, 3) if size else (None, None, 3)
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png"),
              "label": tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
              "id": tfds.features.Scalar(dtype=np.int64),
          }),
          description=f"Class-folder tree {self.builder_config.root}",
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      tree = list_tree(self.builder_config.root)
      if tree.class_names != tuple(self.builder_config.class_names):
        raise ValueError(f"class folders of {tree.root} changed while preparing the tfds dataset")
      return {split: self._generate_examples(*tree.splits[split]) for split in tree.splits}

    def _generate_examples(self, paths, labels, ids):
      config = self.builder_config
      for start in range(0, len(paths), _CHUNK):
        stop = start + _CHUNK
        result = image_io.load_images(paths[start:stop], image_size=config.image_size,
                                      on_bad_image=config.on_bad_image, num_workers=config.num_workers,
                                      expected_hw=getattr(self, "_expected_hw", None))
        if config.image_size is None and len(result.images):
          self._expected_hw = result.images.shape[1:3]  # Native sizes must agree across chunks and splits.
        for image, k in zip(result.images, result.kept):
          i = start + int(k)
          yield int(ids[i]), {"image": image_io.encode_png(image), "label": int(labels[i]), "id": int(ids[i])}

  return DrlihClassFolder, ClassFolderConfig


def make_builder(tree: FolderTree, *, data_dir: Optional[str], image_size: Optional[int],
                 on_bad_image: str, num_workers: int):
  """A `DrlihClassFolder` builder for this tree (not yet prepared)."""
  builder_cls, config_cls = builder_class()
  size_tag = f"s{image_size}" if image_size else "native"
  name = f"{os.path.basename(tree.root) or 'root'}_{size_tag}_{on_bad_image}_{tree.fingerprint()}"
  name = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
  config = config_cls(
      name=name, version=builder_cls.VERSION, root=tree.root, image_size=image_size,
      on_bad_image=on_bad_image, num_workers=num_workers, class_names=tree.class_names,
      split_names=tuple(tree.splits))
  return builder_cls(config=config, data_dir=data_dir)


def prepare(builder) -> None:
  """Prepares the builder's dataset once into its data_dir (a no-op when already there)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))


def read_all(builder, split: str, decoders=None, chunk: int = 4096) -> dict[str, np.ndarray]:
  """Every example of a prepared tfds split as numpy arrays, in the stored order.

  Args:
    builder: a prepared tfds builder.
    split: the split name.
    decoders: tfds decoders (e.g. {"image": tfds.decode.SkipDecoding()} for the encoded bytes).
    chunk: examples per tf.data batch while reading.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  dataset = builder.as_dataset(split=split, decoders=decoders).batch(chunk)
  parts = list(tfds.as_numpy(dataset))
  if not parts:
    raise ValueError(f"tfds dataset {builder.data_dir} split {split!r} is empty (every image was skipped?)")
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def read_split(builder, split: str, label_dtype=np.int32) -> Split:
  """Reads a prepared split into host memory, in id order."""
  arrays = read_all(builder, split)
  order = np.argsort(arrays["id"], kind="stable")
  return Split(arrays["image"][order], arrays["label"][order].astype(label_dtype), arrays["id"][order].astype(np.int64))


def load_tree_tfds(tree: FolderTree, *, data_dir: Optional[str], image_size: Optional[int],
                   on_bad_image: str, num_workers: int) -> dict[str, Split]:
  """Prepares (once) and reads the tree through the tfds builder.

  Returns:
    split name -> Split, in id order, with the same pixels as `load_tree_pillow`.
  """
  builder = make_builder(tree, data_dir=data_dir, image_size=image_size, on_bad_image=on_bad_image,
                         num_workers=num_workers)
  prepare(builder)
  return {split: read_split(builder, split) for split in tree.splits}
