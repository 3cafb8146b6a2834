"""DeepHash-pytorch list files: parsing, indexing, fingerprint and TensorFlow-free loading.

A list file has one image per line: `<image path> <C space-separated 0/1 labels>`, e.g.

    images/0484_1544502940.jpg 1 0 0 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0

The path is the first whitespace-separated token (paths with spaces are not supported); a relative path is
relative to `dataset.root`, an absolute one (or a URL) is used as is. Blank lines are ignored. Labels are
returned as uint8 multi-hot rows [n, C] (also when every row happens to have one 1). `dataset.list_dir`
and `dataset.root` may be local folders or URLs (`gs://...`, see `storage`).

A dataset is a set of list files in `dataset.list_dir`, one per split: `train.txt`, `test.txt` and, when
present, `database.txt`. Example ids: every distinct image path gets one id, numbered in order of first
appearance over the files read in the order train, test, database (line order within a file); an image
listed in two files (e.g. a training image that is also in the database) has one id and is decoded once.
The ids depend only on the list files. Each image's path as listed (normalised: `./a.jpg` -> `a.jpg`)
travels with it (`Split.paths`).

Bad data (the message always names the list file and the 1-based line number):

* A label row of the wrong width: `ValueError` "list file /x/train.txt line 17: expected 21 labels, got 20".
  The expected width is the protocol's (21 for nuswide_21, 38 for mirflickr) or, for generic lists, the
  width of the first line of the first file. Not skippable.
* A label that is not 0 or 1, an empty list file, a missing list file: `ValueError` naming the file (and
  line). The same image listed twice with different labels: `ValueError` naming both lines.
* A missing, truncated or corrupt image: under `on_bad_image = "error"` an `image_io.BadImageError`
  naming the list file, the line and the image; under "skip" the line is dropped, counted and logged.
* Grayscale or differently sized images: see `image_io`.

The tfds builder of list files is `tfds_builders/drlih_image_list` (it indexes them with `index_lists`);
`tfds_sources` prepares and reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from typing import Optional

import numpy as np

from drlih_jax import errors
from drlih_jax.data import image_io
from drlih_jax.data import storage
from drlih_jax.data.types import Split

LIST_SPLITS = ("train", "test", "database")  # File order: also the order ids are given in.


@dataclasses.dataclass(frozen=True)
class ListFile:
  """One parsed list file.

  Attributes:
    path: the list file.
    image_paths: the first token of every non-blank line.
    labels: uint8 [n, C] multi-hot.
    line_numbers: int64 [n], 1-based line numbers in the file.
    sha256: hex digest of the file's bytes.
  """

  path: str
  image_paths: list[str]
  labels: np.ndarray
  line_numbers: np.ndarray
  sha256: str = ""


def parse_list_file(path: str, num_labels: Optional[int] = None) -> ListFile:
  """Parses a DeepHash-pytorch list file.

  Args:
    path: the list file (a local path or a URL).
    num_labels: the required label width; None takes the first line's width.

  Returns:
    The parsed file.

  Raises:
    ValueError: missing or empty file, wrong label width, labels other than 0/1 (naming file and line).
  """
  if not storage.is_file(path):
    raise errors.DataError(f"list file {path} not found")
  data = storage.read_bytes(path)
  image_paths, rows, line_numbers = [], [], []
  width_source = ""
  for line_number, line in enumerate(data.decode("utf-8").split("\n"), start=1):
    tokens = line.split()
    if not tokens:
      continue
    labels = tokens[1:]
    if num_labels is None:
      num_labels = len(labels)
      width_source = f" (the width of line {line_number})"
      if num_labels == 0:
        raise errors.DataError(f"list file {path} line {line_number}: no labels after the image path")
    if len(labels) != num_labels:
      raise errors.DataError(
          f"list file {path} line {line_number}: expected {num_labels} labels{width_source}, got {len(labels)}")
    bad = [t for t in labels if t not in ("0", "1")]
    if bad:
      raise errors.DataError(f"list file {path} line {line_number}: labels must be 0 or 1, got {bad[0]!r}")
    image_paths.append(tokens[0])
    rows.append(labels)
    line_numbers.append(line_number)
  if not image_paths:
    raise errors.DataError(f"list file {path} lists no images")
  labels = (np.asarray(rows) == "1").astype(np.uint8)
  return ListFile(path=path, image_paths=image_paths, labels=labels,
                  line_numbers=np.asarray(line_numbers, np.int64), sha256=hashlib.sha256(data).hexdigest())


@dataclasses.dataclass(frozen=True)
class ListIndex:
  """The distinct images of a set of list files.

  Attributes:
    root: folder relative image paths are resolved against (an absolute local path or a URL).
    files: split name -> parsed list file.
    paths: [u] image files (full local paths or URLs), in id order.
    listed: [u] each image's path as its first list line names it, normalised, in id order.
    labels: uint8 [u, C].
    ids: int64 [u] (0..u-1).
    where: [u] "list file X line N" of each image's first appearance.
    positions: split name -> int64 [n_split], rows of (paths, labels, ids) listed by that file, in line order.
  """

  root: str
  files: dict[str, ListFile]
  paths: list[str]
  listed: list[str]
  labels: np.ndarray
  ids: np.ndarray
  where: list[str]
  positions: dict[str, np.ndarray]

  @property
  def num_labels(self) -> int:
    return self.labels.shape[1]

  def fingerprint(self, num_workers: int = 8) -> str:
    """A hash of the list files' bytes and every listed image's path and size (or absence).

    What identifies a prepared tfds copy: editing a list file, or adding, removing or rewriting an image
    with another size changes it; `touch` or moving the images and lists does not.
    """
    digest = hashlib.sha256()
    for split, parsed in self.files.items():
      digest.update(f"{split}|{parsed.sha256}\n".encode())
    for listed, size in zip(self.listed, storage.sizes(self.paths, num_workers)):
      digest.update(f"{listed}|{'missing' if size is None else size}\n".encode())
    return digest.hexdigest()[:16]


def _normalise(token: str) -> str:
  if storage.is_url(token) or token.startswith("/"):
    return token
  return posixpath.normpath(token)


def index_lists(list_dir: str, root: str, num_labels: Optional[int] = None,
                required: tuple[str, ...] = ("train", "test")) -> ListIndex:
  """Parses `<list_dir>/{train,test,database}.txt` and gives every distinct image one id.

  Args:
    list_dir: folder with the list files (a local path or a URL).
    root: folder the listed relative image paths are relative to (a local path or a URL).
    num_labels: the required label width (None: the first line's width).
    required: the splits whose file must exist; the other files of `LIST_SPLITS` are read when present.

  Returns:
    The index.
  """
  if not list_dir:
    raise errors.ConfigError("dataset.list_dir must name the folder holding train.txt / test.txt [/ database.txt]")
  if not root:
    raise errors.ConfigError("dataset.root must name the folder the list files' image paths are relative to")
  list_dir = storage.absolute(list_dir)
  root = storage.absolute(root)
  files = {}
  for split in LIST_SPLITS:
    path = storage.join(list_dir, f"{split}.txt")
    if storage.is_file(path):
      parsed = parse_list_file(path, num_labels)
      num_labels = parsed.labels.shape[1]
      files[split] = parsed
    elif split in required:
      raise errors.DataError(f"list file {path} not found (dataset.list_dir = {list_dir})")

  id_of: dict[str, int] = {}
  paths, listed, rows, where = [], [], [], []
  positions = {}
  for split, parsed in files.items():
    pos = np.empty(len(parsed.image_paths), np.int64)
    for k, token in enumerate(parsed.image_paths):
      path = storage.join(root, token)
      line = f"list file {parsed.path} line {parsed.line_numbers[k]}"
      i = id_of.get(path)
      if i is None:
        i = id_of[path] = len(paths)
        paths.append(path)
        listed.append(_normalise(token))
        rows.append(parsed.labels[k])
        where.append(line)
      elif not np.array_equal(rows[i], parsed.labels[k]):
        raise errors.DataError(f"{line}: image {token} is also listed at {where[i]} with different labels")
      pos[k] = i
    positions[split] = pos
  return ListIndex(root=root, files=files, paths=paths, listed=listed, labels=np.stack(rows).astype(np.uint8),
                   ids=np.arange(len(paths), dtype=np.int64), where=where, positions=positions)


def _splits_from_table(index: ListIndex, images: np.ndarray, kept: np.ndarray) -> dict[str, Split]:
  """Per-file Splits (in id order) from the decoded distinct images; skipped images drop out."""
  row_of = np.full(len(index.paths), -1, np.int64)
  row_of[kept] = np.arange(len(kept))
  listed = np.asarray(index.listed, dtype=str)
  out = {}
  for split, pos in index.positions.items():
    ids = np.unique(pos)  # Sorted, and an image listed twice in one file counts once.
    ids = ids[row_of[ids] >= 0]
    out[split] = Split(images[row_of[ids]], index.labels[ids], index.ids[ids], listed[ids])
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
