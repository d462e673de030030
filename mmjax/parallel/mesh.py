"""Device meshes from config, and the shardings of batches on them.

Every run uses a mesh with three axes: ``data`` (pure data parallelism), ``fsdp`` (data
parallelism that also shards parameters and optimizer state) and ``model`` (tensor parallelism).
The batch is split over ``data`` and ``fsdp`` together. One device is a mesh of shape (1, 1, 1):
the same code path at every scale.
"""

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.schema import ConfigError, Field

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

CONFIG_SCHEMA = {axis: Field(int, low=-1) for axis in AXES}


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves the axis sizes of the config, where at most one -1 takes the remaining devices.

  >>> mesh_shape({"data": -1, "fsdp": 2, "model": 1}, 8)
  (4, 2, 1)
  """
  shape = [sizes[axis] for axis in AXES]
  if any(size == 0 or size < -1 for size in shape) or shape.count(-1) > 1:
    raise ConfigError(f"mesh: sizes must be positive with at most one -1, got {dict(sizes)}.")
  known = math.prod(size for size in shape if size != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh: {dict(sizes)} does not divide the {num_devices} devices.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh: {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, {num_devices} are present.")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all devices of all processes) with axes `AXES`."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def put_batch(batch, mesh: Mesh):
  """Assembles the global batch from every process's local rows, split over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
