"""Small numerical helpers shared across the package."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x / ‖x‖`` along `axis`; zero vectors stay zero (and have finite gradients).

  >>> l2_normalize(jnp.array([3.0, 4.0])).tolist()
  [0.6000000238418579, 0.800000011920929]
  """
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean of `values` over the entries where `mask` holds (all entries when None); 0 when none does.

  Masked-out entries reach neither the value nor the gradient (`jnp.where`, not a product, so even
  an infinite entry is left out).

  >>> float(masked_mean(jnp.array([1.0, 2.0, jnp.inf]), jnp.array([True, True, False])))
  1.5
  >>> float(masked_mean(jnp.array([1.0, 2.0]), jnp.array([False, False])))
  0.0
  """
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
