"""Class-folder image trees: listing, fingerprint and TensorFlow-free loading.

Layout (the one the DRLIH authors' code and `torchvision.datasets.ImageFolder` read):

    <root>/<split>/<class>/<image>      e.g. train/cat/0001.jpg, test/cat/0001.jpg

`root` is a local folder or a URL such as `gs://bucket/cifar10` (see `storage`). Every sub-folder of
`root` is a split (usually `train` and `test`); every sub-folder of a split is a class. Images may sit in
nested folders below their class folder; symbolic links are followed, but never into a folder already
walked (a `train/a/loop -> .` link adds nothing). Files whose extension is not an image extension (see
`image_io.IMAGE_EXTENSIONS`) and hidden files are ignored (counted, logged at INFO).

Class ids: the class folder names sorted (numerically when every name is an integer, as in the authors'
`train/<class_id>/` trees, else as strings), numbered from 0. Every split must have the same class folders.

Example ids: images are numbered over the splits in the order `train`, `test`, then the other split names
sorted, and within a split by (class id, path relative to the class folder). CIFAR-10 as
`train/<class>/NNNN.jpg` + `test/<class>/NNNN.jpg` therefore gets ids 0-49,999 for train and
50,000-59,999 for test. The ids depend only on the file names, not on the loader. Each image's path
relative to `root` (`train/cat/0017.jpg`) travels with it (`Split.paths`).

Bad data:

* `root` missing or without split folders, a split without class folders: `ValueError` naming the folder.
* A class folder with no image files ("empty class folder"), or a class folder present in one split and
  missing in another: `ValueError` naming the folder (class ids would otherwise shift silently). This is
  not skippable.
* Unreadable, truncated or corrupt images, grayscale images, images of different sizes: see `image_io`.

The tfds builder of these trees is `tfds_builders/drlih_class_folder` (it lists the tree with
`list_tree`); `tfds_sources` prepares and reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional

from absl import logging
import numpy as np

from drlih_jax import errors
from drlih_jax.data import image_io
from drlih_jax.data import storage
from drlih_jax.data.types import Split


@dataclasses.dataclass(frozen=True)
class FolderTree:
  """The listing of a class-folder tree.

  Attributes:
    root: the tree's root (an absolute local path or a URL).
    class_names: class folder names, in class-id order.
    splits: split name -> (paths relative to `root` ('/'-separated, e.g. "train/cat/0017.jpg") [n],
      labels int32 [n], ids int64 [n]), in id order.
  """

  root: str
  class_names: tuple[str, ...]
  splits: dict[str, tuple[list[str], np.ndarray, np.ndarray]]

  def files(self, split: str) -> list[str]:
    """The split's image files (full local paths or URLs), in id order."""
    return [storage.join(self.root, rel) for rel in self.splits[split][0]]

  def fingerprint(self, num_workers: int = 8) -> str:
    """A hash of every image's path relative to `root` and its size in bytes.

    What identifies a prepared tfds copy of the tree: renaming, adding, removing or rewriting an image
    with another size changes it; `touch` or moving the whole tree does not.
    """
    digest = hashlib.sha256()
    for split in self.splits:
      rels = self.splits[split][0]
      for rel, size in zip(rels, storage.sizes(self.files(split), num_workers)):
        digest.update(f"{rel}|{size}\n".encode())
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


def list_tree(root: str) -> FolderTree:
  """Lists a class-folder tree (no image is opened).

  Args:
    root: the folder holding the split folders (a local path or a URL).

  Returns:
    The tree's classes and per-split relative paths, labels and ids.

  Raises:
    ValueError: missing root, no split folders, a split without class folders, an empty class folder or
      class folders that differ between splits (the message names the folder).
  """
  if not root:
    raise errors.ConfigError("dataset.root must name the class-folder tree (root/<split>/<class>/<image>)")
  root = storage.absolute(root)
  if not storage.is_dir(root):
    raise errors.DataError(f"dataset.root {root} is not a folder")
  split_names = split_order(storage.subdirs(root))
  if not split_names:
    raise errors.DataError(f"class-folder tree {root} has no split folders (expected root/<split>/<class>/<image>)")
  classes_per_split = {}
  for split in split_names:
    classes = storage.subdirs(storage.join(root, split))
    if not classes:
      raise errors.DataError(f"split folder {storage.join(root, split)} has no class folders")
    classes_per_split[split] = set(classes)
  all_classes = set().union(*classes_per_split.values())
  for split in split_names:
    missing = sorted(all_classes - classes_per_split[split])
    if missing:
      raise errors.DataError(
          f"split folder {storage.join(root, split)} lacks class folder(s) {missing} that other splits have; "
          "every split must have the same class folders")
  class_names = _sorted_classes(all_classes)

  splits = {}
  next_id = 0
  ignored = 0
  for split in split_names:
    rels, labels = [], []
    for label, name in enumerate(class_names):
      folder = storage.join(root, f"{split}/{name}")
      files = storage.walk_files(folder)
      found = [f for f in files if image_io.is_image_file(f)]
      ignored += len(files) - len(found)
      if not found:
        raise errors.DataError(
            f"class folder {folder} contains no image files (extensions {image_io.IMAGE_EXTENSIONS}); "
            "remove the folder or add its images")
      rels.extend(f"{split}/{name}/{f}" for f in found)
      labels.extend([label] * len(found))
    n = len(rels)
    splits[split] = (rels, np.asarray(labels, np.int32), np.arange(next_id, next_id + n, dtype=np.int64))
    next_id += n
  if ignored:
    logging.info("class-folder tree %s: ignored %d non-image files", root, ignored)
  return FolderTree(root=root, class_names=tuple(class_names), splits=splits)


def load_tree_pillow(tree: FolderTree, *, image_size: Optional[int], on_bad_image: str,
                     num_workers: int) -> dict[str, Split]:
  """Decodes every image of the tree with Pillow (threaded), without TensorFlow.

  Returns:
    split name -> Split (in id order, with relative paths; skipped images are left out).
  """
  out = {}
  expected_hw = None
  for split, (rels, labels, ids) in tree.splits.items():
    result = image_io.load_images(tree.files(split), image_size=image_size, on_bad_image=on_bad_image,
                                  num_workers=num_workers, expected_hw=expected_hw)
    if image_size is None and len(result.images):
      expected_hw = result.images.shape[1:3]
    out[split] = Split(result.images, labels[result.kept], ids[result.kept],
                       np.asarray(rels, dtype=str)[result.kept])
  return out
