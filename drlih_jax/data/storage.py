"""Where dataset inputs are read from: local folders, or URLs such as `gs://bucket/tree` (etils.epath).

`dataset.root` (a class-folder tree, or the images of list files) and `dataset.list_dir` may be local paths
or any URL `etils.epath` opens (gs://, s3://, ...; epath uses TensorFlow's file system where TensorFlow
imports, else fsspec/gcsfs). Local paths are read with `os` directly and Pillow opens local image files
itself: that is the fast path (about 10k CIFAR JPEGs/s decoded with threads) and stays as it was. A URL's
files are read as bytes through epath.

The class-folder walk (`walk_files`) follows symbolic links, but never into a folder it has already
walked: a link back to an ancestor (`train/a/loop -> .`) or a second link to the same folder adds nothing
(counted and logged).
"""

from __future__ import annotations

import concurrent.futures
import os
import posixpath
from typing import Optional, Sequence

from absl import logging
from etils import epath


def is_url(path: str) -> bool:
  """Whether `path` is a URL (`gs://...`) rather than a local path."""
  return "://" in str(path)


def absolute(path: str) -> str:
  """A local path made absolute (`~` expanded); a URL without its trailing slashes."""
  path = str(path)
  if is_url(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/')}"
  return os.path.abspath(os.path.expanduser(path))


def join(root: str, relative: str) -> str:
  """`root/relative`, normalised (`a/./b/../c` -> `a/c`); an absolute `relative` is used as is."""
  if is_url(relative):
    return relative
  if is_url(root):
    scheme, rest = root.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"
  return os.path.normpath(os.path.join(root, relative))


def is_dir(path: str) -> bool:
  return epath.Path(path).is_dir() if is_url(path) else os.path.isdir(path)


def is_file(path: str) -> bool:
  if is_url(path):
    p = epath.Path(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def subdirs(folder: str) -> list[str]:
  """Names of the folder's non-hidden sub-folders (symbolic links to folders included), sorted."""
  if is_url(folder):
    return sorted(p.name for p in epath.Path(folder).iterdir() if not p.name.startswith(".") and p.is_dir())
  return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_bytes(path: str) -> bytes:
  if is_url(path):
    return epath.Path(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def walk_files(folder: str) -> list[str]:
  """Every file below `folder`, as sorted '/'-separated paths relative to it; hidden folders are skipped.

  Local folders: symbolic links to folders are followed, except into a folder already walked (its real
  path), so link loops end. URLs have no links.
  """
  found = []
  if is_url(folder):
    top = None
    for dirpath, dirnames, filenames in epath.Path(folder).walk():
      dirpath = str(dirpath)
      top = dirpath if top is None else top  # The first folder walked is `folder` itself.
      relative = dirpath[len(top):].strip("/")
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      found.extend(posixpath.join(relative, f) if relative else f for f in filenames)
    return sorted(found)
  seen = {os.path.realpath(folder)}
  skipped_links = []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    keep = []
    for name in sorted(d for d in dirnames if not d.startswith(".")):
      real = os.path.realpath(os.path.join(dirpath, name))
      if real in seen:
        skipped_links.append(os.path.join(dirpath, name))
      else:
        seen.add(real)
        keep.append(name)
    dirnames[:] = keep
    relative = os.path.relpath(dirpath, folder)
    prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
    found.extend(prefix + f for f in filenames)
  if skipped_links:
    logging.warning("not following %d link(s) to folders already walked (link loops), e.g. %s",
                    len(skipped_links), skipped_links[0])
  return sorted(found)


def sizes(paths: Sequence[str], num_workers: int = 8) -> list[Optional[int]]:
  """The size in bytes of every file (None where it does not exist), in order."""

  def size(path: str) -> Optional[int]:
    try:
      return epath.Path(path).stat().length if is_url(path) else os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
      return None

  if not any(is_url(p) for p in paths) or num_workers <= 1:
    return [size(p) for p in paths]
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:  # Object stores: one request per file.
    return list(pool.map(size, paths))
