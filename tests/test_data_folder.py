"""Tests for class-folder trees, the CIFAR-10 protocols, splits.json and the TensorFlow-free path."""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
from PIL import Image
import pytest

from drlih_jax import errors
from drlih_jax import run_record
from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data import protocols
from tests.helpers.data import CIFAR_CLASSES
from tests.helpers.data import REPO_ROOT
from tests.helpers.data import cifar_subset
from tests.helpers.data import cifar_tree


def _config(**kwargs):
  base = dict(name="folder", source="folder", root=None, list_dir=None, data_dir=None, split_seed=0,
              image_size=None, on_bad_image="error", loader="pillow", num_workers=2)
  base.update(kwargs)
  return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
  return cifar_tree(tmp_path_factory)


@pytest.fixture(scope="module")
def cifar_index(cifar_root):
  tree = folder_tree.list_tree(cifar_root)
  return tree, {s: v[1] for s, v in tree.splits.items()}, {s: v[2] for s, v in tree.splits.items()}


def test_cifar_tree_listing_and_ids(cifar_index):
  tree, labels, ids = cifar_index
  assert tree.class_names == CIFAR_CLASSES
  assert list(tree.splits) == ["train", "test"]
  np.testing.assert_array_equal(np.bincount(labels["train"]), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(labels["test"]), [1000] * 10)
  np.testing.assert_array_equal(ids["train"], np.arange(50000))
  np.testing.assert_array_equal(ids["test"], np.arange(50000, 60000))
  # id 5000 * c + k is train/<class c>/k.jpg; paths are relative to the root.
  paths = tree.splits["train"][0]
  assert paths[5000 * 3 + 17] == "train/cat/0017.jpg"
  assert tree.splits["test"][0][1000 * 9 + 999] == "test/truck/0999.jpg"
  assert tree.files("test")[0] == os.path.join(tree.root, "test", "airplane", "0000.jpg")


@pytest.mark.parametrize("name", ["cifar10", "cifar10-1"])
def test_cifar10_random_protocols(cifar_index, name):
  _, labels, ids = cifar_index
  split = protocols.protocol_ids(name, labels, ids, seed=0)
  all_labels = np.concatenate([labels["train"], labels["test"]])  # label of id i is all_labels[i]
  train, query, database = split["train"], split["query"], split["database"]
  assert len(query) == 1000 and len(train) == 5000
  np.testing.assert_array_equal(np.bincount(all_labels[query], minlength=10), [100] * 10)
  np.testing.assert_array_equal(np.bincount(all_labels[train], minlength=10), [500] * 10)
  assert len(np.intersect1d(query, train)) == 0 and len(np.intersect1d(query, database)) == 0
  for part in (train, query, database):
    assert np.all(np.diff(part) > 0)  # Sorted, no repeats.
  if name == "cifar10":
    assert len(database) == 54000 and len(np.intersect1d(train, database)) == 0
    np.testing.assert_array_equal(np.bincount(all_labels[database], minlength=10), [5400] * 10)
    np.testing.assert_array_equal(np.union1d(np.union1d(train, query), database), np.arange(60000))
  else:
    assert len(database) == 59000
    np.testing.assert_array_equal(database, np.setdiff1d(np.arange(60000), query))
  # Queries come from both source splits (the pool is train + test).
  assert np.any(query < 50000) and np.any(query >= 50000)
  again = protocols.protocol_ids(name, labels, ids, seed=0)
  other = protocols.protocol_ids(name, labels, ids, seed=1)
  for key in split:
    np.testing.assert_array_equal(again[key], split[key])
  assert not np.array_equal(other["query"], query) and not np.array_equal(other["train"], train)


def test_cifar10_and_cifar10_1_share_queries_and_training(cifar_index):
  _, labels, ids = cifar_index
  a = protocols.protocol_ids("cifar10", labels, ids, seed=7)
  b = protocols.protocol_ids("cifar10-1", labels, ids, seed=7)
  np.testing.assert_array_equal(a["query"], b["query"])
  np.testing.assert_array_equal(a["train"], b["train"])
  np.testing.assert_array_equal(b["database"], np.union1d(a["database"], a["train"]))


def test_cifar10_2_protocol(cifar_index):
  _, labels, ids = cifar_index
  split = protocols.protocol_ids("cifar10-2", labels, ids, seed=0)
  np.testing.assert_array_equal(split["query"], np.arange(50000, 60000))
  np.testing.assert_array_equal(split["train"], np.arange(50000))
  np.testing.assert_array_equal(split["database"], split["train"])


def test_full_cifar_loads_with_pillow(cifar_root, tmp_path):
  """All 60,000 JPEGs decode (Pillow path); cifar10-1 end to end, pixels checked against the files."""
  config = _config(name="cifar10-1", root=cifar_root, split_seed=3)
  data = protocols.load_retrieval_data(config)
  run_record.record_splits(str(tmp_path), run_record.splits_record(protocols.validate_config(config), data),
                           write=True)
  assert data.query.images.shape == (1000, 32, 32, 3) and data.database.images.shape == (59000, 32, 32, 3)
  assert data.train.images.shape == (5000, 32, 32, 3) and data.num_classes == 10
  assert data.query.labels.dtype == np.int32 and data.query.ids.dtype == np.int64
  pool_labels = np.concatenate([data.query.labels, data.database.labels])
  np.testing.assert_array_equal(np.bincount(pool_labels), [6000] * 10)
  assert len(np.union1d(data.query.ids, data.database.ids)) == 60000
  for part in (data.query, data.database, data.train):
    for row in (0, len(part) // 2, len(part) - 1):
      i = int(part.ids[row])
      split, k = ("train", i) if i < 50000 else ("test", i - 50000)
      per_class = 5000 if split == "train" else 1000
      c = k // per_class
      assert part.labels[row] == c
      relative = f"{split}/{CIFAR_CLASSES[c]}/{k % per_class:04d}.jpg"
      assert part.paths[row] == relative  # The id leads back to its file.
      with Image.open(os.path.join(cifar_root, relative)) as im:
        np.testing.assert_array_equal(part.images[row], np.asarray(im.convert("RGB")))
  record = json.loads((tmp_path / "splits.json").read_text())
  assert record["protocol"] == "cifar10-1" and record["seed"] == 3 and record["source"] == "folder"
  assert record["ids"]["query"] == data.query.ids.tolist()
  assert record["counts"] == {"train": 5000, "query": 1000, "database": 59000}


def test_splits_json_resume_check(tmp_path):
  record = {"protocol": "cifar10", "seed": 0, "source": "folder", "ids": {"train": [1, 2], "query": [3],
                                                                            "database": [4, 5]}}
  assert not run_record.check_splits(str(tmp_path), record)  # No file yet.
  run_record.record_splits(str(tmp_path), record, write=True)
  assert run_record.check_splits(str(tmp_path), dict(record))  # Same split: fine.
  with pytest.raises(errors.SplitMismatchError, match=r"splits\.json records seed 0 but this run has 1"):
    run_record.check_splits(str(tmp_path), dict(record, seed=1))
  changed = dict(record, ids={"train": [1, 2], "query": [3], "database": [4, 6]})
  (tmp_path / "checkpoints" / "7").mkdir(parents=True)  # A checkpoint was trained on the recorded splits.
  with pytest.raises(errors.SplitMismatchError,
                     match=r"splits\.json: the recomputed 'database' split differs .*first difference at position 1"):
    run_record.record_splits(str(tmp_path), changed, write=True)
  (tmp_path / "checkpoints" / "7").rmdir()  # None was: the new splits replace the record.
  run_record.record_splits(str(tmp_path), changed, write=True)
  assert run_record.check_splits(str(tmp_path), changed)


def test_tfds_builder_matches_pillow_bitwise(tmp_path_factory, tmp_path):
  """The tfds builder path (a 300-image subset of the real files) gives the Pillow path's pixels exactly."""
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  root = cifar_subset(tmp_path_factory)
  config = _config(root=root, loader="pillow")
  pillow = protocols.load_retrieval_data(config)
  config.loader = "tfds"
  config.data_dir = str(tmp_path / "tfds")
  via_tfds = protocols.load_retrieval_data(config)
  assert (len(pillow.train), len(pillow.query)) == (200, 100)
  for split in ("train", "query", "database"):
    a, b = getattr(pillow, split), getattr(via_tfds, split)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.paths, b.paths)
    assert b.labels.dtype == np.int32
  assert via_tfds.query.paths[0] == "test/airplane/0000.jpg"
  # The config names the decode settings; a second load reuses the prepared copy.
  assert sorted(os.listdir(tmp_path / "tfds" / "drlih_class_folder" / "native_error")) == ["2.0.0"]
  stored = sorted(os.listdir(tmp_path / "tfds" / "drlih_class_folder" / "native_error" / "2.0.0"))
  protocols.load_retrieval_data(config)
  assert sorted(os.listdir(tmp_path / "tfds" / "drlih_class_folder" / "native_error" / "2.0.0")) == stored


def test_tensorflow_free_loader_gives_the_same_pixels(tmp_path_factory, tmp_path):
  """With tensorflow unimportable, loader "auto" uses Pillow and gives what the tfds path gives."""
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  root = cifar_subset(tmp_path_factory)
  out = tmp_path / "tf_free.npz"
  script = textwrap.dedent(f"""
      import sys
      sys.modules["tensorflow"] = None
      sys.modules["tensorflow_datasets"] = None
      import ml_collections, numpy as np
      from drlih_jax.data import protocols, streaming, folder_tree, image_lists, image_io, storage, digits
      assert not image_io.tensorflow_available()
      config = ml_collections.ConfigDict(dict(name="cifar10", source="folder", root={root!r}, list_dir=None,
          data_dir=None, split_seed=5, image_size=None, on_bad_image="error", loader="auto", num_workers=2))
      config_small = ml_collections.ConfigDict(dict(config, name="folder"))
      data = protocols.load_retrieval_data(config_small)
      np.savez({str(out)!r}, **{{f"{{s}}_{{k}}": getattr(getattr(data, s), k)
                                 for s in ("train", "query", "database") for k in ("images", "labels", "ids")}})
      config_small.loader = "tfds"
      try:
        protocols.load_retrieval_data(config_small)
      except ValueError as e:
        assert "needs tensorflow" in str(e), e
      else:
        raise AssertionError("loader tfds without tensorflow must fail")
      print("OK", sorted(m for m in sys.modules if m.startswith("tensorflow") and sys.modules[m] is not None))
      """)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK []" in result.stdout
  config = _config(root=root, loader="tfds", data_dir=str(tmp_path / "tfds"))
  via_tfds = protocols.load_retrieval_data(config)
  saved = np.load(out)
  for split in ("train", "query", "database"):
    for key in ("images", "labels", "ids"):
      np.testing.assert_array_equal(saved[f"{split}_{key}"], getattr(getattr(via_tfds, split), key))


def _write(path, array, fmt="PNG"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def _small_tree(root, rng, classes=("a", "b"), per=3, size=(6, 6)):
  for split in ("train", "test"):
    for c in classes:
      for k in range(per):
        _write(os.path.join(root, split, c, f"{k}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_empty_or_missing_class_folder_is_an_error(tmp_path):
  rng = np.random.default_rng(0)
  _small_tree(str(tmp_path), rng)
  os.makedirs(tmp_path / "test" / "c")
  (tmp_path / "test" / "c" / "README.txt").write_text("not an image")
  with pytest.raises(ValueError, match=r"split folder .*train lacks class folder\(s\) \['c'\]"):
    folder_tree.list_tree(str(tmp_path))
  os.makedirs(tmp_path / "train" / "c")
  with pytest.raises(ValueError, match=r"class folder .*train/c contains no image files"):
    folder_tree.list_tree(str(tmp_path))
  with pytest.raises(ValueError, match=r"dataset.root .*nothing is not a folder"):
    folder_tree.list_tree(str(tmp_path / "nothing"))


def test_numeric_class_folders_sort_numerically(tmp_path):
  rng = np.random.default_rng(1)
  _small_tree(str(tmp_path), rng, classes=("2", "10", "1"), per=1)
  tree = folder_tree.list_tree(str(tmp_path))
  assert tree.class_names == ("1", "2", "10")


def test_folder_grayscale_sizes_and_bad_images(tmp_path):
  rng = np.random.default_rng(2)
  tree = tmp_path / "tree"
  _small_tree(str(tree), rng)
  gray = rng.integers(0, 256, (6, 6), dtype=np.uint8)
  _write(str(tree / "train" / "a" / "3gray.jpg"), gray, fmt="JPEG")
  config = _config(root=str(tree))
  data = protocols.load_retrieval_data(config)
  row = int(np.flatnonzero(data.train.ids == 3)[0])  # train/a: 0, 1, 2, 3gray -> id 3.
  image = data.train.images[row]
  assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
  big = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
  _write(str(tree / "test" / "b" / "9big.png"), big)
  with pytest.raises(image_io.ImageSizeError, match=r"9big\.png: size 9x7 differs from 6x6"):
    protocols.load_retrieval_data(config)
  config.image_size = 4
  data = protocols.load_retrieval_data(config)
  assert data.query.images.shape == (7, 4, 4, 3)
  np.testing.assert_array_equal(data.query.images[-1], image_io.resize_image(big, 4))
  (tree / "train" / "b" / "0.png").write_bytes(b"garbage")
  with pytest.raises(image_io.BadImageError, match=r"train/b/0\.png: not a decodable image"):
    protocols.load_retrieval_data(config)
  config.on_bad_image = "skip"
  data = protocols.load_retrieval_data(config)
  assert len(data.train) == 6 and 4 not in data.train.ids.tolist()
  if image_io.tensorflow_available():  # The tfds builder skips the same image and gives the same pixels.
    config.loader = "tfds"
    config.data_dir = str(tmp_path / "tfds_data")
    via_tfds = protocols.load_retrieval_data(config)
    for split in ("train", "query", "database"):
      np.testing.assert_array_equal(getattr(via_tfds, split).ids, getattr(data, split).ids)
      np.testing.assert_array_equal(getattr(via_tfds, split).images, getattr(data, split).images)


def test_config_errors_name_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"dataset.name must be one of .*'cifar10-1'.*got 'cifar100'"):
    protocols.load_retrieval_data(_config(name="cifar100"))
  with pytest.raises(ValueError, match=r"dataset.source must be one of \('list',\) for dataset.name 'mirflickr'"):
    protocols.load_retrieval_data(_config(name="mirflickr", source="folder"))
  with pytest.raises(ValueError, match=r"dataset.loader must be one of"):
    protocols.load_retrieval_data(_config(loader="opencv"))
  with pytest.raises(ValueError, match=r"dataset.image_size must be a positive int or None"):
    protocols.load_retrieval_data(_config(image_size=0))
  with pytest.raises(ValueError, match=r"dataset.on_bad_image must be one of"):
    protocols.load_retrieval_data(_config(on_bad_image="warn"))
  with pytest.raises(ValueError, match=r"dataset.num_workers must be an int >= 0"):
    protocols.load_retrieval_data(_config(num_workers=-1))
  with pytest.raises(ValueError, match=r"dataset.root must name"):
    protocols.load_retrieval_data(_config(root=None))
  with pytest.raises(ValueError, match=r"dataset.loader 'pillow' cannot read dataset.source 'tfds'"):
    protocols.load_retrieval_data(_config(name="cifar10", source="tfds"))


def test_official_tfds_cifar10_ids():
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  from drlih_jax.data import tfds_sources  # pylint: disable=import-outside-toplevel
  assert tfds_sources.cifar10_id("train_16399") == 16399
  assert tfds_sources.cifar10_id("test_00042") == 50042
  with pytest.raises(ValueError, match="unexpected tfds cifar10 id"):
    tfds_sources.cifar10_id("val_1")


def test_labelled_mask():
  np.testing.assert_array_equal(protocols.labelled_mask(np.array([3, 0, 1], np.int32)), [True, True, True])
  multi = np.array([[0, 0, 1], [0, 0, 0], [1, 1, 0]], np.uint8)
  np.testing.assert_array_equal(protocols.labelled_mask(multi), [True, False, True])
  assert protocols.count_unlabelled(multi) == 1


def test_digits_dispatch_records_splits(tmp_path):
  config = ml_collections.ConfigDict(dict(name="digits", source="digits", num_queries=360, split_seed=0,
                                          loader="pillow", data_dir=None, image_size=None))
  data = protocols.load_retrieval_data(config)
  run_record.record_splits(str(tmp_path), run_record.splits_record(protocols.validate_config(config), data),
                           write=True)
  assert (len(data.query), len(data.database)) == (360, 1797 - 360)
  record = json.loads((tmp_path / "splits.json").read_text())
  assert record["protocol"] == "digits" and record["ids"]["query"] == data.query.ids.tolist()
  config.split_seed = 1
  other = protocols.load_retrieval_data(config)
  with pytest.raises(errors.SplitMismatchError, match="splits.json records seed 0 but this run has 1"):
    run_record.check_splits(str(tmp_path), run_record.splits_record(protocols.validate_config(config), other))
