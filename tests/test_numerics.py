"""masked_logsumexp against scipy, with garbage in masked entries, huge magnitudes, jit, grad and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from mmjax.numerics import masked_logsumexp


@pytest.mark.parametrize("axis", [0, 1])
def test_matches_scipy_over_the_masked_entries_and_its_gradient_is_the_masked_softmax(axis):
  rng = np.random.default_rng(0)
  x = rng.normal(scale=3.0, size=(4, 5))
  mask = rng.uniform(size=(4, 5)) < 0.6
  mask[0, 0] = mask[1, 0] = True
  garbage = np.where(mask, x, np.array([np.nan, np.inf, -np.inf, 1e38, -1e38])[np.arange(20).reshape(4, 5) % 5])
  def total(x):
    per_slice = masked_logsumexp(x, jnp.asarray(mask), axis)
    return jnp.sum(per_slice), per_slice

  (_, per_slice), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jnp.asarray(garbage, jnp.float32))
  want = np.where(mask.any(axis), special.logsumexp(np.where(mask, x, -np.inf), axis=axis), 0.0)
  np.testing.assert_allclose(per_slice, want, rtol=1e-6, atol=1e-6)
  softmax = np.where(mask, np.exp(np.where(mask, x, -np.inf) - np.expand_dims(want, axis)), 0.0)
  np.testing.assert_allclose(grad, softmax, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad)[~mask] == 0)


def test_nothing_kept_gives_zero_with_zero_gradient():
  value, grad = jax.value_and_grad(lambda x: masked_logsumexp(x, jnp.zeros(3, bool)))(jnp.array([1.0, jnp.nan, jnp.inf]))
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)


def test_huge_magnitudes_stay_finite_with_the_exact_gradient():
  x = jnp.array([[-9.0e12, -4.7e10], [-4.6e10, -3.1e12]], jnp.float32)
  value, grad = jax.jit(jax.value_and_grad(lambda x: jnp.sum(masked_logsumexp(x, jnp.ones((), bool), 0))))(x)
  np.testing.assert_allclose(value, -4.6e10 - 4.7e10, rtol=1e-6)
  np.testing.assert_array_equal(grad, [[0.0, 1.0], [1.0, 0.0]])


def test_single_entry_has_unit_gradient_and_vmap():
  grad = jax.grad(lambda x: masked_logsumexp(x, jnp.ones(1, bool)))(jnp.array([2.5]))
  np.testing.assert_array_equal(grad, [1.0])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
  mask = jnp.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], bool)
  batched = jax.vmap(masked_logsumexp)(x, mask)
  np.testing.assert_allclose(batched, [masked_logsumexp(x[i], mask[i]) for i in range(3)], rtol=1e-6)
