"""Helpers for the tests that read real data (../shared/data): CIFAR-10 trees extracted once per session."""

import os
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
CIFAR_TAR = os.path.join(SHARED_DATA, "cifar10-jpeg.tar.gz")
LISTS = os.path.join(SHARED_DATA, "lists")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CACHE = {}


def require(path):
  if not os.path.exists(path):
    pytest.skip(f"real data not found: {path} is missing")
  return path


def cifar_tree(tmp_path_factory):
  """The full CIFAR-10 JPEG tree (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg), extracted once."""
  require(CIFAR_TAR)
  if "cifar" not in _CACHE:
    root = tmp_path_factory.mktemp("cifar10_jpeg")
    if shutil.which("tar"):  # GNU tar is about 3x faster than the tarfile module here.
      subprocess.run(["tar", "-xzf", CIFAR_TAR, "-C", str(root)], check=True)
    else:
      with tarfile.open(CIFAR_TAR, "r:gz") as tar:
        tar.extractall(root, filter="data")
    _CACHE["cifar"] = str(root)
  return _CACHE["cifar"]


def cifar_subset(tmp_path_factory):
  """A class-folder tree of the first real CIFAR files of every class: 20 train and 10 test per class.

  Copied from the full tree when that is already extracted, else extracted alone (file creation is what
  costs when the disk is busy: 300 files instead of 60,000).
  """
  require(CIFAR_TAR)
  if "subset" not in _CACHE:
    root = tmp_path_factory.mktemp("cifar10_subset")
    wanted = [f"{split}/{name}/{k:04d}.jpg" for split, count in (("train", 20), ("test", 10))
              for name in CIFAR_CLASSES for k in range(count)]
    if "cifar" in _CACHE:
      for member in wanted:
        os.makedirs(os.path.dirname(root / member), exist_ok=True)
        shutil.copy(os.path.join(_CACHE["cifar"], member), root / member)
    elif shutil.which("tar"):
      list_file = root / "members.txt"
      list_file.write_text("\n".join(wanted) + "\n")
      subprocess.run(["tar", "-xzf", CIFAR_TAR, "-C", str(root), "-T", str(list_file)], check=True)
      list_file.unlink()
    else:
      with tarfile.open(CIFAR_TAR, "r:gz") as tar:
        members = set(wanted)
        tar.extractall(root, members=[m for m in tar if m.name in members], filter="data")
    _CACHE["subset"] = str(root)
  return _CACHE["subset"]


def read_list_lines(path):
  """(paths, labels [n, C] int) of a list file, parsed independently of the package."""
  paths, rows = [], []
  with open(path) as f:
    for line in f:
      if line.strip():
        tokens = line.split()
        paths.append(tokens[0])
        rows.append([int(t) for t in tokens[1:]])
  return paths, np.array(rows)

