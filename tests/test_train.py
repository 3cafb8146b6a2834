"""End-to-end: train_and_evaluate on digits, checkpoints, eval and encode modes, bad input."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits as digits_config
from drlih_jax import errors
from drlih_jax import input_pipeline
from drlih_jax import run as run_lib
from drlih_jax import train
from drlih_jax.data import protocols

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SMALL = {
    "dataset.loader": "pillow",  # no tfds preparation: fast; the tfds path is tested separately
    "train.steps": 40, "train.log_every": 20, "train.checkpoint_every": 20, "train.eval_batch_size": 512,
    "hash.bits": 16, "hash.eval_bits": (8, 16),
    "model.hidden": 32, "model.feature_dim": 32, "model.widths": (16,),
}


def small_config(**overrides):
  """The digits config, shrunk for tests, with `overrides` ({"dotted.key": value}) applied."""
  config = digits_config.get_config()
  config.update_from_flattened_dict({**SMALL, **overrides})
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = small_config()
  state = train.train_and_evaluate(config, workdir)
  return config, workdir, state


def test_run_writes_everything(trained):
  config, workdir, state = trained
  assert int(state.step) == 40
  for name in ("config.json", "splits.json", "eval_40.json", "DONE"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40"]
  with open(os.path.join(workdir, "DONE")) as f:
    done = json.load(f)
  assert done["step"] == 40 and done["reason"] == "steps" and done["train_seconds"] > 0
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  with open(os.path.join(workdir, "eval_40.json")) as f:
    report = json.load(f)
  assert set(report["map"]) == {"8", "16"}
  assert report["num_queries"] == 360 and report["num_database"] == 1437
  # 40 steps of a tiny model already rank far above chance (10 balanced classes: chance mAP ~0.1).
  assert report["map"]["16"] > 0.3
  assert os.path.exists(os.path.join(workdir, "eval_40", "retrieval_grid.png"))


def test_eval_from_checkpoint_reproduces_training_eval(trained):
  config, workdir, _ = trained
  with open(os.path.join(workdir, "eval_40.json")) as f:
    during_training = json.load(f)
  os.remove(os.path.join(workdir, "eval_40.json"))
  path = train.evaluate_checkpoint(workdir)
  with open(path) as f:
    from_checkpoint = json.load(f)
  # Training also records the last logged training metrics (policy-gradient statistics per group, ...).
  # Evaluation from the checkpoint reports the same (they are stored in its `meta` item).
  train_metrics = during_training["train_metrics"]
  assert train_metrics["step"] == 40 and "group_entropy/1" in train_metrics and "advantage_std" in train_metrics
  assert from_checkpoint == during_training


def test_checkpoint_round_trip(trained):
  config, workdir, state = trained
  run = run_lib.create_run(config, protocols.load_retrieval_data(config.dataset))
  restored = run_lib.restore(run, workdir)
  assert restored.step == 40
  for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  older = run_lib.restore(run, workdir, step=20)
  assert int(older.state.step) == 20 and older.meta["train_seconds"] < restored.meta["train_seconds"]
  params_only = run_lib.restore(run, workdir, params_only=True)
  assert params_only.state.opt_state is None
  for a, b in zip(jax.tree.leaves(params_only.state.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_equals_uninterrupted(tmp_path):
  config = small_config(**{"train.steps": 30, "train.checkpoint_every": 10})
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  # Interrupted run: the same config, but the checkpoint of step 10 is all that survived.
  part_dir = str(tmp_path / "part")
  train.train_and_evaluate(config, part_dir)
  for step in ("20", "30"):
    import shutil
    shutil.rmtree(os.path.join(part_dir, "checkpoints", step))
  resumed = train.train_and_evaluate(config, part_dir)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_encode_mode_writes_packed_codes(trained):
  config, workdir, _ = trained
  path = train.encode_checkpoint(workdir, "query")
  data = np.load(path)
  assert data["codes"].dtype == np.uint8 and data["codes"].shape == (360, 2)
  assert int(data["bits"]) == 16 and data["labels"].shape == (360,) and data["ids"].shape == (360,)


def test_triplet_objective_trains(tmp_path):
  """The triplet objective alone learns: its loss falls and its codes rank far above chance (0.1)."""
  config = small_config(**{"objective": "triplet", "train.steps": 80, "train.eval_every": 20,
                           "optim.warmup_steps": 5})
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 80
  curve = [json.load(open(tmp_path / f"eval_{s}.json"))["map"]["16"] for s in (20, 40, 60, 80)]
  assert curve[-1] > 0.5, curve
  assert curve[-1] > curve[0] + 0.1, curve
  with open(tmp_path / "eval_80.json") as f:
    assert json.load(f)["objective"] == "triplet"


def test_preloaded_data_equals_loading_and_is_checked_against_splits(tmp_path):
  config = small_config(**{"objective": "triplet", "train.steps": 10, "train.checkpoint_every": 10})
  loaded = train.train_and_evaluate(config, str(tmp_path / "loaded"))
  data = protocols.load_retrieval_data(config.dataset)
  given = train.train_and_evaluate(config, str(tmp_path / "given"), data=data)
  for a, b in zip(jax.tree.leaves(given.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  splits = [open(tmp_path / d / "splits.json").read() for d in ("loaded", "given")]
  assert splits[0] == splits[1]
  # Data whose ids differ from the workdir's splits.json is refused, as a changed split_seed would be.
  other = dataclasses.replace(data, query=data.database, database=data.query)
  with pytest.raises(errors.SplitMismatchError):
    train.train_and_evaluate(config, str(tmp_path / "given"), data=other)


def test_eval_without_checkpoint_fails_clearly(tmp_path):
  with pytest.raises(errors.RunRecordError, match="no run in .*config.json not found"):
    train.evaluate_checkpoint(str(tmp_path))
  train.train_and_evaluate(small_config(**{"train.steps": 2}), str(tmp_path))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / "checkpoints")
  with pytest.raises(errors.CheckpointError, match="no checkpoint found in .*checkpoints"):
    train.evaluate_checkpoint(str(tmp_path))


def test_bad_config_values(tmp_path):
  with pytest.raises(errors.ConfigError, match="hash.bits=10 is not divisible by hash.group=4"):
    train.train_and_evaluate(small_config(**{"hash.bits": 10}), str(tmp_path / "a"))
  with pytest.raises(errors.ConfigError, match="dataset.name"):
    train.train_and_evaluate(small_config(**{"dataset.name": "imagenet"}), str(tmp_path / "b"))
  with pytest.raises(errors.ConfigError, match=r"hash.eval_bits \[20\] must lie in 1..hash.bits=16"):
    train.train_and_evaluate(small_config(**{"hash.eval_bits": (8, 20)}), str(tmp_path / "c"))
  with pytest.raises(errors.ConfigError, match=r"train.stop_patience must be an integer >= 1, got 0"):
    train.train_and_evaluate(small_config(**{"train.stop_patience": 0}), str(tmp_path / "d"))
  assert not os.listdir(tmp_path)  # refused before anything was written


def test_batch_not_class_balanced():
  config = small_config(**{"input.classes_per_batch": 11})
  sizes = np.full(10, 143)
  with pytest.raises(errors.ConfigError, match="input.classes_per_batch=11"):
    input_pipeline.check_batch_config(sizes, config.input)
  with pytest.raises(ValueError, match="not divisible into class-balanced groups"):
    input_pipeline.check_batch_config(np.array([5, 300, 300]), small_config(**{
        "input.classes_per_batch": 3, "input.images_per_class": 8}).input)


def test_relative_workdir(tmp_path, monkeypatch):
  """The README's quickstart passes a relative workdir: checkpoints, resume and eval work with it."""
  monkeypatch.chdir(tmp_path)
  config = small_config(**{"train.steps": 4, "train.checkpoint_every": 2, "train.log_every": 2})
  train.train_and_evaluate(config, "runs/rel")
  assert sorted(os.listdir(tmp_path / "runs" / "rel" / "checkpoints")) == ["2", "4"]
  extended = small_config(**{"train.steps": 6, "train.checkpoint_every": 2, "train.log_every": 2})
  assert int(train.train_and_evaluate(extended, "runs/rel").step) == 6
  assert str(train.evaluate_checkpoint("runs/rel")).endswith("eval_6.json")


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(errors.WorkdirError, match="workdir .* is not writable"):
    train.train_and_evaluate(small_config(), str(blocker / "run"))


def test_trains_and_evaluates_without_tensorflow(tmp_path):
  """Accelerator hosts may lack TensorFlow: with it unimportable, loader 'auto' falls back and all runs."""
  script = f"""
import sys
sys.modules['tensorflow'] = None
sys.modules['tensorflow_datasets'] = None
from tests import test_train
from drlih_jax import train
config = test_train.small_config(**{{"train.steps": 4, "dataset.loader": "auto"}})
train.train_and_evaluate(config, {str(tmp_path)!r})
train.evaluate_checkpoint({str(tmp_path)!r})
assert not any(m.startswith('tensorflow') and sys.modules[m] is not None for m in sys.modules), 'TF imported'
print('ok')
"""
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().endswith("ok")
  assert os.path.exists(tmp_path / "eval_4.json")


def test_digits_tfds_builder_matches_scikit_learn(tmp_path):
  from drlih_jax.data import digits  # pylint: disable=g-import-not-at-top
  via_tfds = digits.load_all(str(tmp_path), loader="tfds")
  direct = digits.load_all(None, loader="pillow")
  assert via_tfds.images.shape == (1797, 8, 8, 1) and via_tfds.images.dtype == np.uint8
  np.testing.assert_array_equal(via_tfds.images, direct.images)
  np.testing.assert_array_equal(via_tfds.labels, direct.labels)
  np.testing.assert_array_equal(via_tfds.ids, np.arange(1797))
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  raw = load_digits()
  np.testing.assert_array_equal(direct.images[5, :, :, 0], np.rint(raw.images[5] * 255 / 16).astype(np.uint8))
  data = digits.load_digits(small_config().dataset)
  assert len(data.query) == 360 and len(data.database) == 1437 and data.train is data.database
  assert np.all(np.bincount(data.query.labels) == 36)
  assert not set(data.query.ids) & set(data.database.ids)
  other = small_config(**{"dataset.split_seed": 1})
  assert not np.array_equal(digits.load_digits(other.dataset).query.ids, data.query.ids)


def test_mock_tfds_cifar10_ids_labels_and_learning(tmp_path):
  """End to end through the official tfds cifar10 builder, mocked (no download here).

  The fake splits come in a shuffled tfds order with class-coloured images: the run must map tfds ids to
  the documented ids (train_k -> k, test_k -> 50,000 + k), keep each image with its label, and learn.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from drlih_jax.data import image_io  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  colours = rng.integers(0, 256, (10, 3))
  fake, expected_labels = {}, {}
  for split, n, offset in (("train", 120, 0), ("test", 60, 50_000)):
    numbers = rng.permutation(n)  # tfds order != id order
    labels = (numbers * 7) % 10
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 12, (n, 32, 32, 3)), 0, 255)
    fake[split] = (images.astype(np.uint8), labels, [f"{split}_{k:05d}" for k in numbers])
    expected_labels.update({offset + int(k): int(l) for k, l in zip(numbers, labels)})

  def as_dataset_fn(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, read_config, shuffle_files
    images, labels, ids = fake[str(split)]
    if decoders:  # The source asks for the encoded bytes (SkipDecoding).
      images = [image_io.encode_png(i) for i in images]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels.astype(np.int64), "id": ids})

  config = small_config(**{
      "dataset.name": "cifar10-2", "dataset.source": "tfds", "dataset.loader": "tfds",
      "dataset.mean": (0.49, 0.48, 0.45), "dataset.std": (0.25, 0.24, 0.26),
      "input.classes_per_batch": 5, "input.images_per_class": 4, "input.augment": "crop_flip",
      "train.steps": 30, "train.checkpoint_every": 30, "train.log_every": 10, "train.eval_batch_size": 64})
  with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
    data = protocols.load_retrieval_data(config.dataset)
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == 30
  np.testing.assert_array_equal(data.database.ids, np.arange(120))
  np.testing.assert_array_equal(data.query.ids, 50_000 + np.arange(60))
  for split in (data.database, data.query):
    assert [expected_labels[int(i)] for i in split.ids] == split.labels.tolist()
    for image, label in zip(split.images[:5], split.labels[:5]):  # each image kept with its own label
      assert np.abs(image.reshape(-1, 3).mean(0) - colours[label]).max() < 8
  with open(tmp_path / "run" / "splits.json") as f:
    assert json.load(f)["ids"]["query"] == list(range(50_000, 50_060))
  with open(tmp_path / "run" / "eval_30.json") as f:
    report = json.load(f)
  assert report["num_queries"] == 60 and report["num_database"] == 120
  assert report["map"]["16"] > 0.5, report["map"]  # chance is 0.1: the colours are learnt


def test_encoded_codes_search_with_faiss(trained):
  """The encode mode's packed rows are what faiss's binary indexes take (README example)."""
  faiss = pytest.importorskip("faiss", reason="faiss-cpu (extra 'faiss') is not installed")
  config, workdir, _ = trained
  db = np.load(train.encode_checkpoint(workdir, "database"))
  q = np.load(train.encode_checkpoint(workdir, "query"))
  index = faiss.IndexBinaryFlat(int(db["bits"]))
  index.add(db["codes"])
  distances, neighbours = index.search(q["codes"], 5)
  unpacked_db = np.unpackbits(db["codes"], axis=1)[:, :16]
  unpacked_q = np.unpackbits(q["codes"], axis=1)[:, :16]
  expected = (unpacked_q[:, None, :] != unpacked_db[None, :, :]).sum(-1)
  np.testing.assert_array_equal(distances, np.sort(expected, axis=1)[:, :5])
  np.testing.assert_array_equal(np.take_along_axis(expected, neighbours.astype(np.int64), 1), distances)


def _streaming_config(root, data_dir, **overrides):
  values = {
      "dataset.name": "folder", "dataset.source": "folder", "dataset.root": root, "dataset.data_dir": data_dir,
      "dataset.loader": "pillow", "dataset.mean": (0.49, 0.48, 0.45), "dataset.std": (0.25, 0.24, 0.26),
      "input.mode": "streaming", "input.classes_per_batch": 5, "input.images_per_class": 4,
      "input.augment": "crop_flip", "train.steps": 12, "train.checkpoint_every": 4, "train.log_every": 4,
      "train.eval_batch_size": 64}
  values.update(overrides)
  return small_config(**values)


def test_streaming_mode_trains_and_resumes_exactly(tmp_path, tmp_path_factory):
  """tf.data streaming on real CIFAR JPEGs: a run resumed from a checkpoint equals an uninterrupted one."""
  pytest.importorskip("tensorflow_datasets", reason="tensorflow_datasets not installed")
  from tests.helpers import data as data_helpers  # pylint: disable=g-import-not-at-top
  root = data_helpers.cifar_subset(tmp_path_factory)
  data_dir = str(tmp_path / "tfds")
  config = _streaming_config(root, data_dir)
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  assert int(full.step) == 12 and os.path.exists(tmp_path / "full" / "eval_12.json")
  part_dir = tmp_path / "part"
  train.train_and_evaluate(config, str(part_dir))
  import shutil  # pylint: disable=g-import-not-at-top
  for step in ("8", "12"):
    shutil.rmtree(part_dir / "checkpoints" / step)
  resumed = train.train_and_evaluate(config, str(part_dir))  # restarts the stream at step 4
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(errors.ConfigError, match="input.mode must be one of"):
    train.train_and_evaluate(_streaming_config(root, data_dir, **{"input.mode": "disk"}), str(tmp_path / "bad"))
