"""Linear layers whose contractions run as one 2-D matrix product.

A dense layer on tokens, ``x[B, L, D] @ W[D, F]``, is a `lax.dot_general` with two free axes on the
left. Its weight gradient then contracts both ``B`` and ``L``, and XLA's CPU backend compiles that
into transposed copies around a slow contraction: forward and backward of a transformer MLP
(``256×16×128 → 512 → 128``) took 58–65 ms, against 23–24 ms with the tokens flattened to
``[B·L, D]`` first (see docs/performance.md). `matmul_dot_general` does that flattening for any
contraction of the left operand's trailing axes with the right operand's leading axes; the reshapes
are free (row-major bitcasts) on every backend, so the layers below are the default everywhere, not
a CPU special case. Parameters, their names and initialisation are Flax's own: a checkpoint of
`flax.linen.Dense` loads into `Dense` unchanged.
"""

import functools
import math

import flax.linen as nn
import jax
from jax import lax


def matmul_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None, preferred_element_type=None, **kwargs
) -> jax.Array:
  """`jax.lax.dot_general`, computed as one 2-D matmul when it contracts the trailing axes of `lhs`
  with the leading axes of `rhs` and has no batch axes (every dense layer); otherwise plain
  `lax.dot_general`. Same result shape and values (up to float rounding order) either way.

  Args:
    lhs, rhs, dimension_numbers, precision, preferred_element_type: as for `jax.lax.dot_general`.
    **kwargs: passed on to `jax.lax.dot_general` (e.g. ``out_sharding``).

  Returns:
    ``lax.dot_general(lhs, rhs, dimension_numbers, ...)``.

  >>> import jax.numpy as jnp
  >>> tokens, kernel = jnp.ones((2, 3, 4)), jnp.ones((4, 5, 6))
  >>> matmul_dot_general(tokens, kernel, (((2,), (0,)), ((), ()))).shape
  (2, 3, 5, 6)
  """
  (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
  k = len(lhs_contracting)
  free_lhs, free_rhs = lhs.shape[: lhs.ndim - k], rhs.shape[k:]
  is_matmul = (
      not lhs_batch
      and not rhs_batch
      and k > 0
      and tuple(lhs_contracting) == tuple(range(lhs.ndim - k, lhs.ndim))
      and tuple(rhs_contracting) == tuple(range(k))
  )
  if not is_matmul or (len(free_lhs) <= 1 and len(free_rhs) <= 1 and k == 1):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
  inner = math.prod(rhs.shape[:k])
  product = lax.dot_general(
      lhs.reshape(math.prod(free_lhs), inner),
      rhs.reshape(inner, math.prod(free_rhs)),
      (((1,), (0,)), ((), ())),
      precision,
      preferred_element_type,
      **kwargs,
  )
  return product.reshape(*free_lhs, *free_rhs)


# Flax's layers with the contraction above; drop-in replacements (same parameters, names and init).
Dense = functools.partial(nn.Dense, dot_general=matmul_dot_general)
DenseGeneral = functools.partial(nn.DenseGeneral, dot_general=matmul_dot_general)
MultiHeadDotProductAttention = functools.partial(
    nn.MultiHeadDotProductAttention, qkv_dot_general=matmul_dot_general, out_dot_general=matmul_dot_general
)
