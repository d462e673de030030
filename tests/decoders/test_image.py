"""Image decoders: exact output sizes (powers of two or not), the MVAE architecture, shared checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoders import ConvTransposeImageDecoder, MLPImageDecoder
from mmjax.decoders import layers
from mmjax.encoders.layers import NORMS


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_conv_transpose_decoder(decoder_checks, shape):
  decoder_checks(ConvTransposeImageDecoder(shape=shape, channels=(8, 8, 8)), shape)


def test_mlp_decoder(decoder_checks):
  decoder_checks(MLPImageDecoder(shape=(28, 28, 1), width=16, depth=2), (28, 28, 1))
  for shape in [(8, 8, 1), (32, 32, 3)]:
    decoder = MLPImageDecoder(shape=shape, width=16, depth=2)
    assert jax.eval_shape(decoder.init_with_output, jax.random.key(0), jnp.zeros((3, 6)))[0].shape == (3, *shape)


@pytest.mark.parametrize(
    "shape,channels,stem",
    [
        ((28, 28, 1), (8, 8, 8), (7, 7)),  # 7·4 = 28: nothing to crop
        ((28, 28, 1), (8, 8, 8, 8), (4, 4)),  # 4·8 = 32: 2 rows and columns cropped on each side
        ((30, 20, 2), (8, 8, 8), (8, 5)),  # rectangular, 32 → 30 rows
        ((5, 5, 1), (8,), (5, 5)),  # no upsampling stage at all
    ],
)
def test_stem_and_crop_give_the_requested_size(shape, channels, stem):
  decoder = ConvTransposeImageDecoder(shape=shape, channels=channels, norm="none")
  z = jnp.zeros((2, 4))
  variables = jax.jit(decoder.init)(jax.random.key(0), z)
  assert variables["params"]["trunk"]["latent_projection"]["kernel"].shape == (4, int(np.prod(stem)) * channels[0])
  out, state = decoder.apply(variables, z, capture_intermediates=True)
  assert out.shape == (2, *shape)
  last_stage = f"stage{len(channels) - 2}"
  if len(channels) > 1:
    upsampled = state["intermediates"]["trunk"][last_stage]["__call__"][0]
    assert upsampled.shape[1:3] == tuple(s * 2 ** (len(channels) - 1) for s in stem)


def test_center_crop_against_numpy_slicing():
  x = np.arange(2 * 7 * 6 * 3).reshape(2, 7, 6, 3)
  np.testing.assert_array_equal(layers.center_crop(jnp.asarray(x), (4, 6)), x[:, 1:5, :, :])
  np.testing.assert_array_equal(layers.center_crop(jnp.asarray(x), (7, 3)), x[:, :, 1:4, :])


def test_conv_transpose_layers_upsample_by_the_stride():
  decoder = ConvTransposeImageDecoder(shape=(16, 16, 1), channels=(4, 4, 4), stride=2, kernel_size=4, norm="none")
  z = jnp.zeros((1, 3))
  variables = jax.jit(decoder.init)(jax.random.key(0), z)
  _, state = decoder.apply(variables, z, capture_intermediates=True)
  trunk = state["intermediates"]["trunk"]
  assert trunk["stage0"]["conv_transpose"]["__call__"][0].shape == (1, 8, 8, 4)
  assert trunk["stage1"]["conv_transpose"]["__call__"][0].shape == (1, 16, 16, 4)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_works(norm):
  decoder = ConvTransposeImageDecoder(shape=(8, 8, 2), channels=(8, 8), norm=norm)
  z = jnp.ones((2, 3))
  out = jax.jit(decoder.apply)(jax.jit(decoder.init)(jax.random.key(0), z), z)
  assert out.shape == (2, 8, 8, 2) and np.all(np.isfinite(out))


def test_mlp_decoder_defaults_are_the_mvae_architecture(count_parameters):
  # MVAE's MNIST image decoder (Wu & Goodman 2018, public code): Linear(64, 512), Linear(512, 512)
  # twice, Linear(512, 784), Swish between them.
  expected = (64 * 512 + 512) + 2 * (512 * 512 + 512) + (512 * 784 + 784)
  assert count_parameters(MLPImageDecoder(shape=(28, 28, 1)), 64) == expected == 960_784


def test_mlp_decoder_is_the_swish_mlp_it_describes():
  decoder = MLPImageDecoder(shape=(2, 2, 1), width=5, depth=2)
  z = np.random.default_rng(0).normal(size=(3, 4))
  variables = decoder.init(jax.random.key(0), jnp.float32(z))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  swish = lambda x: x / (1 + np.exp(-x))
  h = swish(z @ p["trunk"]["latent_projection"]["kernel"] + p["trunk"]["latent_projection"]["bias"])
  h = swish(h @ p["trunk"]["block1"]["dense"]["kernel"] + p["trunk"]["block1"]["dense"]["bias"])
  expected = (h @ p["output"]["kernel"] + p["output"]["bias"]).reshape(3, 2, 2, 1)
  np.testing.assert_allclose(decoder.apply(variables, jnp.float32(z)), expected, rtol=1e-5, atol=1e-6)


def test_bad_configurations_raise_errors_naming_the_modality():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"ConvTransposeImageDecoder: modality 'photo': shape must be \(H, W, C\), got \(8, 8\)"):
    ConvTransposeImageDecoder(shape=(8, 8), modality="photo").init(jax.random.key(0), z)
  with pytest.raises(ValueError, match=r"MLPImageDecoder: modality 'image': depth must be at least 1, got 0"):
    MLPImageDecoder(shape=(8, 8, 1), depth=0).init(jax.random.key(0), z)
  with pytest.raises(ValueError, match=r"Unknown activation 'elu'; valid choices"):
    MLPImageDecoder(shape=(8, 8, 1), width=4, activation="elu").init(jax.random.key(0), z)
  with pytest.raises(ValueError, match=r"Unknown norm 'batch'; valid choices"):
    ConvTransposeImageDecoder(shape=(8, 8, 1), channels=(8, 8), norm="batch").init(jax.random.key(0), z)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_conv_transpose_output_layer(decoder_checks, shape):
  decoder_checks(ConvTransposeImageDecoder(shape=shape, channels=(8, 8), output_stride=2, output_kernel_size=4), shape)


def test_mmvae_svhn_layout_upsamples_4_8_16_32():
  decoder = ConvTransposeImageDecoder(
      shape=(32, 32, 3), channels=(128, 64, 32), output_stride=2, output_kernel_size=4, norm="none"
  )
  z = jnp.zeros((1, 20))
  variables = jax.jit(decoder.init)(jax.random.key(0), z)
  assert variables["params"]["trunk"]["latent_projection"]["kernel"].shape == (20, 4 * 4 * 128)
  assert variables["params"]["output"]["kernel"].shape == (4, 4, 32, 3)
  out, state = decoder.apply(variables, z, capture_intermediates=True)
  trunk = state["intermediates"]["trunk"]
  assert trunk["stage0"]["__call__"][0].shape == (1, 8, 8, 64)
  assert trunk["stage1"]["__call__"][0].shape == (1, 16, 16, 32)
  assert out.shape == (1, 32, 32, 3)


def test_output_conv_transpose_matches_a_numpy_reference():
  # Flax's "SAME" conv-transpose with stride 2, kernel 4 = put zeros between the input's cells, pad
  # 2 on each side and correlate with the kernel (flax does not flip it).
  decoder = ConvTransposeImageDecoder(shape=(4, 4, 1), channels=(2,), output_stride=2, output_kernel_size=4, norm="none")
  z = jax.random.normal(jax.random.key(1), (1, 3))
  variables = jax.jit(decoder.init)(jax.random.key(0), z)
  out, state = decoder.apply(variables, z, capture_intermediates=True)
  x = np.asarray(state["intermediates"]["trunk"]["__call__"][0], np.float64)  # [1, 2, 2, 2]
  kernel = np.asarray(variables["params"]["output"]["kernel"], np.float64)
  dilated = np.zeros((1, 3, 3, 2))
  dilated[:, ::2, ::2] = x
  padded = np.pad(dilated, ((0, 0), (2, 2), (2, 2), (0, 0)))
  expected = np.zeros((1, 4, 4, 1))
  for i in range(4):
    for j in range(4):
      expected[:, i, j] = np.tensordot(padded[:, i : i + 4, j : j + 4], kernel, axes=([1, 2, 3], [0, 1, 2]))
  expected += np.asarray(variables["params"]["output"]["bias"])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_bad_output_stride_is_refused():
  with pytest.raises(ValueError, match="output_stride must be at least 1, got 0"):
    ConvTransposeImageDecoder(shape=(8, 8, 1), channels=(4,), output_stride=0).init(jax.random.key(0), jnp.zeros((1, 3)))
