"""Data parallelism, multi-process training, preemption and guarded training (CPU, subprocesses)."""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from drlih_jax import configuration
from drlih_jax import input_pipeline
from drlih_jax import run as run_lib
from drlih_jax import steps as steps_lib
from drlih_jax import train
from drlih_jax.data import protocols
from tests import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tests", "helpers", "run_training.py")


def _env(devices=1, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.update(extra)
  return env


def _run(workdir, out, *overrides, devices=1, check=True, **env):
  proc = subprocess.run([sys.executable, RUNNER, str(workdir), str(out), *overrides], cwd=REPO,
                        env=_env(devices, **env), capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"training subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def _params(path):
  data = np.load(path)
  return [data[f"arr_{i}"] for i in range(len(data.files) - 1)]


def test_eight_devices_match_one_device(tmp_path):
  common = ("train.steps=12", "train.checkpoint_every=12", "train.log_every=6")
  _run(tmp_path / "one", tmp_path / "one.npz", *common, "mesh_devices=1", devices=8)
  _run(tmp_path / "eight", tmp_path / "eight.npz", *common, "mesh_devices=8", devices=8)
  one, eight = _params(tmp_path / "one.npz"), _params(tmp_path / "eight.npz")
  assert len(one) == len(eight) > 0
  worst = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)) for a, b in zip(eight, one))
  assert worst < 1e-5, worst
  # And training moved the parameters (the comparison is not between two initialisations).
  init_dir = tmp_path / "init"
  _run(init_dir, tmp_path / "init.npz", "train.steps=1", "optim.learning_rate=1e-30", devices=1)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(one, _params(tmp_path / "init.npz"))) > 1e-3


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  common = ("train.steps=8", "train.checkpoint_every=4", "train.log_every=4")
  _run(tmp_path / "single", tmp_path / "single.npz", *common, devices=2)
  port = _free_port()
  workdir = tmp_path / "multi"
  procs = [subprocess.Popen([sys.executable, RUNNER, str(workdir), str(tmp_path / "multi.npz"), *common],
                            cwd=REPO, env=_env(1, DRLIH_COORDINATOR=f"localhost:{port}", DRLIH_NUM_PROCESSES="2",
                                               DRLIH_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  single, multi = _params(tmp_path / "single.npz"), _params(tmp_path / "multi.npz")
  worst = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)) for a, b in zip(multi, single))
  assert worst < 1e-5, worst
  # Only process 0 wrote reports: one event file, one eval JSON, one log of the eval.
  assert len(os.listdir(workdir / "tensorboard")) == 1
  assert sorted(p for p in os.listdir(workdir) if p.startswith("eval_") and p.endswith(".json")) == ["eval_8.json"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "8"]
  # A truncated newest checkpoint: both processes skip it, agree on step 4, and train step 8 again.
  for root, _, files in os.walk(workdir / "checkpoints" / "8"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(root, name)) // 3)
  os.remove(workdir / "DONE")
  procs = _two_process_run(workdir, tmp_path / "again.npz", common)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
    assert "Skipping unreadable checkpoint" in err, err[-3000:]
  assert "Moved the unreadable checkpoint" in outs[0][1] and "Moved the unreadable" not in outs[1][1]
  again = _params(tmp_path / "again.npz")
  for a, b in zip(again, single):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  names = sorted(os.listdir(workdir / "checkpoints"))
  assert "8" in names and sum(n.startswith("8.corrupt-") for n in names) == 1, names


def _two_process_run(workdir, out, common):
  port = _free_port()
  return [subprocess.Popen([sys.executable, RUNNER, str(workdir), str(out), *common], cwd=REPO,
                           env=_env(1, DRLIH_COORDINATOR=f"localhost:{port}", DRLIH_NUM_PROCESSES="2",
                                    DRLIH_PROCESS_ID=str(i)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  common = ("train.steps=40", "train.checkpoint_every=25", "train.log_every=10")
  _run(tmp_path / "single", tmp_path / "single.npz", *common, devices=2)
  workdir = tmp_path / "multi"
  procs = _two_process_run(workdir, tmp_path / "multi.npz", common)
  deadline = time.time() + 300
  while time.time() < deadline and not (workdir / "tensorboard").exists():
    time.sleep(0.05)
  time.sleep(1.0)
  procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
  assert saved and saved[-1] < 40, saved  # stopped before the end
  # Both processes stopped at the same step (JAX's preemption sync point) and saved it together.
  stops = [re.search(r"signal \S+ at step (\d+)", err) for _, err in outs]
  assert all(stops), outs[0][1][-2000:] + outs[1][1][-2000:]
  assert int(stops[0].group(1)) == int(stops[1].group(1)) == saved[-1]
  procs = _two_process_run(workdir, tmp_path / "multi.npz", common)
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  single, multi = _params(tmp_path / "single.npz"), _params(tmp_path / "multi.npz")
  worst = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)) for a, b in zip(multi, single))
  assert worst < 1e-5, worst


def _interrupt_and_resume(tmp_path, sig):
  common = ("train.steps=60", "train.checkpoint_every=5", "train.log_every=10")
  _run(tmp_path / "full", tmp_path / "full.npz", *common)
  workdir = tmp_path / "interrupted"
  proc = subprocess.Popen([sys.executable, RUNNER, str(workdir), str(tmp_path / "x.npz"), *common], cwd=REPO,
                          env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  ckpt_dir = workdir / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and not (ckpt_dir.exists() and any(p.isdigit() for p in os.listdir(ckpt_dir))):
    time.sleep(0.05)
  time.sleep(random.uniform(0.0, 0.5))
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  steps_saved = sorted(int(p) for p in os.listdir(ckpt_dir) if p.isdigit())
  assert steps_saved and steps_saved[-1] < 60, (steps_saved, err[-2000:])  # it really was interrupted
  _run(workdir, tmp_path / "resumed.npz", *common)
  for a, b in zip(_params(tmp_path / "resumed.npz"), _params(tmp_path / "full.npz")):
    np.testing.assert_array_equal(a, b)
  return proc.returncode, err


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
  code, _ = _interrupt_and_resume(tmp_path, signal.SIGKILL)
  assert code == -signal.SIGKILL


def test_sigterm_saves_exits_zero_and_resumes_bitwise(tmp_path):
  code, err = _interrupt_and_resume(tmp_path, signal.SIGTERM)
  assert code == 0, err[-2000:]
  assert "saving a checkpoint and exiting" in err


def test_nonfinite_updates_are_skipped_then_stop(tmp_path, caplog):
  config = test_train.small_config(**{"train.steps": 50, "optim.learning_rate": 1e38, "optim.warmup_steps": 0,
                                      "train.max_nonfinite_in_a_row": 3})
  with caplog.at_level("WARNING"):
    with pytest.raises(FloatingPointError, match="3 non-finite updates in a row"):
      train.train_and_evaluate(config, str(tmp_path))
  assert sum("update skipped" in r.getMessage() for r in caplog.records) == 3


def test_nonfinite_batch_keeps_parameters_and_batch_statistics():
  """Why the skip is hand-written rather than optax.apply_if_finite (which guards the optimiser update only):
  a non-finite batch must not overwrite the batch-norm statistics either."""
  config = test_train.small_config(**{"model.backbone": "resnet", "model.widths": (8,), "model.blocks_per_stage": 1})
  data = protocols.load_retrieval_data(config.dataset)
  run = run_lib.create_run(config, data)
  state = run.initial_state
  batch = steps_lib.draw_batch(jax.random.key(0), run.device_data(data), config)
  finite, metrics = steps_lib.train_step(state, batch, jax.random.key(1), model=run.model, tx=run.tx, config=config)
  assert float(metrics["nonfinite"]) == 0
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                       finite.batch_stats, state.batch_stats))
  assert max(moved) > 0  # a finite step does update the statistics
  poisoned = dict(batch, image=batch["image"].at[0, 0, 0, 0].set(np.nan))
  skipped, metrics = steps_lib.train_step(state, poisoned, jax.random.key(1), model=run.model, tx=run.tx,
                                          config=config)
  assert float(metrics["nonfinite"]) == 1 and int(skipped.step) == 1
  for new, old in zip(jax.tree.leaves((skipped.params, skipped.batch_stats, skipped.opt_state)),
                      jax.tree.leaves((state.params, state.batch_stats, state.opt_state))):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


def test_global_batch_rounds_up_to_the_device_count():
  cifar = configuration.load_file(os.path.join(REPO, "configs", "cifar.py"))  # 6 classes x 8 = 48
  assert [run_lib.global_batch_size(cifar, d) for d in (1, 4, 8, 16, 32, 64, 256)] == [48, 48, 48, 48, 64, 64,
                                                                                          256]
  assert [run_lib.eval_batch_size(cifar, d) for d in (3, 64)] == [258, 256]  # eval_batch_size 256


def test_rounded_batch_keeps_every_class_balanced():
  """48 images of 6 classes rounded to 50: 9 per class drawn, 50 kept, each class keeps 8 or 9, no repeats."""
  config = test_train.small_config(**{"input.classes_per_batch": 6, "input.images_per_class": 8})
  data = protocols.load_retrieval_data(config.dataset)
  config.input.images_per_class = 9
  device = input_pipeline.to_device(data.train, data.num_classes, config.input)
  config.input.images_per_class = 8
  batch = steps_lib.draw_batch(jax.random.key(3), device, config, batch_size=50)
  labels = np.asarray(batch["label"])
  assert batch["image"].shape[0] == 50
  counts = sorted(np.bincount(labels, minlength=10)[np.unique(labels)])
  assert len(counts) == 6 and counts == [8, 8, 8, 8, 9, 9], counts
  # The same draw without rounding is the plain 6 x 8 batch.
  plain = steps_lib.draw_batch(jax.random.key(3), device, config)
  assert plain["image"].shape[0] == 48 and sorted(np.bincount(np.asarray(plain["label"]))[
      np.unique(np.asarray(plain["label"]))]) == [8] * 6


def test_three_devices_train_and_evaluate_with_an_indivisible_batch(tmp_path):
  """Batch 80 and eval batch 512 on 3 devices: rounded to 81 and 513, logged, trained and evaluated."""
  proc = _run(tmp_path / "run", tmp_path / "run.npz", "train.steps=4", "train.checkpoint_every=4",
              "train.log_every=2", "mesh_devices=3", devices=8)
  assert "is not a multiple of the 3 devices: training uses 81" in proc.stderr
  with open(tmp_path / "run" / "eval_4.json") as f:
    assert json.load(f)["num_queries"] == 360
