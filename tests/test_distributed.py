"""Tests for drlih_jax.distributed: the multi-host start-up decision, with the environment mocked.

Nothing here initialises jax.distributed: `decide` is pure, `initialize` is given a recording
function, and the machine probe reads a fake sysfs tree.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drlih_jax import distributed
from drlih_jax.distributed import Decision, DistributedFlagsError, Host

REPO = Path(__file__).resolve().parents[1]

SINGLE = Host(tpu_chips=0, libtpu=False)
TPU_VM = Host(tpu_chips=4, libtpu=True)  # a v4 worker (v4-8, or one of the 8 of a v4-32)


def decide(mode="auto", coordinator_address=None, num_processes=None, process_id=None,
           environ=None, host=SINGLE):
  return distributed.decide(mode, coordinator_address, num_processes, process_id,
                            environ or {}, host)


# --- explicit flags (GPU clusters) ------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_explicit_flags_win_over_detection(mode):
  for host, environ in [(SINGLE, {}), (TPU_VM, {"TPU_WORKER_HOSTNAMES": "a,b"})]:
    decision = decide(mode, "10.0.0.1:1234", 4, 3, environ, host)
    assert decision.initialize
    assert dict(decision.kwargs) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                     "process_id": 3}
    assert "process 3 of 4" in decision.reason


@pytest.mark.parametrize("address", ["node-0:8476", "10.1.2.3:1", "[::1]:8476", "h.example.com:65535"])
def test_explicit_address_forms(address):
  assert decide("auto", address, 2, 0).kwargs["coordinator_address"] == address


@pytest.mark.parametrize("given,missing", [
    ({"coordinator_address": "h:1"}, ["--num_processes", "--process_id"]),
    ({"num_processes": 2}, ["--coordinator_address", "--process_id"]),
    ({"process_id": 0}, ["--coordinator_address", "--num_processes"]),
    ({"coordinator_address": "h:1", "num_processes": 2}, ["--process_id"]),
    ({"coordinator_address": "h:1", "process_id": 1}, ["--num_processes"]),
    ({"num_processes": 2, "process_id": 1}, ["--coordinator_address"]),
    ({"coordinator_address": "", "num_processes": 2, "process_id": 1}, ["--coordinator_address"]),
])
def test_partial_flags_name_the_missing_ones(given, missing):
  with pytest.raises(DistributedFlagsError) as raised:
    decide("auto", **given)
  message = str(raised.value)
  assert message.endswith("without " + ", ".join(missing)), message
  got = message.split(" got ")[1].split(" without ")[0].split(", ")
  assert got == [f"--{name}" for name, value in given.items() if value != ""], message


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "off", "coordinator_address": "h:1", "num_processes": 2, "process_id": 0},
     "--distributed=off contradicts"),
    ({"coordinator_address": "h:1", "num_processes": 0, "process_id": 0},
     "--num_processes must be at least 1, got 0"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
     "--process_id must be in [0, --num_processes=2), got 2"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": -1},
     "--process_id must be in [0, --num_processes=2), got -1"),
    ({"coordinator_address": "node-0", "num_processes": 2, "process_id": 0},
     "--coordinator_address must be HOST:PORT"),
    ({"coordinator_address": "node-0:port", "num_processes": 2, "process_id": 0},
     "--coordinator_address must be HOST:PORT"),
    ({"mode": "yes"}, "--distributed must be one of auto, on, off, got 'yes'"),
])
def test_bad_flags(kwargs, message):
  with pytest.raises(DistributedFlagsError) as raised:
    decide(**kwargs)
  assert message in str(raised.value)


def test_flags_error_is_a_value_error():
  assert issubclass(DistributedFlagsError, ValueError)


# --- on / off -----------------------------------------------------------------------


def test_off_never_initialises():
  for host, environ in [(SINGLE, {}), (TPU_VM, {}), (TPU_VM, {"TPU_WORKER_HOSTNAMES": "a,b"})]:
    assert decide("off", environ=environ, host=host) == Decision(False, {}, "--distributed=off: one process")


def test_on_lets_jax_detect_the_cluster_anywhere():
  for host in (SINGLE, TPU_VM):
    decision = decide("on", host=host)
    assert decision.initialize and dict(decision.kwargs) == {}


# --- auto: GKE -----------------------------------------------------------------------


@pytest.mark.parametrize("environ,initialize,reason", [
    ({"TPU_WORKER_HOSTNAMES": "w-0.svc,w-1.svc,w-2.svc,w-3.svc", "TPU_WORKER_ID": "2"}, True,
     "GKE multi-host TPU: 4 workers in TPU_WORKER_HOSTNAMES"),
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, True,
     "GKE multi-host TPU: 2 workers in TPU_PROCESS_ADDRESSES"),
    # JAX reads TPU_PROCESS_ADDRESSES first; so does the decision.
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476", "TPU_WORKER_HOSTNAMES": "a,b"}, False,
     "GKE single-host TPU (TPU_PROCESS_ADDRESSES names one worker)"),
    ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, False,
     "GKE single-host TPU (TPU_WORKER_HOSTNAMES names one worker)"),
    ({"TPU_WORKER_HOSTNAMES": "localhost,"}, False,
     "GKE single-host TPU (TPU_WORKER_HOSTNAMES names one worker)"),
])
@pytest.mark.parametrize("host", [SINGLE, TPU_VM], ids=["no-probe", "tpu-probe"])
def test_auto_gke(environ, initialize, reason, host):
  decision = decide("auto", environ=environ, host=host)
  assert decision.initialize is initialize
  assert dict(decision.kwargs) == {}
  assert decision.reason.startswith(reason), decision.reason


# --- auto: Cloud TPU VM / single machine ------------------------------------------------


def test_auto_cloud_tpu_vm_initialises_without_arguments():
  decision = decide("auto", environ={"HOME": "/home/u"}, host=TPU_VM)
  assert decision.initialize and dict(decision.kwargs) == {}
  assert decision.reason.startswith("Cloud TPU VM (4 local chips)")


@pytest.mark.parametrize("host,environ,initialize,reason", [
    (Host(tpu_chips=4, libtpu=False), {}, False, "4 TPU chips but libtpu is not installed"),
    (Host(tpu_chips=4, libtpu=False), {"JAX_FORCE_TPU_INIT": "1"}, True, "Cloud TPU VM"),
    (TPU_VM, {"TPU_SKIP_MDS_QUERY": "1"}, False, "Cloud TPU VM (4 chips) with TPU_SKIP_MDS_QUERY set"),
    (Host(tpu_chips=0, libtpu=True), {}, False, "single machine"),
    (Host(tpu_chips=0, libtpu=True), {"JAX_FORCE_TPU_INIT": "1"}, False, "single machine"),
    (SINGLE, {}, False, "single machine"),
    (SINGLE, {"CUDA_VISIBLE_DEVICES": "0,1"}, False, "single machine"),
])
def test_auto_machine(host, environ, initialize, reason):
  decision = decide("auto", environ=environ, host=host)
  assert decision.initialize is initialize
  assert dict(decision.kwargs) == {}
  assert decision.reason.startswith(reason), decision.reason


# --- the probe ---------------------------------------------------------------------------


def _pci_device(root, name, vendor, device):
  folder = root / name
  folder.mkdir(parents=True)
  (folder / "vendor").write_text(vendor + "\n")
  (folder / "device").write_text(device + "\n")


def test_count_tpu_chips_on_a_fake_sysfs(tmp_path):
  root = tmp_path / "devices"
  for i in range(4):
    _pci_device(root, f"0000:00:0{i + 4}.0", "0x1ae0", "0x005e")  # TPU v4
  _pci_device(root, "0000:00:03.0", "0x1ae0", "0x0042")  # Google gVNIC: not a TPU
  _pci_device(root, "0000:00:0a.0", "0x10de", "0x2330")  # an NVIDIA GPU
  (root / "0000:00:0b.0").mkdir()  # no vendor file
  (root / "stray").write_text("")
  assert distributed.count_tpu_chips(root) == 4
  assert distributed.count_tpu_chips(tmp_path / "missing") == 0


@pytest.mark.parametrize("device", sorted(distributed.TPU_PCI_DEVICE_IDS))
def test_every_tpu_generation_counts(tmp_path, device):
  _pci_device(tmp_path, "0000:00:04.0", "0x1ae0", device)
  assert distributed.count_tpu_chips(tmp_path) == 1


def test_tpu_device_ids_match_jax():
  """The PCI ids are JAX's own list (jax/_src/hardware_utils.py); a new chip in JAX shows up here."""
  hardware_utils = pytest.importorskip("jax._src.hardware_utils")
  ids = getattr(hardware_utils, "_TPU_PCI_DEVICE_IDS", None)
  if ids is None:
    pytest.skip("this JAX has no _TPU_PCI_DEVICE_IDS")
  assert set(ids) == distributed.TPU_PCI_DEVICE_IDS
  assert getattr(hardware_utils, "_GOOGLE_PCI_VENDOR_ID") == distributed.GOOGLE_PCI_VENDOR


def test_gke_variable_order_matches_jax(monkeypatch):
  """JAX's GKE detection reads TPU_PROCESS_ADDRESSES before TPU_WORKER_HOSTNAMES, as decide does."""
  cluster = pytest.importorskip("jax._src.clusters.cloud_tpu_cluster")
  for var in distributed.GKE_WORKER_LIST_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b,c")
  monkeypatch.setenv("TPU_PROCESS_ADDRESSES", "x")
  assert cluster.GkeTpuCluster._get_worker_list_in_slice() == ["x"]  # pylint: disable=protected-access
  assert not decide("auto", environ=dict(os.environ)).initialize


def test_libtpu_installed(tmp_path, monkeypatch):
  monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
  assert not distributed.libtpu_installed({})
  assert not distributed.libtpu_installed({"TPU_LIBRARY_PATH": str(tmp_path / "missing.so")})
  library = tmp_path / "libtpu.so"
  library.write_bytes(b"\x7fELF")
  assert distributed.libtpu_installed({"TPU_LIBRARY_PATH": str(library)})
  seen = []
  monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: seen.append(name) or object())
  assert distributed.libtpu_installed({})
  assert seen == ["libtpu"]


def test_probe_host(tmp_path):
  _pci_device(tmp_path, "0000:00:05.0", "0x1ae0", "0x0063")  # v5e
  library = tmp_path / "libtpu.so"
  library.write_bytes(b"")
  assert distributed.probe_host({"TPU_LIBRARY_PATH": str(library)}, tmp_path) == Host(1, True)


# --- initialize ----------------------------------------------------------------------------


def test_initialize_applies_the_decision():
  calls = []
  record = lambda **kwargs: calls.append(kwargs)  # pylint: disable=unnecessary-lambda-assignment
  decision = distributed.initialize("auto", environ={}, host=TPU_VM, initialize_fn=record)
  assert decision.initialize and calls == [{}]
  distributed.initialize("auto", "h:9", 2, 1, environ={}, host=SINGLE, initialize_fn=record)
  assert calls[-1] == {"coordinator_address": "h:9", "num_processes": 2, "process_id": 1}
  assert not distributed.initialize("auto", environ={}, host=SINGLE, initialize_fn=record).initialize
  assert len(calls) == 2
  with pytest.raises(DistributedFlagsError):
    distributed.initialize("auto", "h:9", None, 1, environ={}, host=TPU_VM, initialize_fn=record)
  assert len(calls) == 2


def test_initialize_turns_a_failed_detection_into_a_flags_error():
  def no_cluster(**kwargs):
    assert not kwargs
    raise ValueError("coordinator_address should be defined.")
  with pytest.raises(DistributedFlagsError) as raised:
    distributed.initialize("on", environ={}, host=SINGLE, initialize_fn=no_cluster)
  assert str(raised.value) == (
      "--distributed=on: jax.distributed.initialize() found no cluster to join (coordinator_address "
      "should be defined.); give --coordinator_address, --num_processes and --process_id, or "
      "--distributed=off")

  def refused(**kwargs):
    raise ValueError(f"bad {kwargs}")
  with pytest.raises(ValueError) as raised:  # explicit arguments: JAX's own error, unchanged
    distributed.initialize("on", "h:1", 2, 0, environ={}, host=SINGLE, initialize_fn=refused)
  assert not isinstance(raised.value, DistributedFlagsError)


def test_initialize_probes_the_machine_by_default(monkeypatch):
  seen = []
  monkeypatch.setattr(distributed, "probe_host", lambda environ: seen.append(environ) or TPU_VM)
  calls = []
  environ = {"HOME": "/h"}
  distributed.initialize(environ=environ, initialize_fn=lambda **kw: calls.append(kw))
  assert seen == [environ] and calls == [{}]


# --- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--num_processes=2"], "error: --coordinator_address, --num_processes and --process_id go together:"
     " got --num_processes without --coordinator_address, --process_id"),
    (["--coordinator_address=h:1", "--num_processes=2", "--process_id=0", "--distributed=off"],
     "error: --distributed=off contradicts"),
])
def test_main_rejects_bad_flags_in_one_line(tmp_path, args, message):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "drlih_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
       *args], cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith(message), proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not workdir.exists()
