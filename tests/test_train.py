"""End-to-end: train_and_evaluate on digits, checkpoints, eval and encode modes, bad input."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import digits as digits_config
from drlih_jax import checkpointing
from drlih_jax import input_pipeline
from drlih_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**overrides):
  config = digits_config.get_config()
  config.dataset.loader = "pillow"  # no tfds preparation: fast; the tfds path is tested separately
  config.train.steps = 40
  config.train.log_every = 20
  config.train.checkpoint_every = 20
  config.hash.bits = 16
  config.hash.eval_bits = (8, 16)
  config.model.hidden = 32
  config.model.feature_dim = 32
  config.model.widths = (16,)
  config.train.eval_batch_size = 512
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
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
  for name in ("config.json", "splits.json", "eval_40.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ["20", "40"]
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
  path = train.evaluate_checkpoint(config, workdir)
  with open(path) as f:
    from_checkpoint = json.load(f)
  assert from_checkpoint == during_training


def test_checkpoint_round_trip(trained):
  config, workdir, state = trained
  manager = checkpointing.create_manager(workdir, 3)
  restored = checkpointing.restore(manager, 40, state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  older = checkpointing.restore(manager, 20, state)
  assert int(older.step) == 20


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
  path = train.encode_checkpoint(config, workdir, "query")
  data = np.load(path)
  assert data["codes"].dtype == np.uint8 and data["codes"].shape == (360, 2)
  assert int(data["bits"]) == 16 and data["labels"].shape == (360,) and data["ids"].shape == (360,)


def test_triplet_objective_trains(tmp_path):
  config = small_config(**{"objective": "triplet", "train.steps": 20})
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 20
  assert os.path.exists(tmp_path / "eval_20.json")


def test_eval_without_checkpoint_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint found in .*checkpoints"):
    train.evaluate_checkpoint(small_config(), str(tmp_path))


def test_bad_config_values():
  with pytest.raises(ValueError, match="hash.bits=10 is not divisible by hash.group=4"):
    train.train_and_evaluate(small_config(**{"hash.bits": 10}), "/tmp/unused-drlih")
  with pytest.raises(ValueError, match="dataset.name"):
    train.train_and_evaluate(small_config(**{"dataset.name": "imagenet"}), "/tmp/unused-drlih")


def test_batch_not_class_balanced():
  config = small_config(**{"input.classes_per_batch": 11})
  sizes = np.full(10, 143)
  with pytest.raises(ValueError, match="input.classes_per_batch=11"):
    input_pipeline.check_batch_config(sizes, config.input)
  with pytest.raises(ValueError, match="not divisible into class-balanced groups"):
    input_pipeline.check_batch_config(np.array([5, 300, 300]), small_config(**{
        "input.classes_per_batch": 3, "input.images_per_class": 8}).input)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="workdir .* is not writable"):
    train.train_and_evaluate(small_config(), str(blocker / "run"))


def test_cli_unknown_config_key_and_missing_checkpoint(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  bad_key = subprocess.run(
      [sys.executable, "-m", "drlih_jax.main", "--config=configs/digits.py", f"--workdir={tmp_path}",
       "--config.hash.bitz=3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert bad_key.returncode != 0
  assert "bitz" in bad_key.stderr
  no_ckpt = subprocess.run(
      [sys.executable, "-m", "drlih_jax.main", "--config=configs/digits.py", f"--workdir={tmp_path}",
       "--mode=eval", "--config.dataset.loader=pillow"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert no_ckpt.returncode == 1
  assert "no checkpoint found in" in no_ckpt.stderr and str(tmp_path) in no_ckpt.stderr
