"""Multi-host start-up: decides whether this process joins a `jax.distributed` run, and how.

Every process of a multi-host run (each worker of a Cloud TPU slice such as v4-32 or
v5litepod-64, each GPU host of a cluster) runs the same command, and must call
`jax.distributed.initialize` before any other JAX call. `decide` turns the command-line
flags and the process environment into a `Decision`, without touching the network or JAX;
`initialize` probes the machine, decides, logs the reason and applies the decision.

The `--distributed` mode:

* `off`: never initialise (one process per run, whatever the machine).
* `on`: always initialise. Without coordinator flags `jax.distributed.initialize()` is
  called with no arguments, and JAX finds the cluster itself (Cloud TPU metadata, GKE,
  SLURM, Open MPI, Kubernetes). `launch/` passes `--distributed=on`, so that a printed
  command shows that every worker joins.
* `auto` (default): initialise when the machine says it is part of a slice:
  - a GKE TPU pod whose worker list (`TPU_PROCESS_ADDRESSES`, else `TPU_WORKER_HOSTNAMES`,
    the variables JAX's GKE detection reads) names more than one worker;
  - a Cloud TPU VM: TPU chips on the PCI bus and libtpu installed (what JAX's
    `cloud_tpu_init` checks before it calls the machine a Cloud TPU VM), unless
    `TPU_SKIP_MDS_QUERY` is set (which turns JAX's metadata look-up off). Which workers
    form the slice is in the GCE metadata, which JAX reads at initialisation, so a
    single-host TPU VM (v4-8) is initialised too and becomes a run of one process.
  Anything else is a single machine: nothing is initialised.

`--coordinator_address`, `--num_processes` and `--process_id` (for GPU clusters, or any
machines JAX cannot detect) go together and win over the detection in `auto` and `on`.
"""

import dataclasses
import importlib.util
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging

from drlih_jax import errors

MODES = ("auto", "on", "off")

# The explicit flags, in the order they are named in messages.
COORDINATOR_FLAGS = ("coordinator_address", "num_processes", "process_id")

# Where Linux lists PCI devices; each has `vendor` and `device` files holding hex ids.
PCI_DEVICES = "/sys/bus/pci/devices"
GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of Cloud TPU chips (v3, v4, v5p, v5e, v6e, TPU7x), as listed in JAX's
# jax/_src/hardware_utils.py. Google's vendor id also covers other devices (the gVNIC
# network card), hence the list.
TPU_PCI_DEVICE_IDS = frozenset(
    {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})

# GKE TPU worker lists, in the order JAX's GKE cluster detection reads them.
GKE_WORKER_LIST_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):[0-9]{1,5}$")


class DistributedFlagsError(errors.ConfigError):
  """The multi-process flags contradict each other or are incomplete (a user error)."""


@dataclasses.dataclass(frozen=True)
class Host:
  """What this machine looks like, as far as the decision needs.

  Attributes:
    tpu_chips: Cloud TPU chips on the PCI bus.
    libtpu: whether libtpu is installed (the `libtpu` package, or `TPU_LIBRARY_PATH`
      naming a file).
  """
  tpu_chips: int = 0
  libtpu: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
  """Whether to call `jax.distributed.initialize`, with which arguments, and why.

  Attributes:
    initialize: call `jax.distributed.initialize(**kwargs)`.
    kwargs: its keyword arguments; empty lets JAX detect the cluster.
    reason: one sentence for the log.
  """
  initialize: bool
  kwargs: Mapping[str, Any]
  reason: str


def count_tpu_chips(pci_devices: str | os.PathLike[str] = PCI_DEVICES) -> int:
  """Counts the Cloud TPU chips among the PCI devices (no JAX, no network).

  Args:
    pci_devices: the folder listing PCI devices, one subfolder each with `vendor` and
      `device` files.

  Returns:
    The number of devices with Google's vendor id and a TPU device id; 0 when the folder
    does not exist.
  """
  root = pathlib.Path(pci_devices)  # Local sysfs, never a URL.
  if not root.is_dir():
    return 0
  chips = 0
  for device in root.iterdir():
    try:
      vendor = (device / "vendor").read_text().strip()
      if vendor == GOOGLE_PCI_VENDOR and (device / "device").read_text().strip() in TPU_PCI_DEVICE_IDS:
        chips += 1
    except OSError:  # Not a device folder, or unreadable: not a TPU we can use.
      continue
  return chips


def libtpu_installed(environ: Mapping[str, str]) -> bool:
  """Whether libtpu can be found: `TPU_LIBRARY_PATH` naming a file, or the `libtpu` package.

  Args:
    environ: the process environment.

  Returns:
    True when JAX would find a TPU runtime library.
  """
  path = environ.get("TPU_LIBRARY_PATH")
  if path and os.path.isfile(path):
    return True
  return importlib.util.find_spec("libtpu") is not None


def probe_host(environ: Mapping[str, str], pci_devices: str | os.PathLike[str] = PCI_DEVICES) -> Host:
  """Looks at this machine: TPU chips on the PCI bus and libtpu. Reads local files only."""
  return Host(tpu_chips=count_tpu_chips(pci_devices), libtpu=libtpu_installed(environ))


def _explicit_kwargs(mode: str, coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None) -> dict[str, Any] | None:
  """Validates the coordinator flags; returns initialize's arguments, or None when none is given."""
  values = {"coordinator_address": coordinator_address or None, "num_processes": num_processes,
            "process_id": process_id}
  given = [name for name in COORDINATOR_FLAGS if values[name] is not None]
  if not given:
    return None
  missing = [name for name in COORDINATOR_FLAGS if values[name] is None]
  if missing:
    raise DistributedFlagsError(
        "--coordinator_address, --num_processes and --process_id go together: got "
        + ", ".join(f"--{name}" for name in given) + " without "
        + ", ".join(f"--{name}" for name in missing))
  if mode == "off":
    raise DistributedFlagsError(
        "--distributed=off contradicts --coordinator_address/--num_processes/--process_id "
        "(drop one or the other)")
  if num_processes < 1:
    raise DistributedFlagsError(f"--num_processes must be at least 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise DistributedFlagsError(
        f"--process_id must be in [0, --num_processes={num_processes}), got {process_id}")
  if not _HOST_PORT.match(coordinator_address):
    raise DistributedFlagsError(
        f"--coordinator_address must be HOST:PORT (the address of process 0), got {coordinator_address!r}")
  return dict(values)


def decide(mode: str, coordinator_address: str | None, num_processes: int | None,
           process_id: int | None, environ: Mapping[str, str], host: Host) -> Decision:
  """Decides whether and how to initialise `jax.distributed` (pure: no JAX, no I/O).

  Args:
    mode: `auto`, `on` or `off` (see the module docstring).
    coordinator_address: `--coordinator_address` (None or "" when not given).
    num_processes: `--num_processes` (None when not given).
    process_id: `--process_id` (None when not given).
    environ: the process environment.
    host: what `probe_host` found.

  Returns:
    The decision.

  Raises:
    DistributedFlagsError: an unknown mode; some but not all of the coordinator flags;
      coordinator flags with `--distributed=off`; out-of-range or malformed values.
  """
  if mode not in MODES:
    raise DistributedFlagsError(f"--distributed must be one of {', '.join(MODES)}, got {mode!r}")
  explicit = _explicit_kwargs(mode, coordinator_address, num_processes, process_id)
  if explicit is not None:
    return Decision(True, explicit, f"process {process_id} of {num_processes}, coordinator "
                    f"{coordinator_address} (--coordinator_address/--num_processes/--process_id)")
  if mode == "off":
    return Decision(False, {}, "--distributed=off: one process")
  if mode == "on":
    return Decision(True, {}, "--distributed=on: jax.distributed.initialize() detects the cluster "
                    "(Cloud TPU metadata, GKE, SLURM, Open MPI, Kubernetes)")

  for var in GKE_WORKER_LIST_VARS:
    if var in environ:
      workers = [w for w in environ[var].split(",") if w.strip()]
      if len(workers) > 1:
        return Decision(True, {}, f"GKE multi-host TPU: {len(workers)} workers in {var}")
      return Decision(False, {}, f"GKE single-host TPU ({var} names one worker): one process")
  if host.tpu_chips and (host.libtpu or "JAX_FORCE_TPU_INIT" in environ):
    if "TPU_SKIP_MDS_QUERY" in environ:
      return Decision(False, {}, f"Cloud TPU VM ({host.tpu_chips} chips) with TPU_SKIP_MDS_QUERY set, "
                      "so JAX cannot read the slice from the metadata: one process "
                      "(--distributed=on or the coordinator flags to force a multi-process run)")
    return Decision(True, {}, f"Cloud TPU VM ({host.tpu_chips} local chips): jax.distributed.initialize() "
                    "reads the slice's workers from the GCE metadata (one process on a single-host VM)")
  if host.tpu_chips:
    return Decision(False, {}, f"{host.tpu_chips} TPU chips but libtpu is not installed, so JAX will not "
                    "use them (pip install 'jax[tpu]'): one process")
  return Decision(False, {}, "single machine (no Cloud TPU VM, no GKE TPU worker list, no coordinator "
                  "flags): one process")


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None, *,
               environ: Mapping[str, str] | None = None, host: Host | None = None,
               initialize_fn: Callable[..., Any] | None = None) -> Decision:
  """Decides (see `decide`), logs the reason and, when so decided, initialises jax.distributed.

  Call it first, before any other JAX call.

  Args:
    mode: `auto`, `on` or `off`.
    coordinator_address: `--coordinator_address`.
    num_processes: `--num_processes`.
    process_id: `--process_id`.
    environ: the process environment (default `os.environ`).
    host: the machine (default: `probe_host(environ)`).
    initialize_fn: what to call (default `jax.distributed.initialize`).

  Returns:
    The decision that was applied.

  Raises:
    DistributedFlagsError: as `decide`; also when JAX is asked to detect the cluster and finds
      none (its ValueError, e.g. `--distributed=on` on a single machine).
  """
  environ = os.environ if environ is None else environ
  if host is None:
    host = probe_host(environ)
  decision = decide(mode, coordinator_address, num_processes, process_id, environ, host)
  # Only a decision to initialise is news; the single-machine case stays out of the log (and of the
  # one-line errors the command line prints).
  (logging.info if decision.initialize else logging.debug)("jax.distributed: %s", decision.reason)
  if decision.initialize:
    if initialize_fn is None:
      import jax  # pylint: disable=g-import-not-at-top
      initialize_fn = jax.distributed.initialize
    try:
      initialize_fn(**decision.kwargs)
    except ValueError as e:
      if decision.kwargs:  # Explicit, validated arguments: not a detection problem.
        raise
      raise DistributedFlagsError(
          f"--distributed={mode}: jax.distributed.initialize() found no cluster to join ({e}); "
          "give --coordinator_address, --num_processes and --process_id, or --distributed=off") from e
  return decision
