"""Tests for drlih_jax.data.storage: the symlink-safe folder walk, path joining, and gs:// dataset roots.

gs:// is exercised through etils.epath with its backend mocked onto a local folder (`fake_gcs`): every
read of a `gs://bucket/...` path goes through epath, as it would against GCS.
"""

import contextlib
import os

from etils.epath import testing as epath_testing
import ml_collections
import numpy as np
from PIL import Image
import pytest

from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data import protocols
from drlih_jax.data import storage


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="PNG")


def _tree(root, rng, per=3, size=(6, 6)):
  for split in ("train", "test"):
    for c in ("a", "b"):
      for k in range(per):
        _write(os.path.join(root, split, c, f"{k}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _config(**kwargs):
  base = dict(name="folder", source="folder", root=None, list_dir=None, data_dir=None, split_seed=0,
              image_size=None, on_bad_image="error", loader="pillow", num_workers=2)
  base.update(kwargs)
  return ml_collections.ConfigDict(base)


def test_link_loop_is_not_followed_but_links_are(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "tree"
  _tree(str(root), rng)
  os.symlink(".", root / "train" / "a" / "loop")  # train/a/loop -> train/a: used to list 3 images as 123.
  os.symlink(str(root / "train" / "a"), root / "train" / "a" / "back_to_top")
  elsewhere = tmp_path / "elsewhere"
  for k in range(2):
    _write(str(elsewhere / f"x{k}.png"), rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
  os.symlink(str(elsewhere), root / "train" / "b" / "more")  # A link out of the tree is followed ...
  os.symlink(str(elsewhere), root / "train" / "b" / "same_again")  # ... once.
  tree = folder_tree.list_tree(str(root))
  assert tree.splits["train"][0] == ["train/a/0.png", "train/a/1.png", "train/a/2.png", "train/b/0.png",
                                     "train/b/1.png", "train/b/2.png", "train/b/more/x0.png", "train/b/more/x1.png"]
  np.testing.assert_array_equal(tree.splits["train"][1], [0, 0, 0, 1, 1, 1, 1, 1])
  data = protocols.load_retrieval_data(_config(root=str(root)))
  assert len(data.train) == 8 and data.train.paths[-1] == "train/b/more/x1.png"
  np.testing.assert_array_equal(data.train.images[-1], image_io.decode_image(str(elsewhere / "x1.png")))


def test_walk_files_is_sorted_relative_and_skips_hidden_folders(tmp_path):
  for name in ("b/z.png", "a.png", "b/c/d.png", ".hidden/e.png", "b/.git/f.png", "c.txt"):
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    (tmp_path / name).write_bytes(b"x")
  assert storage.walk_files(str(tmp_path)) == ["a.png", "b/c/d.png", "b/z.png", "c.txt"]


def test_join_absolute_and_url():
  assert storage.join("gs://bucket/tree", "./train/../test/a.jpg") == "gs://bucket/tree/test/a.jpg"
  assert storage.join("gs://bucket/tree", "gs://other/x.jpg") == "gs://other/x.jpg"
  assert storage.join("/data/tree", "/abs/x.jpg") == "/abs/x.jpg"
  assert storage.join("/data/tree", "a/./b.jpg") == "/data/tree/a/b.jpg"
  assert storage.absolute("gs://bucket/tree//") == "gs://bucket/tree"
  assert storage.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
  assert storage.is_url("gs://b/x") and not storage.is_url("/b/x")


@contextlib.contextmanager
def fake_gcs(base, monkeypatch):
  """`gs://<path>` read through etils.epath, from `<base>/<path>` on the local disk; yields the read count."""
  monkeypatch.setenv("EPATH_USE_TF", "false")  # epath's own backend table (TensorFlow's would go to GCS).
  reads = []

  def local(path):
    path = os.fspath(path)
    return os.path.join(base, path[len("gs://"):]) if path.startswith("gs://") else path

  def redirect(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def open_(original, path, mode, *args, **kwargs):
    if os.fspath(path).startswith("gs://"):
      reads.append(os.fspath(path))
    return original(local(path), mode, *args, **kwargs)

  with epath_testing.mock_epath(open=open_, exists=redirect, isdir=redirect, listdir=redirect, walk=redirect,
                                stat=redirect, glob=redirect):
    yield reads


def test_gs_tree_and_lists_read_like_local(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  bucket = tmp_path / "gcs" / "bucket"
  _tree(str(bucket / "tree"), rng)
  local = protocols.load_retrieval_data(_config(root=str(bucket / "tree")))
  lists = bucket / "lists"
  lists.mkdir()
  (lists / "train.txt").write_text("tree/train/a/0.png 1 0\n./tree/train/b/1.png 0 1\n")
  (lists / "test.txt").write_text("tree/test/a/2.png 1 1\ntree/test/b/9.png 0 1\n")
  with fake_gcs(str(tmp_path / "gcs"), monkeypatch) as reads:
    remote = protocols.load_retrieval_data(_config(root="gs://bucket/tree"))
    assert len(reads) == 12  # Every image read through epath.
    for split in ("train", "query", "database"):
      np.testing.assert_array_equal(getattr(remote, split).images, getattr(local, split).images)
      np.testing.assert_array_equal(getattr(remote, split).ids, getattr(local, split).ids)
      np.testing.assert_array_equal(getattr(remote, split).paths, getattr(local, split).paths)
    config = _config(name="list", source="list", root="gs://bucket", list_dir="gs://bucket/lists")
    with pytest.raises(image_io.BadImageError, match=r"test\.txt line 2: image gs://bucket/tree/test/b/9\.png: "
                                                     "image file not found"):
      protocols.load_retrieval_data(config)
    config.on_bad_image = "skip"
    listed = protocols.load_retrieval_data(config)
  assert listed.train.paths.tolist() == ["tree/train/a/0.png", "tree/train/b/1.png"]
  np.testing.assert_array_equal(listed.query.labels, [[1, 1]])
  np.testing.assert_array_equal(listed.train.images[1], image_io.decode_image(str(bucket / "tree/train/b/1.png")))


def test_gs_tree_through_tfds(tmp_path, monkeypatch):
  """The tfds builder takes a gs:// manual_dir (listed and read through epath): the same data as Pillow."""
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  rng = np.random.default_rng(2)
  _tree(str(tmp_path / "gcs" / "bucket" / "tree"), rng)
  local = protocols.load_retrieval_data(_config(root=str(tmp_path / "gcs" / "bucket" / "tree")))
  with fake_gcs(str(tmp_path / "gcs"), monkeypatch) as reads:
    remote = protocols.load_retrieval_data(_config(root="gs://bucket/tree", loader="tfds",
                                                   data_dir=str(tmp_path / "tfds")))
  assert len(reads) == 12
  for split in ("train", "query", "database"):
    np.testing.assert_array_equal(getattr(remote, split).images, getattr(local, split).images)
    np.testing.assert_array_equal(getattr(remote, split).paths, getattr(local, split).paths)
