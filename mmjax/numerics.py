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


def masked_logsumexp(x: jax.Array, mask: jax.Array, axis: int = 0) -> jax.Array:
  """``log Σ exp(x)`` along `axis` over the entries where `mask` holds; 0 where it holds for none.

  Masked-out entries reach neither the value nor the gradient, whatever they hold (even ±inf or
  NaN): every `jnp.where` that discards them also keeps them out of the arithmetic before it (the
  "double where"), so their gradient is 0, never NaN. No -inf is used as a fill.

  Args:
    x: values.
    mask: bool, broadcastable to ``x.shape``.
    axis: the axis to reduce.

  Returns:
    ``x`` reduced along `axis`, in the dtype of ``x``.

  >>> x = jnp.array([[0.0, 1.0], [jnp.nan, 2.0]])
  >>> masked_logsumexp(x, jnp.array([[True, True], [False, True]])).round(4).tolist()
  [0.0, 2.3132...]
  >>> float(masked_logsumexp(x[0], jnp.zeros(2, bool)))
  0.0
  """
  mask = jnp.broadcast_to(mask, x.shape)
  safe = jnp.where(mask, x, 0)
  floor = jnp.finfo(safe.dtype).min
  any_valid = jnp.any(mask, axis=axis, keepdims=True)
  largest = jnp.max(jnp.where(mask, safe, floor), axis=axis, keepdims=True)
  shift = jax.lax.stop_gradient(jnp.where(any_valid, largest, 0))
  exponent = jnp.where(mask, safe - shift, 0)
  exponent = jnp.where(exponent > 0, 0, exponent)  # not jnp.minimum: it halves the gradient at the max
  total = jnp.sum(jnp.where(mask, jnp.exp(exponent), 0), axis=axis, keepdims=True)
  # In exact arithmetic the largest entry adds exp(0) = 1. XLA may recompute a fused producer of
  # `x` separately for the max and for the sum, with different rounding: at large magnitudes one
  # ulp is thousands and every exp underflows. The floor (and the clamp of the exponents at 0)
  # keep the result within an ulp of the max then, instead of -inf (or +inf).
  total = jnp.where(any_valid & (total >= 1), total, 1)
  result = jnp.where(any_valid, shift + jnp.log(total), 0)
  return jnp.squeeze(result, axis=axis)
