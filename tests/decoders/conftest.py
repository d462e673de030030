"""Checks every decoder must pass, shared by the per-module decoder tests."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import jaxprs

LATENT_DIM = 6


def latent(batch: int = 3, dim: int = LATENT_DIM, seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (batch, dim))


def _shapes_jit_and_independence(decoder, expected_shape):
  z = latent()
  variables = jax.jit(decoder.init)(jax.random.key(1), z)
  apply = jax.jit(decoder.apply)
  out = apply(variables, z)
  assert out.shape == (3, *expected_shape), out.shape
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
  # No statistic is shared across the batch: a sample decodes the same alone.
  np.testing.assert_allclose(apply(variables, z[1:2])[0], out[1], rtol=1e-5, atol=1e-5)
  # The latent matters.
  assert not np.allclose(out[0], out[1])
  return variables, out


def _vmap_matches_a_loop(decoder, variables):
  stacked = jnp.stack([latent(seed=2), latent(seed=3)])
  batched = jax.jit(jax.vmap(lambda z: decoder.apply(variables, z)))(stacked)
  for z, got in zip(stacked, batched):
    np.testing.assert_allclose(got, jax.jit(decoder.apply)(variables, z), rtol=1e-5, atol=1e-5)


def _gradients_reach_every_parameter(decoder, variables, out):
  # A random projection of the outputs: a plain sum would hide the gradients of parameters whose
  # effect sums to zero (a LayerNorm's input, for one).
  weights = jax.random.normal(jax.random.key(4), out.shape)
  grads = jax.jit(jax.grad(lambda v: jnp.sum(decoder.apply(v, latent()) * weights)))(variables)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)) and np.any(np.asarray(grad) != 0), jax.tree_util.keystr(path)
  return grads


def _remat_changes_memory_not_results(decoder, variables, out, grads):
  remat = decoder.clone(remat=True)
  weights = jax.random.normal(jax.random.key(4), out.shape)
  remat_grads = jax.jit(jax.grad(lambda v: jnp.sum(remat.apply(v, latent()) * weights)))(variables)
  chex.assert_trees_all_close(remat_grads, grads, rtol=1e-4, atol=1e-6)
  # Equal gradients alone would pass a remat that does nothing: the recomputation must be traced.
  gradient = lambda module: jax.grad(lambda v: jnp.sum(module.apply(v, latent()) * weights))
  assert jaxprs.count_remats(gradient(remat), variables) > 0
  assert jaxprs.count_remats(gradient(decoder), variables) == 0


def _bfloat16_computation_keeps_float32_parameters(decoder, out):
  low = decoder.clone(dtype=jnp.bfloat16)
  variables = jax.jit(low.init)(jax.random.key(1), latent())
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  got = jax.jit(low.apply)(variables, latent())
  assert got.dtype == jnp.bfloat16
  # Same parameters as the float32 run (same key), so close to its outputs.
  scale = float(np.max(np.abs(out)))
  np.testing.assert_allclose(np.asarray(got, np.float32), out, atol=0.05 * scale)


def _bad_latents_raise_errors_naming_the_modality(decoder, variables):
  name = re.escape(f"{type(decoder).__name__}: modality {decoder.modality!r}: latent")
  with pytest.raises(ValueError, match=name + r": expected shape \(B, Z\), got \(3,\)"):
    decoder.init(jax.random.key(0), jnp.zeros(3))
  with pytest.raises(ValueError, match=name + r": expected shape \(B, Z\), got \(3, 6, 1\)"):
    decoder.init(jax.random.key(0), jnp.zeros((3, LATENT_DIM, 1)))
  with pytest.raises(ValueError, match=name + f": expected shape \\(B, {LATENT_DIM}\\), got \\(3, 4\\)"):
    decoder.apply(variables, jnp.zeros((3, 4)))
  with pytest.raises(ValueError, match=name + ": expected a float array"):
    decoder.apply(variables, jnp.zeros((3, LATENT_DIM), jnp.int32))


def check_decoder(decoder, expected_shape) -> dict:
  """Runs every shared check on `decoder` (small!); returns its float32 variables."""
  variables, out = _shapes_jit_and_independence(decoder, expected_shape)
  _vmap_matches_a_loop(decoder, variables)
  grads = _gradients_reach_every_parameter(decoder, variables, out)
  _remat_changes_memory_not_results(decoder, variables, out, grads)
  _bfloat16_computation_keeps_float32_parameters(decoder, out)
  _bad_latents_raise_errors_naming_the_modality(decoder, variables)
  return variables


def parameter_count(decoder, latent_dim: int) -> int:
  """Parameters of `decoder` for a `latent_dim` latent, from shapes alone (nothing computed)."""
  shapes = jax.eval_shape(decoder.init, jax.random.key(0), jax.ShapeDtypeStruct((1, latent_dim), jnp.float32))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


@pytest.fixture
def count_parameters():
  """``count_parameters(decoder, latent_dim)``."""
  return parameter_count


@pytest.fixture
def decoder_checks():
  """The shared checks: ``check_decoder(decoder, expected_per_example_shape)``."""
  return check_decoder
