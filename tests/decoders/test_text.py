"""Text decoder: per-position logits from learned queries conditioned on the latent; shared checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.decoders import TransformerTextDecoder


def _decoder(**options):
  return TransformerTextDecoder(**{"length": 5, "vocab_size": 11, "width": 16, "depth": 2, "num_heads": 2, **options})


def test_text_decoder(decoder_checks):
  decoder_checks(_decoder(), (5, 11))


def test_positions_differ_and_parameters_do_not_grow_with_vocab_times_length(count_parameters):
  decoder = _decoder()
  z = jax.random.normal(jax.random.key(0), (2, 4))
  logits = jax.jit(decoder.apply)(jax.jit(decoder.init)(jax.random.key(1), z), z)
  # Learned position queries: each position gets its own distribution.
  assert not np.allclose(logits[:, 0], logits[:, 1])
  # Doubling the length adds only the new positions' queries (16 each), not a vocab-sized layer.
  assert count_parameters(_decoder(length=10), 4) - count_parameters(decoder, 4) == 5 * 16


def test_dropout_applies_only_in_training():
  decoder = _decoder(dropout_rate=0.5)
  z = jax.random.normal(jax.random.key(0), (2, 4))
  variables = jax.jit(decoder.init)(jax.random.key(1), z)
  apply = jax.jit(decoder.apply, static_argnames="train")
  evaluation = apply(variables, z)
  np.testing.assert_array_equal(apply(variables, z, train=False), evaluation)
  training = apply(variables, z, train=True, rngs={"dropout": jax.random.key(2)})
  assert training.shape == evaluation.shape and not np.allclose(training, evaluation)


def test_bad_configuration_names_the_modality():
  with pytest.raises(ValueError, match=r"TransformerTextDecoder: modality 'caption': width 16 must be divisible by num_heads 3"):
    _decoder(num_heads=3, modality="caption").init(jax.random.key(0), jnp.zeros((2, 4)))
