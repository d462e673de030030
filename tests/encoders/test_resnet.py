"""ResNet: published parameter counts, v1.5 layout, NumPy reference blocks, batch statistics, tokens,
dtypes, remat and errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import ResNet, standard_resnet
from mmjax.encoders.resnet import ResidualBlock, group_count

IMAGES = jax.random.normal(jax.random.key(0), (3, 8, 8, 3))


def _tiny(**overrides) -> ResNet:
  settings = dict(features=6, stage_sizes=(1, 1), width=4, stem="small", zero_init_residual=False)
  return ResNet(**{**settings, **overrides})


def _train(encoder, variables, images, **kwargs):
  return encoder.apply(variables, images, train=True, mutable=["batch_stats"], **kwargs)


def _perturb(variables, key):
  """Norm scales and biases and running statistics moved away from their initial values (1, 0, mean
  0, var 1), so that a reference cannot agree by accident; kernels are kept."""
  keys = iter(jax.random.split(key, len(jax.tree.leaves(variables))))

  def move(path, leaf):
    noise = jax.random.uniform(next(keys), leaf.shape, minval=-0.5, maxval=0.5)
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return leaf
    return leaf * (1.25 + 1.5 * noise) if name.endswith("['var']") else leaf + noise

  return jax.tree_util.tree_map_with_path(move, variables)


# torchvision's published counts (``num_params`` of its ImageNet weights), 1000 classes. (101 and 152,
# 44,549,160 and 60,192,808, also match but take longer to trace.)
TORCHVISION_PARAMETERS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032}


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMETERS))
def test_parameter_counts_match_torchvision(depth):
  encoder = standard_resnet(depth, features=1000)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(encoder.init, jax.random.key(0), images)
  assert set(variables) == {"params", "batch_stats"}  # running statistics are not parameters
  assert sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"])) == TORCHVISION_PARAMETERS[depth]
  last_channels = 512 if depth < 50 else 2048
  assert variables["params"]["projection"]["kernel"].shape == (last_channels, 1000)
  # 224 / 32: a 7x7 grid of last-stage cells.
  encoded = jax.eval_shape(lambda v, x: encoder.apply(v, x, return_tokens=True), variables, images)
  assert encoded.tokens.shape == (1, 49, 1000)


def test_bottleneck_downsamples_in_its_3x3_convolution():
  encoder = _tiny(block="bottleneck")

  def intermediates(images):
    variables = encoder.init(jax.random.key(0), images)
    _, state = encoder.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    return state["intermediates"]

  shapes = jax.eval_shape(intermediates, IMAGES)["stage1_block0"]
  block = {name: value["__call__"][0].shape for name, value in shapes.items() if name != "__call__"}
  assert shapes["__call__"][0].shape == (3, 4, 4, 32)
  assert block == {
      "conv0": (3, 8, 8, 8),  # 1x1, full resolution
      "conv1": (3, 4, 4, 8),  # 3x3, stride 2 (v1.5)
      "conv2": (3, 4, 4, 32),  # 1x1, 4x expansion
      "shortcut_conv": (3, 4, 4, 32),
      "norm0": (3, 8, 8, 8),
      "norm1": (3, 4, 4, 8),
      "norm2": (3, 4, 4, 32),
      "shortcut_norm": (3, 4, 4, 32),
  }


def test_imagenet_stem_downsamples_4x():
  encoder = _tiny(stem="imagenet")
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(encoder.init, jax.random.key(0), images)
  encoded = jax.eval_shape(lambda v, x: encoder.apply(v, x, return_tokens=True), variables, images)
  assert encoded.tokens.shape == (2, 16, 6)  # 32 → 16 (conv) → 8 (pool) → 8, 4 (stages)
  assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 4)


# The branch of each block from the paper (He et al. 2016, Fig. 5), as (kernel, stride, channels):
# basic: two 3x3; bottleneck: 1x1 reduce, 3x3 (strided in v1.5), 1x1 expand by 4.
BRANCHES = {
    "basic": lambda c, s: [(3, s, c), (3, 1, c)],
    "bottleneck": lambda c, s: [(1, 1, c), (3, s, c), (1, 1, 4 * c)],
}


@pytest.mark.parametrize("block", sorted(BRANCHES))
def test_residual_block_matches_numpy_in_eval_mode(block, conv2d, jit_variant):
  module = ResidualBlock(channels=4, stride=2, block=block, norm="batch", zero_init_residual=False)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))  # even: "SAME" would pad asymmetrically
  variables = _perturb(jax.jit(module.init, static_argnums=2)(jax.random.key(2), x, False), jax.random.key(3))
  params = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["params"])
  stats = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["batch_stats"])

  def batch_norm(y, name):
    return (y - stats[name]["mean"]) / np.sqrt(stats[name]["var"] + 1e-5) * params[name]["scale"] + params[name]["bias"]

  # torchvision pads every k x k convolution by k // 2 on both sides.
  y = np.asarray(x, np.float64)
  layout = BRANCHES[block](4, 2)
  for index, (kernel, stride, _) in enumerate(layout):
    y = conv2d(y, params[f"conv{index}"]["kernel"], stride, ((kernel // 2,) * 2,) * 2)
    y = batch_norm(y, f"norm{index}")
    if index < len(layout) - 1:
      y = np.maximum(y, 0)
  shortcut = batch_norm(conv2d(x, params["shortcut_conv"]["kernel"], 2, ((0, 0), (0, 0))), "shortcut_norm")
  expected = np.maximum(shortcut + y, 0)
  assert 0.2 < np.mean(expected > 0) < 0.8  # the final ReLU neither passes nor blocks everything
  got = jax.jit(module.apply, static_argnums=2)(variables, x, False)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_train_mode_updates_running_statistics_with_momentum_0_9(conv2d, jit_variant):
  encoder = _tiny()
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  variables = _perturb(variables, jax.random.key(1))
  old = variables["batch_stats"]
  apply = jax.jit(lambda v, x: _train(encoder, v, x, capture_intermediates=True))
  _, state = apply(variables, IMAGES)
  new = state["batch_stats"]

  # The first norm, from a NumPy convolution of the images: 0.9 * old + 0.1 * batch statistic, with
  # the biased variance (divided by the count, not the count - 1).
  stem = conv2d(IMAGES, variables["params"]["stem_conv"]["kernel"], 1, ((1, 1), (1, 1)))
  mean, biased_var = stem.mean((0, 1, 2)), stem.var((0, 1, 2))
  np.testing.assert_allclose(new["stem_norm"]["mean"], 0.9 * old["stem_norm"]["mean"] + 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new["stem_norm"]["var"], 0.9 * old["stem_norm"]["var"] + 0.1 * biased_var, rtol=1e-5)
  unbiased_var = stem.var((0, 1, 2), ddof=1)
  assert not np.allclose(new["stem_norm"]["var"], 0.9 * old["stem_norm"]["var"] + 0.1 * unbiased_var, rtol=1e-5)

  # Every other norm, from the captured output of the convolution that feeds it.
  convs = state["intermediates"]
  for block in ("stage0_block0", "stage1_block0"):
    for norm, conv in (("norm0", "conv0"), ("norm1", "conv1"), ("shortcut_norm", "shortcut_conv")):
      if norm not in new[block]:
        continue  # identity shortcut
      features = np.asarray(convs[block][conv]["__call__"][0], np.float64)
      for name, statistic in (("mean", features.mean((0, 1, 2))), ("var", features.var((0, 1, 2)))):
        expected = 0.9 * old[block][norm][name] + 0.1 * statistic
        np.testing.assert_allclose(new[block][norm][name], expected, rtol=1e-4, atol=1e-6)
  assert "shortcut_norm" not in new["stage0_block0"] and "shortcut_norm" in new["stage1_block0"]


def test_eval_mode_is_per_sample_and_uses_the_running_statistics(jit_variant):
  encoder = _tiny()
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  evaluate = jax.jit(encoder.apply)
  train = jax.jit(lambda v, x: _train(encoder, v, x)[0])
  out = evaluate(variables, IMAGES)
  np.testing.assert_allclose(evaluate(variables, IMAGES[1:2])[0], out[1], rtol=1e-5, atol=1e-6)
  # In training a sample's features depend on the rest of its batch (through the batch statistics)…
  others_changed = IMAGES.at[1:].multiply(3.0)
  assert not np.allclose(train(variables, others_changed)[0], train(variables, IMAGES)[0], atol=1e-3)
  np.testing.assert_allclose(evaluate(variables, others_changed)[0], out[0], rtol=1e-5, atol=1e-6)
  # …and not on the running statistics, which evaluation reads.
  moved = {"params": variables["params"], "batch_stats": _perturb(variables["batch_stats"], jax.random.key(5))}
  np.testing.assert_allclose(train(moved, IMAGES), train(variables, IMAGES), rtol=1e-5, atol=1e-6)
  assert not np.allclose(evaluate(moved, IMAGES), out, atol=1e-3)


def test_group_norm_has_no_batch_statistics_and_is_per_sample():
  encoder = _tiny(norm="group", width=8)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  assert set(variables) == {"params"}
  apply = jax.jit(lambda v, x: encoder.apply(v, x, train=True))
  np.testing.assert_allclose(apply(variables, IMAGES[1:2])[0], apply(variables, IMAGES)[1], rtol=1e-5, atol=1e-6)
  assert [group_count(c) for c in (8, 16, 48, 64, 2048)] == [8, 16, 24, 32, 32]


@pytest.mark.parametrize("block,last_norm", [("basic", "norm1"), ("bottleneck", "norm2")])
def test_zero_init_residual_starts_every_block_as_its_shortcut(block, last_norm):
  encoder = _tiny(block=block, zero_init_residual=True)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  for name in ("stage0_block0", "stage1_block0"):
    assert not np.any(variables["params"][name][last_norm]["scale"])
  assert np.all(variables["params"]["stage1_block0"]["shortcut_norm"]["scale"] == 1)
  # With an identity shortcut (basic, first stage) the block is the identity on its input at init.
  _, state = jax.jit(lambda v, x: encoder.apply(v, x, capture_intermediates=True, mutable=["intermediates"]))(
      variables, IMAGES
  )
  if block == "basic":
    block_input = jax.nn.relu(state["intermediates"]["stem_norm"]["__call__"][0])
    np.testing.assert_array_equal(state["intermediates"]["stage0_block0"]["__call__"][0], block_input)
  plain = jax.jit(_tiny(block=block).init)(jax.random.key(0), IMAGES)
  assert np.all(plain["params"]["stage0_block0"][last_norm]["scale"] == 1)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_dtypes_and_tokens(block, dtype):
  encoder = _tiny(block=block, dtype=dtype)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  encoded, updates = jax.jit(lambda v, x: _train(encoder, v, x, return_tokens=True))(variables, IMAGES)
  assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
  chex.assert_shape(encoded.pooled, (3, 6))
  chex.assert_shape(encoded.tokens, (3, 16, 6))  # 8x8 → 8x8, 4x4 (small stem, two stages)
  assert encoded.pooled.dtype == encoded.tokens.dtype == dtype and bool(encoded.valid.all())
  tokens, pooled = encoded.tokens.astype(jnp.float32), encoded.pooled.astype(jnp.float32)
  tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(tokens.mean(axis=1), pooled, rtol=tolerance, atol=tolerance)
  reference = jax.jit(encoder.clone(dtype=jnp.float32).apply)(variables, IMAGES)
  np.testing.assert_allclose(jax.jit(encoder.apply)(variables, IMAGES).astype(jnp.float32), reference, atol=0.02)


def test_vmap_over_a_leading_axis_matches_a_loop():
  encoder = _tiny()
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  stacked = jnp.stack([IMAGES, IMAGES[::-1] * 2])
  batched = jax.jit(jax.vmap(lambda x: encoder.apply(variables, x, return_tokens=True)))(stacked)
  single = jax.jit(lambda x: encoder.apply(variables, x, return_tokens=True))(IMAGES[::-1] * 2)
  chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[1], batched), single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm,block", [("batch", "basic"), ("group", "bottleneck")])
def test_gradients_reach_every_parameter(norm, block, assert_every_leaf_nonzero):
  encoder = _tiny(norm=norm, block=block, width=8)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)

  def loss(params):
    encoded, _ = _train(encoder, {**variables, "params": params}, IMAGES, return_tokens=True)
    return jnp.sum(encoded.pooled**2) + jnp.sum(jnp.sin(encoded.tokens))

  assert_every_leaf_nonzero(jax.jit(jax.grad(loss))(variables["params"]))


def test_remat_changes_memory_not_results(count_remats):
  plain = _tiny()
  remat = plain.clone(remat=True)
  variables = jax.jit(plain.init)(jax.random.key(0), IMAGES)

  def loss(module):
    def value(params):
      out, updates = _train(module, {**variables, "params": params}, IMAGES)
      return jnp.sum(out**2), updates

    return value

  (plain_loss, plain_updates), plain_grads = jax.jit(jax.value_and_grad(loss(plain), has_aux=True))(variables["params"])
  (remat_loss, remat_updates), remat_grads = jax.jit(jax.value_and_grad(loss(remat), has_aux=True))(variables["params"])
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  chex.assert_trees_all_close(remat_updates, plain_updates, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-6)
  # One rematerialised region per block in the backward pass.
  assert count_remats(jax.grad(lambda p: loss(remat)(p)[0]), variables["params"]) == 2
  assert count_remats(jax.grad(lambda p: loss(plain)(p)[0]), variables["params"]) == 0


def test_bad_configuration_and_input_raise_clear_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"ResNet: modality 'image': expected shape \(\?, \?, \?, \?\), got \(8, 8, 3\)"):
    _tiny().init(key, IMAGES[0])
  with pytest.raises(ValueError, match=r"ResNet: modality 'satellite': expected a float array, got int32"):
    _tiny(modality="satellite").init(key, IMAGES.astype(jnp.int32))
  with pytest.raises(ValueError, match=r"ResNet: unknown block 'wide'; valid choices: \['basic', 'bottleneck'\]"):
    _tiny(block="wide").init(key, IMAGES)
  with pytest.raises(ValueError, match=r"ResNet: unknown stem 'cifar'; valid choices: \['imagenet', 'small'\]"):
    _tiny(stem="cifar").init(key, IMAGES)
  with pytest.raises(ValueError, match=r"ResNet: unknown norm 'layer'; valid choices: \['batch', 'group'\]"):
    _tiny(norm="layer").init(key, IMAGES)
  with pytest.raises(ValueError, match=r"standard_resnet: unknown depth 20; valid choices: \[18, 34, 50, 101, 152\]"):
    standard_resnet(20, features=4)


@pytest.mark.multidevice
def test_batch_statistics_under_jit_on_a_mesh_are_those_of_the_global_batch():
  from mmjax.parallel import mesh as meshes

  mesh = meshes.make_mesh({"data": -1, "fsdp": 1, "model": 1})
  images = jax.random.normal(jax.random.key(1), (mesh.size, 8, 8, 3))  # one sample per device
  encoder = _tiny()
  variables = jax.jit(encoder.init)(jax.random.key(0), images)
  train = jax.jit(lambda v, x: _train(encoder, v, x))
  out, updates = train(variables, jax.device_put(images, meshes.batch_sharding(mesh)))
  assert len(out.sharding.device_set) == mesh.size
  single_out, single_updates = train(variables, jax.device_put(images, jax.devices()[0]))
  chex.assert_trees_all_close(updates, single_updates, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, single_out, rtol=1e-5, atol=1e-5)
  # Per-device statistics (those of one sample) would be different.
  _, one_sample = train(variables, images[:1])
  stem_var = updates["batch_stats"]["stem_norm"]["var"]
  assert not np.allclose(one_sample["batch_stats"]["stem_norm"]["var"], stem_var, rtol=1e-3)
