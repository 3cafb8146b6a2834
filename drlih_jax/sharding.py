"""The device mesh and placing host arrays on it.

Training is data-parallel over a one-axis `("data",)` mesh of every device of every process: parameters and
optimiser state are replicated, batches are sharded along their first axis.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from drlih_jax import errors

AXIS = "data"


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A one-axis ("data",) mesh over every device of every process (or the first `num_devices`)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise errors.ConfigError(f"mesh_devices={num_devices} but only {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), (AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def put_global(tree, sharding):
  """Places host arrays (identical on every process) onto a possibly multi-process `sharding`."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple
