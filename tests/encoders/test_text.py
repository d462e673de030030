"""Text encoders: padding really is ignored, pooling reads the right positions, remat and bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import GRUTextEncoder, TransformerTextEncoder
from mmjax.encoders import layers

TOKENS = jnp.array([[1, 7, 8, 9, 2, 0, 0, 0], [1, 5, 2, 0, 0, 0, 0, 0]], jnp.int32)


def _encoders():
  yield "transformer-mean", TransformerTextEncoder(8, vocab_size=12, max_length=12, width=16, depth=2, pooling="mean")
  yield "transformer-first", TransformerTextEncoder(8, vocab_size=12, max_length=12, width=16, depth=1, pooling="first")
  yield "transformer-last", TransformerTextEncoder(8, vocab_size=12, max_length=12, width=16, depth=1, pooling="last")
  yield "gru-last", GRUTextEncoder(8, vocab_size=12, width=16, pooling="last")
  yield "gru-mean-bidirectional", GRUTextEncoder(8, vocab_size=12, width=16, depth=2, bidirectional=True, pooling="mean")


@pytest.mark.parametrize("name,encoder", list(_encoders()))
def test_output_ignores_padding_and_batch_neighbours(name, encoder):
  variables = jax.jit(encoder.init)(jax.random.key(0), TOKENS)
  apply = jax.jit(encoder.apply)
  full = apply(variables, TOKENS)
  assert full.shape == (2, 8)
  # More padding, and each row alone, give the same features.
  longer = jnp.pad(TOKENS, ((0, 0), (0, 4)))
  np.testing.assert_allclose(apply(variables, longer), full, atol=1e-5)
  np.testing.assert_allclose(apply(variables, TOKENS[1:, :3])[0], full[1], atol=1e-5)


@pytest.mark.parametrize("name,encoder", list(_encoders()))
def test_vmap_over_a_leading_axis_matches_a_loop(name, encoder):
  variables = jax.jit(encoder.init)(jax.random.key(1), TOKENS)
  stacked = jnp.stack([TOKENS, TOKENS[::-1]])
  batched = jax.jit(jax.vmap(lambda t: encoder.apply(variables, t)))(stacked)
  np.testing.assert_allclose(batched[1], jax.jit(encoder.apply)(variables, TOKENS[::-1]), atol=1e-5)


def test_pooling_functions_against_numpy():
  x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  valid = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  np.testing.assert_allclose(layers.masked_mean(x, valid)[0], x[0, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(layers.masked_mean(x, valid)[1], x[1, 0], rtol=1e-6)
  np.testing.assert_array_equal(layers.last_valid_position(x, valid), np.stack([x[0, 2], x[1, 0]]))
  np.testing.assert_array_equal(layers.first_position(x, valid), x[:, 0])


def test_remat_changes_memory_not_results():
  plain = TransformerTextEncoder(8, vocab_size=12, max_length=8, width=16, depth=2)
  remat = plain.clone(remat=True)
  variables = jax.jit(plain.init)(jax.random.key(0), TOKENS)

  def loss(module, params):
    return jnp.sum(module.apply(params, TOKENS) ** 2)

  grads = jax.jit(jax.grad(lambda p: loss(plain, p)))(variables)
  remat_grads = jax.jit(jax.grad(lambda p: loss(remat, p)))(variables)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder_class", [TransformerTextEncoder, GRUTextEncoder])
def test_bfloat16_computation_keeps_float32_parameters(encoder_class):
  kwargs = {"max_length": 8} if encoder_class is TransformerTextEncoder else {}
  encoder = encoder_class(8, vocab_size=12, width=16, dtype=jnp.bfloat16, **kwargs)
  variables = jax.jit(encoder.init)(jax.random.key(0), TOKENS)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  reference = jax.jit(encoder.clone(dtype=jnp.float32).apply)(variables, TOKENS)
  out = jax.jit(encoder.apply)(variables, TOKENS)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=0.1, rtol=0.1)


def test_bad_inputs_raise_clear_errors():
  encoder = TransformerTextEncoder(8, vocab_size=12, max_length=4)
  with pytest.raises(ValueError, match=r"tokens: expected an int array, got float32"):
    encoder.init(jax.random.key(0), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"tokens have length 8, more than max_length 4"):
    encoder.init(jax.random.key(0), TOKENS)
  with pytest.raises(ValueError, match=r"unknown pooling 'max'; valid choices"):
    GRUTextEncoder(8, vocab_size=12, pooling="max").init(jax.random.key(0), TOKENS)
  with pytest.raises(ValueError, match=r"Unknown pooling 'max'; valid choices: \['first', 'last', 'mean'\]"):
    TransformerTextEncoder(8, vocab_size=12, max_length=8, pooling="max").init(jax.random.key(0), TOKENS)
