"""`mmjax.normalization.LayerNorm` against Flax's (same parameters, outputs and gradients) and
against a NumPy reference, under jit and vmap."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import normalization

OPTIONS = {
    "defaults": {},
    "exact variance": {"use_fast_variance": False},
    "no scale": {"use_scale": False},
    "no bias": {"use_bias": False},
    "neither": {"use_scale": False, "use_bias": False},
    "epsilon": {"epsilon": 1e-2},
}


def _perturbed(params):
  # Away from the ones/zeros initialisation, so a scale or bias applied wrongly shows.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), max(len(leaves), 1))
  return jax.tree.unflatten(tree, [leaf + 0.3 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", list(OPTIONS))
def test_matches_flax_layer_norm(name):
  options = OPTIONS[name]
  x = 2.0 * jax.random.normal(jax.random.key(1), (3, 5, 8)) + 1.0
  ours, theirs = normalization.LayerNorm(**options), nn.LayerNorm(**options)
  params = theirs.init(jax.random.key(2), x)
  chex.assert_trees_all_equal(ours.init(jax.random.key(2), x), params)
  params = _perturbed(params)
  chex.assert_trees_all_close(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6, atol=1e-6)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))  # noqa: E731
  chex.assert_trees_all_close(
      jax.grad(loss(ours), argnums=(0, 1))(params, x), jax.grad(loss(theirs), argnums=(0, 1))(params, x),
      rtol=1e-5, atol=1e-5,
  )


def _numpy_layer_norm(x, scale, bias, epsilon=1e-6):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + epsilon) * scale + bias


def test_against_numpy_under_jit_and_vmap():
  x = np.random.default_rng(0).normal(size=(4, 6, 10)) * 3 + 2
  norm = normalization.LayerNorm()
  params = _perturbed(norm.init(jax.random.key(0), jnp.asarray(x[0], jnp.float32)))
  want = _numpy_layer_norm(x, np.asarray(params["params"]["scale"]), np.asarray(params["params"]["bias"]))
  got = jax.jit(jax.vmap(lambda one: norm.apply(params, one)))(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_low_precision_inputs_compute_statistics_in_float32():
  # As Flax's: bfloat16 in, float32 statistics, the output in the promoted dtype of input and parameters.
  x = (jax.random.normal(jax.random.key(1), (4, 16)) * 100 + 1000).astype(jnp.bfloat16)
  for options in ({}, {"dtype": jnp.bfloat16}, {"param_dtype": jnp.bfloat16, "dtype": jnp.bfloat16}):
    ours, theirs = normalization.LayerNorm(**options), nn.LayerNorm(**options)
    params = theirs.init(jax.random.key(0), x)
    y, want = ours.apply(params, x), theirs.apply(params, x)
    assert y.dtype == want.dtype, options
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want, np.float32), rtol=1e-2, atol=1e-2)
