"""DeepHash-pytorch list files: parsing, TensorFlow-free loading, and a tfds builder.

A list file has one image per line: `<image path> <C space-separated 0/1 labels>`, e.g.

    images/0484_1544502940.jpg 1 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0

The path is the first whitespace-separated token (paths with spaces are not supported); a relative path is
relative to `dataset.root`, an absolute one is used as is. Blank lines are ignored. Labels are returned as
uint8 multi-hot rows [n, C] (also when every row happens to have one 1).

A dataset is a set of list files in `dataset.list_dir`, one per split: `train.txt`, `test.txt` and, when
present, `database.txt`. Example ids: every distinct image path gets one id, numbered in order of first
appearance over the files read in the order train, test, database (line order within a file); an image
listed in two files (e.g. a training image that is also in the database) has one id and is decoded once.
The ids depend only on the list files.

Bad data (the message always names the list file and the 1-based line number):

* A label row of the wrong width: `ValueError` "list file /x/train.txt line 17: expected 21 labels, got 20".
  The expected width is the protocol's (21 for nuswide_21, 38 for mirflickr) or, for generic lists, the
  width of the first line of the first file. Not skippable.
* A label that is not 0 or 1, an empty list file, a missing list file: `ValueError` naming the file (and
  line). The same image listed twice with different labels: `ValueError` naming both lines.
* A missing, truncated or corrupt image: under `on_bad_image = "error"` an `image_io.BadImageError`
  naming the list file, the line and the image; under "skip" the line is dropped, counted and logged.
* Grayscale or differently sized images: see `image_io`.

The tfds builder (`DrlihImageList`, tfds name "drlih_image_list", not registered in the tfds registry) has
one split per list file; features image (uint8 HxWx3, decoded with Pillow and stored as PNG, so pixels
equal the Pillow loader's bit for bit), label (uint8 multi-hot Tensor [C]) and id (int64). Its config name
includes a fingerprint of the list files' bytes and of the images' sizes and modification times.
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

BUILDER_NAME = "drlih_image_list"
LIST_SPLITS = ("train", "test", "database")  # File order: also the order ids are given in.
_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class ListFile:
  """One parsed list file.

  Attributes:
    path: the list file.
    image_paths: the first token of every non-blank line.
    labels: uint8 [n, C] multi-hot.
    line_numbers: int64 [n], 1-based line numbers in the file.
  """

  path: str
  image_paths: list[str]
  labels: np.ndarray
  line_numbers: np.ndarray


def parse_list_file(path: str, num_labels: Optional[int] = None) -> ListFile:
  """Parses a DeepHash-pytorch list file.

  Args:
    path: the list file.
    num_labels: the required label width; None takes the first line's width.

  Returns:
    The parsed file.

  Raises:
    ValueError: missing or empty file, wrong label width, labels other than 0/1 (naming file and line).
  """
  if not os.path.isfile(path):
    raise ValueError(f"list file {path} not found")
  image_paths, rows, line_numbers = [], [], []
  width_source = ""
  with open(path, "r", encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      tokens = line.split()
      if not tokens:
        continue
      labels = tokens[1:]
      if num_labels is None:
        num_labels = len(labels)
        width_source = f" (the width of line {line_number})"
        if num_labels == 0:
          raise ValueError(f"list file {path} line {line_number}: no labels after the image path")
      if len(labels) != num_labels:
        raise ValueError(
            f"list file {path} line {line_number}: expected {num_labels} labels{width_source}, got {len(labels)}")
      bad = [t for t in labels if t not in ("0", "1")]
      if bad:
        raise ValueError(f"list file {path} line {line_number}: labels must be 0 or 1, got {bad[0]!r}")
      image_paths.append(tokens[0])
      rows.append(labels)
      line_numbers.append(line_number)
  if not image_paths:
    raise ValueError(f"list file {path} lists no images")
  labels = (np.asarray(rows) == "1").astype(np.uint8)
  return ListFile(path=path, image_paths=image_paths, labels=labels,
                  line_numbers=np.asarray(line_numbers, np.int64))


@dataclasses.dataclass(frozen=True)
class ListIndex:
  """The distinct images of a set of list files.

  Attributes:
    root: folder relative image paths are resolved against (absolute).
    files: split name -> parsed list file.
    paths: [u] absolute image paths, in id order.
    labels: uint8 [u, C].
    ids: int64 [u] (0..u-1).
    where: [u] "list file X line N" of each image's first appearance.
    positions: split name -> int64 [n_split], rows of (paths, labels, ids) listed by that file, in line order.
  """

  root: str
  files: dict[str, ListFile]
  paths: list[str]
  labels: np.ndarray
  ids: np.ndarray
  where: list[str]
  positions: dict[str, np.ndarray]

  @property
  def num_labels(self) -> int:
    return self.labels.shape[1]

  def fingerprint(self) -> str:
    """A hash of the list files' bytes and every image's size and modification time (or absence)."""
    digest = hashlib.sha256(self.root.encode())
    for split, parsed in self.files.items():
      with open(parsed.path, "rb") as f:
        digest.update(split.encode() + b"|" + f.read())
    for path in self.paths:
      try:
        stat = os.stat(path)
        digest.update(f"{stat.st_size}|{stat.st_mtime_ns}\n".encode())
      except OSError:
        digest.update(b"missing\n")
    return digest.hexdigest()[:16]


def index_lists(list_dir: str, root: str, num_labels: Optional[int] = None,
                required: tuple[str, ...] = ("train", "test")) -> ListIndex:
  """Parses `<list_dir>/{train,test,database}.txt` and gives every distinct image one id.

  Args:
    list_dir: folder with the list files.
    root: folder the listed relative image paths are relative to.
    num_labels: the required label width (None: the first line's width).
    required: the splits whose file must exist; the other files of `LIST_SPLITS` are read when present.

  Returns:
    The index.
  """
  if not list_dir:
    raise ValueError("dataset.list_dir must name the folder holding train.txt / test.txt [/ database.txt]")
  if not root:
    raise ValueError("dataset.root must name the folder the list files' image paths are relative to")
  list_dir = os.path.abspath(os.path.expanduser(list_dir))
  root = os.path.abspath(os.path.expanduser(root))
  files = {}
  for split in LIST_SPLITS:
    path = os.path.join(list_dir, f"{split}.txt")
    if os.path.isfile(path):
      parsed = parse_list_file(path, num_labels)
      num_labels = parsed.labels.shape[1]
      files[split] = parsed
    elif split in required:
      raise ValueError(f"list file {path} not found (dataset.list_dir = {list_dir})")

  id_of: dict[str, int] = {}
  paths, rows, where = [], [], []
  positions = {}
  for split, parsed in files.items():
    pos = np.empty(len(parsed.image_paths), np.int64)
    for k, rel in enumerate(parsed.image_paths):
      path = os.path.normpath(os.path.join(root, rel))
      line = f"list file {parsed.path} line {parsed.line_numbers[k]}"
      i = id_of.get(path)
      if i is None:
        i = id_of[path] = len(paths)
        paths.append(path)
        rows.append(parsed.labels[k])
        where.append(line)
      elif not np.array_equal(rows[i], parsed.labels[k]):
        raise ValueError(f"{line}: image {rel} is also listed at {where[i]} with different labels")
      pos[k] = i
    positions[split] = pos
  return ListIndex(root=root, files=files, paths=paths, labels=np.stack(rows).astype(np.uint8),
                   ids=np.arange(len(paths), dtype=np.int64), where=where, positions=positions)


def _splits_from_table(index: ListIndex, images: np.ndarray, kept: np.ndarray) -> dict[str, Split]:
  """Per-file Splits (in id order) from the decoded distinct images; skipped images drop out."""
  row_of = np.full(len(index.paths), -1, np.int64)
  row_of[kept] = np.arange(len(kept))
  out = {}
  for split, pos in index.positions.items():
    ids = np.unique(pos)  # Sorted, and an image listed twice in one file counts once.
    ids = ids[row_of[ids] >= 0]
    out[split] = Split(images[row_of[ids]], index.labels[ids], index.ids[ids])
  return out


def load_lists_pillow(index: ListIndex, *, image_size: Optional[int], on_bad_image: str,
                      num_workers: int) -> dict[str, Split]:
  """Decodes every listed image with Pillow (threaded), without TensorFlow.

  Returns:
    split name -> Split with the images of that list file, in id order.
  """
  result = image_io.load_images(index.paths, image_size=image_size, on_bad_image=on_bad_image,
                                num_workers=num_workers, describe=lambda i: index.where[i])
  return _splits_from_table(index, result.images, result.kept)


@functools.cache
def builder_class():
  """The tfds builder class (defined on first use, so importing this module does not import TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  @dataclasses.dataclass(eq=False)
  class ImageListConfig(tfds.core.BuilderConfig):
    """Which list files, where the images are, and how to decode them."""
    list_dir: str = ""
    root: str = ""
    num_labels: int = 0
    image_size: Optional[int] = None
    on_bad_image: str = "error"
    num_workers: int = 4
    required: tuple = ("train", "test")

  class DrlihImageList(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images named by list files: image (uint8 HxWx3, PNG), label (uint8 multi-hot [C]), id (int64)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Decoded with Pillow, stored as PNG."}
    BUILDER_CONFIG_CLASS = ImageListConfig

    def _info(self):
      config = self.builder_config
      shape = (config.image_size, config.image_size, 3) if config.image_size else (None, None, 3)
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png"),
              "label": tfds.features.Tensor(shape=(config.num_labels,), dtype=np.uint8),
              "id": tfds.features.Scalar(dtype=np.int64),
          }),
          description=f"List files in {config.list_dir} over images in {config.root}",
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      config = self.builder_config
      index = index_lists(config.list_dir, config.root, config.num_labels, tuple(config.required))
      # Images listed by several files are decoded once: id -> PNG bytes, kept for those images only.
      counts = np.bincount(np.concatenate([np.unique(p) for p in index.positions.values()]),
                           minlength=len(index.paths))
      self._shared = set(np.flatnonzero(counts > 1).tolist())
      self._decoded = {}
      return {split: self._generate_examples(index, split) for split in index.files}

    def _generate_examples(self, index: ListIndex, split: str):
      config = self.builder_config
      ids = np.unique(index.positions[split])
      for start in range(0, len(ids), _CHUNK):
        chunk = [int(i) for i in ids[start:start + _CHUNK]]
        todo = [i for i in chunk if i not in self._decoded]
        result = image_io.load_images(
            [index.paths[i] for i in todo], image_size=config.image_size, on_bad_image=config.on_bad_image,
            num_workers=config.num_workers, describe=lambda k, todo=todo: index.where[todo[k]],
            expected_hw=getattr(self, "_expected_hw", None))
        if config.image_size is None and len(result.images):
          self._expected_hw = result.images.shape[1:3]
        fresh = {todo[int(k)]: image_io.encode_png(image) for image, k in zip(result.images, result.kept)}
        self._decoded.update((i, png) for i, png in fresh.items() if i in self._shared)
        for i in chunk:
          png = fresh.get(i, self._decoded.get(i))
          if png is not None:  # None: skipped under on_bad_image = "skip".
            yield i, {"image": png, "label": index.labels[i], "id": i}

  return DrlihImageList, ImageListConfig


def make_builder(index: ListIndex, *, data_dir: Optional[str], image_size: Optional[int],
                 on_bad_image: str, num_workers: int, required: tuple[str, ...] = ("train", "test")):
  """A `DrlihImageList` builder for these list files (not yet prepared)."""
  builder_cls, config_cls = builder_class()
  list_dir = os.path.dirname(next(iter(index.files.values())).path)
  size_tag = f"s{image_size}" if image_size else "native"
  name = f"{os.path.basename(list_dir) or 'lists'}_{size_tag}_{on_bad_image}_{index.fingerprint()}"
  name = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
  config = config_cls(
      name=name, version=builder_cls.VERSION, list_dir=list_dir, root=index.root,
      num_labels=index.num_labels, image_size=image_size, on_bad_image=on_bad_image,
      num_workers=num_workers, required=tuple(required))
  return builder_cls(config=config, data_dir=data_dir)


def load_lists_tfds(index: ListIndex, *, data_dir: Optional[str], image_size: Optional[int],
                    on_bad_image: str, num_workers: int,
                    required: tuple[str, ...] = ("train", "test")) -> dict[str, Split]:
  """Prepares (once) and reads the list files through the tfds builder (same pixels as Pillow)."""
  from drlih_jax.data import folder_builder  # pylint: disable=import-outside-toplevel
  builder = make_builder(index, data_dir=data_dir, image_size=image_size, on_bad_image=on_bad_image,
                         num_workers=num_workers, required=required)
  folder_builder.prepare(builder)
  out = {}
  for split in index.files:
    out[split] = folder_builder.read_split(builder, split, label_dtype=np.uint8)
  logging.info("read %s from tfds %s", {k: len(v) for k, v in out.items()}, builder.data_dir)
  return out
