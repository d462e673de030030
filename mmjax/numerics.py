"""Small numerical helpers shared across the package."""

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x / ‖x‖`` along `axis`; zero vectors stay zero (and have finite gradients).

  >>> l2_normalize(jnp.array([3.0, 4.0])).tolist()
  [0.6000000238418579, 0.800000011920929]
  """
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps))
