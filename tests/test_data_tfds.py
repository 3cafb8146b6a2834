"""Tests for the tfds builders (drlih_jax.data.tfds_builders) and their preparation (tfds_io, tfds_sources).

What identifies a prepared copy (a touch prepares nothing, changed files replace the copy), preparation
once per job (process 0 first, mocked processes and barrier), the tfds conventions (`tfds build` on the
dataset folder, `tfds.builder(name)` after importing, manual_dir instructions, config names).
"""

import os
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from drlih_jax.data import folder_tree
from drlih_jax.data import image_io
from drlih_jax.data import protocols
from tests.helpers.data import REPO_ROOT

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
# pylint: disable=g-import-not-at-top,wrong-import-position
from drlih_jax.data import tfds_io
from drlih_jax.data import tfds_sources
from drlih_jax.data.tfds_builders import decode_config
from drlih_jax.data.tfds_builders.drlih_class_folder import drlih_class_folder_dataset_builder as folder_ds
# pylint: enable=g-import-not-at-top,wrong-import-position


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format="PNG")


def _tree(root, seed=0, per=3):
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    for c in ("a", "b"):
      for k in range(per):
        _write(os.path.join(root, split, c, f"{k}.png"), rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
  return str(root)


def _config(root, data_dir, **kwargs):
  base = dict(name="folder", source="folder", root=root, list_dir=None, data_dir=data_dir, split_seed=0,
              image_size=None, on_bad_image="error", loader="tfds", num_workers=2)
  base.update(kwargs)
  return ml_collections.ConfigDict(base)


@pytest.fixture
def preparations(monkeypatch):
  """Counts the drlih_class_folder preparations (calls of `_split_generators`) by manual_dir."""
  calls = []
  original = folder_ds.Builder._split_generators  # pylint: disable=protected-access

  def counted(self, dl_manager):
    calls.append(os.fspath(dl_manager.manual_dir))
    return original(self, dl_manager)

  monkeypatch.setattr(folder_ds.Builder, "_split_generators", counted)
  return calls


def _assert_same(a, b):
  for split in ("train", "query", "database"):
    for key in ("images", "labels", "ids", "paths"):
      np.testing.assert_array_equal(getattr(getattr(a, split), key), getattr(getattr(b, split), key))


def _copies(data_dir):
  """Every prepared copy under data_dir: (config, version) pairs."""
  base = os.path.join(data_dir, "drlih_class_folder")
  return sorted((c, v) for c in os.listdir(base) if not c.startswith(".")
                for v in os.listdir(os.path.join(base, c)))


def test_touch_prepares_nothing_and_changed_files_replace_the_copy(tmp_path, preparations):
  root = _tree(tmp_path / "tree")
  data_dir = str(tmp_path / "tfds")
  config = _config(root, data_dir)
  first = protocols.load_retrieval_data(config)
  _assert_same(first, protocols.load_retrieval_data(_config(root, None, loader="pillow")))
  assert preparations == [root] and _copies(data_dir) == [("native_error", "2.0.0")]
  fingerprint = folder_tree.list_tree(root).fingerprint()

  for name in ("train/a/0.png", "test/b/2.png"):  # touch: a new modification time, same bytes.
    os.utime(os.path.join(root, name), (2e9, 2e9))
  assert folder_tree.list_tree(root).fingerprint() == fingerprint
  _assert_same(first, protocols.load_retrieval_data(config))
  assert preparations == [root] and _copies(data_dir) == [("native_error", "2.0.0")]

  _write(os.path.join(root, "train/a/1.png"), np.full((6, 6, 3), 7, np.uint8))  # Other pixels, other size.
  assert folder_tree.list_tree(root).fingerprint() != fingerprint
  changed = protocols.load_retrieval_data(config)
  assert preparations == [root, root] and _copies(data_dir) == [("native_error", "2.0.0")]
  np.testing.assert_array_equal(changed.train.images[1], np.full((6, 6, 3), 7, np.uint8))
  _assert_same(changed, protocols.load_retrieval_data(_config(root, None, loader="pillow")))

  other = _tree(tmp_path / "other", seed=1, per=2)  # Another tree into the same data_dir replaces it too.
  protocols.load_retrieval_data(_config(other, data_dir))
  assert preparations == [root, root, other] and _copies(data_dir) == [("native_error", "2.0.0")]
  protocols.load_retrieval_data(_config(root, data_dir, image_size=4))  # Other decode settings: a new config.
  assert _copies(data_dir) == [("native_error", "2.0.0"), ("s4_error", "2.0.0")]


def _values(root, data_dir, **kwargs):
  return protocols.validate_config(_config(root, data_dir, **kwargs))


def test_process_zero_prepares_while_the_others_wait(tmp_path, preparations):
  root = _tree(tmp_path / "tree")
  shared = str(tmp_path / "shared_tfds")
  events = []

  def process_zero():
    def barrier(name):
      events.append(("barrier", 0, name))
    return tfds_sources.prepare_source(_values(root, shared), tfds_io.Processes(0, 2, barrier))

  def barrier_one(name):  # Process 1 arrives first; process 0 prepares while it waits.
    events.append(("barrier", 1, name))
    assert not preparations
    process_zero()

  source = tfds_sources.prepare_source(_values(root, shared), tfds_io.Processes(1, 2, barrier_one))
  name = "drlih_jax tfds prepare drlih_class_folder/native_error/2.0.0"
  assert events == [("barrier", 1, name), ("barrier", 0, name)]
  assert preparations == [root]  # Only process 0 prepared; process 1 read its copy.
  assert source.builder.info.features["label"].names == ["a", "b"]
  split = tfds_io.read_split(source.builder, "test")
  np.testing.assert_array_equal(split.images[0], image_io.decode_image(os.path.join(root, "test/a/0.png")))

  # Per-host disks: process 1 does not see process 0's copy and prepares its own after the barrier.
  def barrier_elsewhere(name):
    events.append(("barrier", 1, name))
    assert len(preparations) == 1
  tfds_sources.prepare_source(_values(root, str(tmp_path / "host1_tfds")), tfds_io.Processes(1, 2, barrier_elsewhere))
  assert preparations == [root, root] and events[-1] == ("barrier", 1, name)

  # One process: no barrier.
  def no_barrier(name):
    raise AssertionError(f"barrier {name} with one process")
  tfds_sources.prepare_source(_values(root, str(tmp_path / "single")), tfds_io.Processes(0, 1, no_barrier))
  assert len(preparations) == 3
  default = tfds_io.jax_processes()
  assert (default.index, default.count) == (0, 1)


def test_process_zero_reaches_the_barrier_when_preparing_fails(tmp_path):
  root = _tree(tmp_path / "tree")
  (tmp_path / "tree" / "train" / "b" / "1.png").write_bytes(b"not a png")
  events = []
  with pytest.raises(image_io.BadImageError, match=r"train/b/1\.png: not a decodable image"):
    tfds_sources.prepare_source(_values(root, str(tmp_path / "tfds")),
                                tfds_io.Processes(0, 4, lambda name: events.append(name)))
  assert events == ["drlih_jax tfds prepare drlih_class_folder/native_error/2.0.0"]


def test_config_names_registry_and_manual_dir_instructions(tmp_path):
  import drlih_jax.data.tfds_builders  # pylint: disable=import-outside-toplevel,unused-import
  # (tfds.list_builders() would import every tfds dataset module: minutes; builder_cls reads the registry.)
  for name in ("drlih_class_folder", "drlih_image_list", "drlih_digits"):
    assert tfds.builder_cls(name).name == name
  builder = tfds.builder("drlih_class_folder/s4_skip", data_dir=str(tmp_path))
  assert isinstance(builder, folder_ds.Builder)
  assert (builder.builder_config.image_size, builder.builder_config.on_bad_image) == (4, "skip")
  assert builder.builder_config is decode_config.from_name("s4_skip")
  assert tfds.builder("drlih_image_list", data_dir=str(tmp_path)).builder_config.name == "native_error"
  assert decode_config.config_name(None, "error") == "native_error"
  assert decode_config.config_name(224, "skip") == "s224_skip"
  for bad in ("s0_error", "native_warn", "s224", "224_skip"):
    assert decode_config.from_name(bad) is None
  with pytest.raises(ValueError, match="BuilderConfig native_warn not found"):
    tfds.builder("drlih_class_folder/native_warn", data_dir=str(tmp_path))
  with pytest.raises(AssertionError, match=r"ROOT/<split>/<class>/<image>"):
    builder.download_and_prepare()  # No manual_dir: the instructions say what to pass.


def test_tfds_build_command_line_then_the_loader_reuses_it(tmp_path, preparations):
  """`tfds build <dataset folder> --manual_dir --config` prepares what the package's loader then reads.

  The `tfds` entry point of tensorflow-datasets 4.9.10 imports apache_beam for its other commands, so the
  `build` command is run through its own parser (the same `build.Args` the entry point dispatches to).
  """
  root = _tree(tmp_path / "tree")
  data_dir = str(tmp_path / "tfds")
  folder = os.path.join(REPO_ROOT, "drlih_jax", "data", "tfds_builders", "drlih_class_folder")
  script = ("import sys\n"
            "from tensorflow_datasets.scripts.cli import build, cli_utils\n"
            "cli_utils.make_flags_parser(build.Args, 'tfds build')(sys.argv).execute()\n")
  env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-c", script, folder, f"--manual_dir={root}", f"--data_dir={data_dir}", "--config=s4_error"],
      capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _copies(data_dir) == [("s4_error", "2.0.0")]
  built = tfds.builder("drlih_class_folder/s4_error", data_dir=data_dir)
  test = tfds.as_numpy(built.as_dataset(split="test", batch_size=-1))
  order = np.argsort(test["id"])
  assert [p.decode() for p in test["path"][order]] == [f"test/{c}/{k}.png" for c in "ab" for k in range(3)]
  np.testing.assert_array_equal(test["image"][order][4],
                                image_io.decode_image(os.path.join(root, "test/b/1.png"), image_size=4))
  via_loader = protocols.load_retrieval_data(_config(root, data_dir, image_size=4))
  assert not preparations  # The command line's copy has the tree's fingerprint: reused as is.
  _assert_same(via_loader, protocols.load_retrieval_data(_config(root, None, image_size=4, loader="pillow")))


def test_official_cifar10_without_network_is_one_actionable_error(monkeypatch):
  """tfds' download error (after its retries) becomes a DataError naming the two ways out."""
  import requests

  def no_network(*args, **kwargs):
    del args, kwargs
    raise requests.exceptions.ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

  monkeypatch.setattr(tfds_io, "prepare", no_network)
  values = {"data_dir": None, "num_workers": 1, "image_size": None, "on_bad_image": "error", "source": "tfds",
            "name": "cifar10"}
  from drlih_jax import errors
  with pytest.raises(errors.DataError, match=r"^tfds could not download cifar10 into the tfds data dir "
                     r"\(TFDS_DATA_DIR\) \(ConnectionError: Failed to resolve .*--config\.dataset\.data_dir.*"
                     r"--config\.dataset\.source=folder --config\.dataset\.root=DIR$"):
    tfds_sources.prepare_source(values)
