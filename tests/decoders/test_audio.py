"""Audio decoder: waveforms of any length, tanh or linear output; shared checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoders import ConvTransposeAudioDecoder


def _decoder(**options):
  return ConvTransposeAudioDecoder(**{"num_samples": 100, "channels": (8, 8, 8), "kernel_size": 8, "output_kernel_size": 5, **options})


def test_audio_decoder(decoder_checks):
  decoder_checks(_decoder(), (100,))


@pytest.mark.parametrize("num_samples,stem", [(64, 4), (100, 7), (16_000, 250)])
def test_any_length_from_a_stem_and_a_crop(num_samples, stem):
  channels = (8, 8, 8) if num_samples < 1000 else (4, 4, 4, 4)
  decoder = _decoder(num_samples=num_samples, channels=channels)
  shapes = jax.eval_shape(decoder.init_with_output, jax.random.key(0), jnp.zeros((2, 3)))
  out, variables = shapes
  assert out.shape == (2, num_samples)
  assert variables["params"]["trunk"]["latent_projection"]["kernel"].shape == (3, stem * channels[0])


def test_tanh_output_is_the_linear_output_squashed():
  z = 30.0 * jax.random.normal(jax.random.key(0), (2, 3))
  linear = _decoder(output="linear")
  variables = jax.jit(linear.init)(jax.random.key(1), z)
  raw = jax.jit(linear.apply)(variables, z)
  squashed = jax.jit(_decoder(output="tanh").apply)(variables, z)
  np.testing.assert_allclose(squashed, np.tanh(np.asarray(raw)), rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(squashed) <= 1)


def test_bad_configuration_names_the_modality():
  with pytest.raises(ValueError, match=r"ConvTransposeAudioDecoder: modality 'speech': unknown output 'sigmoid'; valid choices: \['linear', 'tanh'\]"):
    _decoder(output="sigmoid", modality="speech").init(jax.random.key(0), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"ConvTransposeAudioDecoder: modality 'audio': channels must name at least the stem's"):
    _decoder(channels=()).init(jax.random.key(0), jnp.zeros((2, 3)))
