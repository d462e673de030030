"""Collective losses on 8 devices equal the dense loss of the global batch, in value and gradients.

Run with ``MMJAX_TEST_DEVICES=8 python -m pytest -m multidevice -p no:xdist tests/losses``.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import PartitionSpec as P

from mmjax import losses
from tests.losses.conftest import assert_trees_close as assert_close

pytestmark = pytest.mark.multidevice

DEVICES = 8
GLOBAL_BATCH = 40  # 5 rows per device: with chunk_size=2 every device has a partial last chunk.

# Each case: the per-device loss (its scalar arguments last), and the dense loss it must equal.
CASES = {
    "clip": (losses.clip_loss, losses.clip_loss),
    "siglip": (losses.siglip_loss, losses.siglip_loss),
    "chunked_clip": (functools.partial(losses.chunked_clip_loss, chunk_size=2), losses.clip_loss),
    "chunked_siglip": (functools.partial(losses.chunked_siglip_loss, chunk_size=2), losses.siglip_loss),
}
SCALARS = {"clip": (np.log(1 / 0.07),), "siglip": (np.log(10.0), -3.0)}


def _inputs(name, seed=0):
  rng = np.random.default_rng(seed)
  image, text = (rng.normal(size=(GLOBAL_BATCH, 6)) for _ in range(2))
  normalise = lambda x: jnp.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), jnp.float32)
  mask = jnp.asarray(rng.random(GLOBAL_BATCH) < 0.7)
  scalars = tuple(jnp.float32(value) for value in SCALARS[name.removeprefix("chunked_")])
  return normalise(image), normalise(text), scalars, mask


def _dense_value_and_grads(name, image, text, scalars, mask):
  dense = lambda image, text, *scalars: CASES[name][1](image, text, *scalars, mask=mask)
  return jax.jit(jax.value_and_grad(dense, argnums=tuple(range(2 + len(scalars)))))(image, text, *scalars)


MESHES = {
    "1d": ((8,), ("data",), "data"),
    # The batch split over two mesh axes, as `mmjax.parallel.mesh` splits it over data and fsdp.
    "2d": ((4, 2), ("data", "fsdp"), ("data", "fsdp")),
}


def _shard_map_value_and_grads(name, mesh_name, image, text, scalars, mask, check_vma=True):
  shape, axes, axis_name = MESHES[mesh_name]
  mesh = jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))

  def per_device(image, text, mask, *scalars):
    return CASES[name][0](image, text, *scalars, mask=mask, axis_name=axis_name)

  in_specs = (P(axis_name), P(axis_name), P(axis_name)) + (P(),) * len(scalars)
  global_loss = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=check_vma)
  argnums = (0, 1) + tuple(range(3, 3 + len(scalars)))
  return jax.jit(jax.value_and_grad(global_loss, argnums=argnums))(image, text, mask, *scalars)


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_shard_map_equals_dense_global_loss(name, masked, mesh_name, assert_close):
  image, text, scalars, mask = _inputs(name)
  mask = mask if masked else jnp.ones(GLOBAL_BATCH, bool)
  got = _shard_map_value_and_grads(name, mesh_name, image, text, scalars, mask)
  assert_close(got, _dense_value_and_grads(name, image, text, scalars, mask))


@pytest.mark.parametrize("name", sorted(CASES))
def test_shard_map_without_vma_checks_equals_dense_global_loss(name, assert_close):
  image, text, scalars, mask = _inputs(name, seed=2)
  got = _shard_map_value_and_grads(name, "1d", image, text, scalars, mask, check_vma=False)
  assert_close(got, _dense_value_and_grads(name, image, text, scalars, mask))


class PmapTest(chex.TestCase):
  """The losses under `jax.pmap` with ``axis_name``, through chex's pmap variant."""

  @chex.variants(with_pmap=True)
  @parameterized.named_parameters((name, name) for name in sorted(CASES))
  def test_pmap_gives_global_loss_and_the_pmap_gradient_convention(self, name):
    image, text, scalars, mask = _inputs(name, seed=1)
    split = lambda x: x.reshape(DEVICES, GLOBAL_BATCH // DEVICES, *x.shape[1:])

    def per_device(image, text, mask, scalars):
      loss = lambda image, text, scalars: CASES[name][0](image, text, *scalars, mask=mask, axis_name="batch")
      value, (d_image, d_text, d_scalars) = jax.value_and_grad(loss, argnums=(0, 1, 2))(image, text, scalars)
      return value, d_image, d_text, jax.lax.pmean(d_scalars, "batch")

    mapped = self.variant(per_device, axis_name="batch", in_axes=(0, 0, 0, None), n_devices=DEVICES,
                          broadcast_args_to_devices=False, reduce_fn="identity")
    value, d_image, d_text, d_scalars = mapped(split(image), split(text), split(mask), scalars)
    chex.assert_shape(value, (DEVICES,))
    dense_value, dense_grads = _dense_value_and_grads(name, image, text, scalars, mask)
    # Every device returns the global loss; pmap differentiates the sum of the 8 identical copies,
    # so embedding gradients are 8x the dense ones and the pmean of replicated ones is exact.
    assert_close(value, np.full(DEVICES, dense_value))
    assert_close(d_image.reshape(image.shape) / DEVICES, dense_grads[0])
    assert_close(d_text.reshape(text.shape) / DEVICES, dense_grads[1])
    assert_close([d[0] for d in d_scalars], dense_grads[2:])


@pytest.mark.parametrize("name", ["siglip", "chunked_siglip"])
def test_ring_memory_per_device_does_not_grow_with_devices(name):
  local, dim = 64, 8

  def temp_bytes(devices):
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:devices])
    per_device = functools.partial(CASES[name][0], axis_name="data")
    global_loss = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
    embeddings = jax.ShapeDtypeStruct((devices * local, dim), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    step = jax.jit(jax.value_and_grad(global_loss, argnums=(0, 1, 2, 3))).lower(embeddings, embeddings, scalar, scalar)
    return step.compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(DEVICES) <= temp_bytes(DEVICES // 2)
  # Less than the [local, global] logits a device holds when it gathers the texts instead.
  assert temp_bytes(DEVICES) < local * DEVICES * local * 4


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_inputs_give_the_float32_global_loss(name, assert_close):
  """Under jax_enable_x64 the collective paths compute in float32 too, as the dense losses do."""
  image, text, scalars, mask = _inputs(name, seed=3)
  want = _shard_map_value_and_grads(name, "1d", image, text, scalars, mask)
  with jax.enable_x64(True):
    wide = lambda x: jnp.asarray(x, jnp.float64)  # noqa: E731
    got = _shard_map_value_and_grads(name, "1d", wide(image), wide(text), tuple(map(wide, scalars)), mask)
  assert got[0].dtype == jnp.float32
  assert_close(got[0], want[0])


@pytest.mark.parametrize("varying", ["rows", "columns", "scale", "bias"])
def test_pair_sum_takes_inputs_that_vary_over_an_axis_the_others_do_not(varying, assert_close):
  """`sigmoid_pair_sum` inputs may differ in variance: here one of them takes a different value on
  each index of a second mesh axis (``model``) while the others do not, and the columns ring over
  ``data``. Every (model index, device) sums its rows against all columns, and values and
  gradients equal the dense sums, one per value of the varying input."""
  from mmjax.losses.blockwise import sigmoid_pair_sum

  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rng = np.random.default_rng(4)
  inputs = {"rows": rng.normal(size=(12, 5)), "columns": rng.normal(size=(12, 5)), "scale": 1.5, "bias": -0.5}
  # The varying input gets a leading axis of 2 values, split over ``model``.
  inputs[varying] = np.stack([np.asarray(inputs[varying]), 0.5 * np.asarray(inputs[varying]) + 0.1])
  inputs = {name: jnp.float32(value) for name, value in inputs.items()}
  names = ("rows", "columns", "scale", "bias")
  valid = jnp.ones(12, bool)

  def per_device(valid, *args):
    args = dict(zip(names, args))
    args[varying] = args[varying][0]
    local = sigmoid_pair_sum(*(args[n] for n in names), valid, valid, chunk_size=2, axis_name="data")
    return jax.lax.psum(local, "data")[None]

  batch = {"rows": P("data"), "columns": P("data"), "scale": P(), "bias": P()}
  batch[varying] = P("model", *batch[varying])
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), *(batch[n] for n in names)), out_specs=P("model"))
  got = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(mapped(valid, *a)), argnums=(0, 1, 2, 3)))(*(inputs[n] for n in names))

  def dense(*args):
    args = dict(zip(names, args))
    return sum(sigmoid_pair_sum(*(value if n == varying else args[n] for n in names), valid, valid, chunk_size=2)
               for value in args[varying])

  assert_close(got, jax.value_and_grad(dense, argnums=(0, 1, 2, 3))(*(inputs[n] for n in names)))


def test_pair_sum_with_inputs_replicated_over_the_ring_axis():
  """Inputs that do not vary over `axis_name` at all (the same rows and columns on every device)
  still ring: each device sums its rows against its own block, with positives, and against the
  same block again on each of the other hops, without."""
  from mmjax.losses.blockwise import sigmoid_pair_sum

  mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(5)
  rows, columns = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  valid = jnp.ones(6, bool)
  per_device = lambda r, c: sigmoid_pair_sum(r, c, jnp.float32(2.0), jnp.float32(-1.0), valid, valid, chunk_size=4,  # noqa: E731
                                             axis_name="data")[None]
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=P("data"))
  got = jax.jit(mapped)(jnp.float32(rows), jnp.float32(columns))  # every device's own sum
  logits = 2.0 * rows @ columns.T - 1.0
  softplus = lambda x: np.logaddexp(x, 0.0)  # noqa: E731
  with_positives = np.sum(np.where(np.eye(6, dtype=bool), softplus(-logits), softplus(logits)))
  np.testing.assert_allclose(got, np.full(DEVICES, with_positives + (DEVICES - 1) * np.sum(softplus(logits))), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_scale_beyond_the_clamp_is_clamped_like_the_dense_loss(name, assert_close):
  """A log-scale past ``max_scale`` (100) gives the dense loss at scale 100 and no scale gradient."""
  image, text, scalars, mask = _inputs(name, seed=6)
  scalars = (jnp.float32(np.log(300.0)), *scalars[1:])
  got = _shard_map_value_and_grads(name, "1d", image, text, scalars, mask)
  assert_close(got, _dense_value_and_grads(name, image, text, scalars, mask))
  assert float(got[1][2]) == 0.0


@pytest.mark.parametrize("varying", ["rows", "columns", "scale"])
def test_cross_entropies_take_inputs_that_vary_over_an_axis_the_others_do_not(varying, assert_close):
  """`row_column_cross_entropies` under `shard_map`, with one input taking a different value on
  each device of the axis and the others replicated: values and gradients equal the dense ones."""
  from mmjax.losses.blockwise import row_column_cross_entropies

  mesh = jax.make_mesh((2,), ("model",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
  rng = np.random.default_rng(7)
  inputs = {"rows": rng.normal(size=(5, 3)), "columns": rng.normal(size=(7, 3)), "scale": 2.0}
  inputs[varying] = np.stack([np.asarray(inputs[varying]), -0.5 * np.asarray(inputs[varying]) + 0.2])
  inputs = {name: jnp.float32(value) for name, value in inputs.items()}
  names = ("rows", "columns", "scale")
  row_valid, column_valid = jnp.array([1, 1, 0, 1, 1], bool), jnp.array([1, 1, 1, 0, 1, 1, 1], bool)

  def cross_entropy_sum(rows, columns, scale):
    row_shifted, row_shift, positive, column_shifted, column_shift = row_column_cross_entropies(
        rows, columns, scale, row_valid, column_valid, chunk_size=2, offset=1)
    rows_ce = jnp.where(row_valid, row_shifted + (row_shift - positive), 0.0)
    columns_ce = jnp.where(row_valid, column_shifted[1:6] + (column_shift[1:6] - positive), 0.0)
    return jnp.sum(rows_ce) + jnp.sum(columns_ce)

  def per_device(*args):
    args = dict(zip(names, args))
    args[varying] = args[varying][0]
    return cross_entropy_sum(*(args[n] for n in names))[None]

  specs = {"rows": P(), "columns": P(), "scale": P()}
  specs[varying] = P("model")
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=tuple(specs[n] for n in names), out_specs=P("model"))
  got = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(mapped(*a)), argnums=(0, 1, 2)))(*(inputs[n] for n in names))

  def dense(*args):
    args = dict(zip(names, args))
    return sum(cross_entropy_sum(*(value if n == varying else args[n] for n in names)) for value in args[varying])

  assert_close(got, jax.value_and_grad(dense, argnums=(0, 1, 2))(*(inputs[n] for n in names)))
