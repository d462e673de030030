"""Mesh shapes from config."""

import pytest

from mmjax.parallel import mesh
from mmjax.schema import ConfigError


@pytest.mark.parametrize(
    "sizes,devices,expected",
    [
        ({"data": -1, "fsdp": 1, "model": 1}, 8, (8, 1, 1)),
        ({"data": 2, "fsdp": -1, "model": 2}, 8, (2, 2, 2)),
        ({"data": 1, "fsdp": 1, "model": 1}, 1, (1, 1, 1)),
    ],
)
def test_mesh_shape_fills_the_minus_one(sizes, devices, expected):
  assert mesh.mesh_shape(sizes, devices) == expected


@pytest.mark.parametrize(
    "sizes,message",
    [
        ({"data": -1, "fsdp": -1, "model": 1}, "at most one -1"),
        ({"data": 3, "fsdp": -1, "model": 1}, "does not divide the 8 devices"),
        ({"data": 2, "fsdp": 2, "model": 1}, "needs 4 devices, 8 are present"),
        ({"data": 0, "fsdp": 1, "model": 1}, "sizes must be positive"),
    ],
)
def test_impossible_meshes_are_rejected(sizes, message):
  with pytest.raises(ConfigError, match=message):
    mesh.mesh_shape(sizes, 8)


def test_single_device_mesh():
  m = mesh.make_mesh({"data": -1, "fsdp": 1, "model": 1})
  assert m.axis_names == mesh.AXES and m.devices.size == 1
