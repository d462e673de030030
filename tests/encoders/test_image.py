"""Image encoder: shapes, norms, per-sample independence, tokens, NumPy reference, dtypes, remat and errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import ConvEncoder
from mmjax.encoders import base
from mmjax.encoders import layers
from tests.encoders.conftest import conv2d_reference, gelu_reference, layer_norm_reference

IMAGES = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))


@pytest.mark.parametrize("norm", sorted(layers.NORMS))
def test_every_norm_gives_per_sample_features(norm):
  encoder = ConvEncoder(features=6, channels=(8, 16), strides=(1, 2), norm=norm)
  variables = jax.jit(encoder.init)(jax.random.key(1), IMAGES)
  apply = jax.jit(encoder.apply)
  out = apply(variables, IMAGES)
  assert out.shape == (3, 6) and np.all(np.isfinite(out))
  # No statistic is shared across the batch: a sample's features do not depend on its neighbours.
  np.testing.assert_allclose(apply(variables, IMAGES[1:2])[0], out[1], atol=1e-5)


def test_strides_set_the_downsampling():
  encoder = ConvEncoder(features=4, channels=(4, 4, 4), strides=(2, 2, 2))
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  _, intermediates = jax.jit(lambda v, x: encoder.apply(v, x, capture_intermediates=True))(variables, IMAGES)
  assert intermediates["intermediates"]["stage2"]["conv"]["__call__"][0].shape == (3, 1, 1, 4)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class AgainstNumpyTest(chex.TestCase):
  """Forward passes against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_parameter_names_and_numerics_match_a_numpy_forward_pass(self):
    # Checkpoints written before the token output must still load and give the same features.
    encoder = ConvEncoder(features=5, channels=(4, 6), strides=(1, 2), kernel_size=3)
    images = jax.random.normal(jax.random.key(3), (2, 7, 7, 2))
    params = encoder.init(jax.random.key(4), images)["params"]
    assert jax.tree.map(jnp.shape, params) == {
        "stage0": {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "norm": {"scale": (4,), "bias": (4,)}},
        "stage1": {"conv": {"kernel": (3, 3, 4, 6), "bias": (6,)}, "norm": {"scale": (6,), "bias": (6,)}},
        "projection": {"kernel": (6, 5), "bias": (5,)},
    }
    x = np.asarray(images, np.float64)
    for index, stride in enumerate((1, 2)):
      stage = jax.tree.map(np.asarray, params[f"stage{index}"])
      pads = tuple(_same_padding(n, 3, stride) for n in x.shape[1:3])
      x = conv2d_reference(x, stage["conv"]["kernel"], stride, pads) + stage["conv"]["bias"]
      x = gelu_reference(layer_norm_reference(x, stage["norm"]["scale"], stage["norm"]["bias"]))
    expected = x.mean((1, 2)) @ np.asarray(params["projection"]["kernel"]) + np.asarray(params["projection"]["bias"])
    got = self.variant(encoder.apply)({"params": params}, images)
    chex.assert_shape(got, (2, 5))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_flatten_pooling_with_relu_matches_a_numpy_forward_pass(self):
    # The MMVAE SVHN encoder's layout (kernel 4, stride 2, ReLU, no norm, dense on the flattened
    # last map), at a small size.
    encoder = ConvEncoder(
        features=5, channels=(4, 6), strides=(2, 2), kernel_size=4, norm="none", activation="relu", pooling="flatten"
    )
    images = jax.random.normal(jax.random.key(3), (2, 12, 12, 3))
    params = encoder.init(jax.random.key(4), images)["params"]
    chex.assert_shape(params["projection"]["kernel"], (3 * 3 * 6, 5))
    x = np.asarray(images, np.float64)
    for index in range(2):
      stage = jax.tree.map(np.asarray, params[f"stage{index}"])
      pads = tuple(_same_padding(n, 4, 2) for n in x.shape[1:3])
      x = np.maximum(conv2d_reference(x, stage["conv"]["kernel"], 2, pads) + stage["conv"]["bias"], 0)
    expected = x.reshape(2, -1) @ np.asarray(params["projection"]["kernel"]) + np.asarray(params["projection"]["bias"])
    apply = self.variant(encoder.apply)
    out = apply({"params": params}, images)
    chex.assert_shape(out, (2, 5))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # Every sample alone gives the same features; every parameter gets a gradient.
    np.testing.assert_allclose(apply({"params": params}, images[1:]), out[1:], rtol=1e-5, atol=1e-6)
    grads = self.variant(jax.grad(lambda p: jnp.sum(jnp.sin(encoder.apply({"params": p}, images)))))(params)
    assert all(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(grads))


def test_tokens_are_the_projected_cells_of_the_last_feature_map():
  encoder = ConvEncoder(features=6, channels=(8, 16), strides=(1, 2))
  variables = jax.jit(encoder.init)(jax.random.key(1), IMAGES)

  def apply(v, x):
    return encoder.apply(v, x, return_tokens=True, capture_intermediates=True)

  encoded, state = jax.jit(apply)(variables, IMAGES)
  assert isinstance(encoded, base.Encoded)
  assert encoded.pooled.shape == (3, 6) and encoded.tokens.shape == (3, 16, 6) and encoded.valid.shape == (3, 16)
  assert encoded.valid.dtype == jnp.bool_ and bool(encoded.valid.all())
  # Row-major cells through the same projection; their mean is the pooled output.
  feature_map = np.asarray(state["intermediates"]["stage1"]["__call__"][0], np.float64)
  kernel, bias = (np.asarray(variables["params"]["projection"][name]) for name in ("kernel", "bias"))
  np.testing.assert_allclose(encoded.tokens[:, 5], feature_map[:, 1, 1] @ kernel + bias, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(encoded.tokens.mean(axis=1), encoded.pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(encoded.pooled, jax.jit(encoder.apply)(variables, IMAGES), rtol=1e-6, atol=1e-6)


def test_vmap_over_a_leading_axis_matches_a_loop():
  encoder = ConvEncoder(features=4, channels=(8,), strides=(2,))
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  stacked = jnp.stack([IMAGES, IMAGES[::-1] * 2])
  batched = jax.jit(jax.vmap(lambda x: encoder.apply(variables, x, return_tokens=True)))(stacked)
  single = jax.jit(lambda x: encoder.apply(variables, x, return_tokens=True))(IMAGES[::-1] * 2)
  chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[1], batched), single, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter(assert_every_leaf_nonzero):
  encoder = ConvEncoder(features=4, channels=(8, 8), strides=(1, 2))
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)

  def loss(v):
    encoded = encoder.apply(v, IMAGES, return_tokens=True)
    return jnp.sum(encoded.pooled**2) + jnp.sum(jnp.sin(encoded.tokens))

  assert_every_leaf_nonzero(jax.jit(jax.grad(loss))(variables))


def test_remat_changes_memory_not_results(count_remats):
  plain = ConvEncoder(features=4, channels=(8, 8), strides=(1, 2))
  remat = plain.clone(remat=True)
  variables = jax.jit(plain.init)(jax.random.key(0), IMAGES)

  def loss(module):
    return lambda v: jnp.sum(module.apply(v, IMAGES) ** 2)

  np.testing.assert_allclose(jax.jit(remat.apply)(variables, IMAGES), jax.jit(plain.apply)(variables, IMAGES))
  grads = jax.jit(jax.grad(loss(plain)))(variables)
  remat_grads = jax.jit(jax.grad(loss(remat)))(variables)
  chex.assert_trees_all_close(remat_grads, grads, rtol=1e-5, atol=1e-6)
  # Each stage is recomputed in the backward pass: one rematerialised region per stage.
  assert count_remats(jax.grad(loss(remat)), variables) == 2
  assert count_remats(jax.grad(loss(plain)), variables) == 0


def test_bfloat16_computation_keeps_float32_parameters():
  encoder = ConvEncoder(features=4, channels=(8,), strides=(1,), dtype=jnp.bfloat16)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  encoded = jax.jit(lambda v, x: encoder.apply(v, x, return_tokens=True))(variables, IMAGES)
  assert encoded.pooled.dtype == jnp.bfloat16 and encoded.tokens.dtype == jnp.bfloat16
  reference = jax.jit(encoder.clone(dtype=jnp.float32).apply)(variables, IMAGES)
  np.testing.assert_allclose(encoded.pooled.astype(jnp.float32), reference, atol=0.05, rtol=0.05)


def test_bad_configuration_and_input_raise_clear_errors():
  with pytest.raises(ValueError, match=r"channels \(8, 16\) and strides \(1,\) must have the same length"):
    ConvEncoder(features=4, channels=(8, 16), strides=(1,)).init(jax.random.key(0), IMAGES)
  message = r"ConvEncoder: modality 'image': expected shape \(\?, \?, \?, \?\), got \(3, 8, 8\)"
  with pytest.raises(ValueError, match=message):
    ConvEncoder(features=4).init(jax.random.key(0), IMAGES[..., 0])
  with pytest.raises(ValueError, match=r"ConvEncoder: modality 'image': expected a float array, got int32"):
    ConvEncoder(features=4).init(jax.random.key(0), jnp.zeros((3, 8, 8, 1), jnp.int32))
  with pytest.raises(ValueError, match=r"modality 'sketch': expected shape"):
    ConvEncoder(features=4, modality="sketch").init(jax.random.key(0), IMAGES[0])
  with pytest.raises(ValueError, match=r"Unknown norm 'batch'; valid choices"):
    ConvEncoder(features=4, norm="batch").init(jax.random.key(0), IMAGES)


def test_mmvae_svhn_layout_reaches_a_4x4x128_map():
  encoder = ConvEncoder(
      features=20, channels=(32, 64, 128), strides=(2, 2, 2), kernel_size=4, norm="none", activation="relu",
      pooling="flatten",
  )
  shapes = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert shapes["projection"]["kernel"].shape == (4 * 4 * 128, 20)


def test_bad_activation_pooling_and_tokens_raise_clear_errors():
  with pytest.raises(ValueError, match=r"ConvEncoder \(image\): unknown activation 'swish'; valid choices: \['gelu', 'relu'"):
    ConvEncoder(features=4, activation="swish").init(jax.random.key(0), IMAGES)
  with pytest.raises(ValueError, match=r"unknown pooling 'max'; valid choices: \['mean', 'flatten'\]"):
    ConvEncoder(features=4, pooling="max").init(jax.random.key(0), IMAGES)
  with pytest.raises(ValueError, match=r"pooling 'flatten' has no per-cell tokens"):
    ConvEncoder(features=4, pooling="flatten").init(jax.random.key(0), IMAGES, return_tokens=True)
  with pytest.raises(ValueError, match=r"modality 'svhn': expected shape"):
    ConvEncoder(features=4, pooling="flatten", modality="svhn").init(jax.random.key(0), IMAGES[0])
