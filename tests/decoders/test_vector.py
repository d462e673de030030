"""Vector decoder: shared checks and options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoders import MLPVectorDecoder
from mmjax.decoders import layers


def test_vector_decoder(decoder_checks):
  decoder_checks(MLPVectorDecoder(features=5, width=16, depth=2), (5,))


@pytest.mark.parametrize("activation", sorted(layers.ACTIVATIONS))
def test_every_activation_works(activation):
  decoder = MLPVectorDecoder(features=3, width=8, depth=2, activation=activation)
  z = jnp.ones((2, 4))
  out = jax.jit(decoder.apply)(jax.jit(decoder.init)(jax.random.key(0), z), z)
  assert out.shape == (2, 3) and np.all(np.isfinite(out))


def test_activation_table_against_numpy():
  x = np.linspace(-3, 3, 7)
  np.testing.assert_allclose(layers.activation("swish")(x), x / (1 + np.exp(-x)), rtol=1e-6)
  np.testing.assert_allclose(layers.activation("relu")(x), np.maximum(x, 0))
  with pytest.raises(ValueError, match=r"Unknown activation 'mish'; valid choices: \['gelu', 'leaky_relu', 'relu', 'swish', 'tanh'\]"):
    layers.activation("mish")
