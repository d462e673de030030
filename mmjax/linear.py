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

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _broadcast_summed_by_matvec(parameter: jax.Array, rows: tuple[int, ...]) -> jax.Array:
  return jnp.broadcast_to(parameter, (*rows, *parameter.shape))


@_broadcast_summed_by_matvec.defjvp
def _broadcast_summed_by_matvec_jvp(rows, primals, tangents):
  (parameter,), (tangent,) = primals, tangents
  # The tangent as a rank-1 product makes its transpose, the parameter's gradient, a product of a
  # vector of ones with the [rows, parameter] cotangent instead of a reduction.
  ones = jnp.ones((math.prod(rows), 1), tangent.dtype)
  spread = lax.dot_general(
      ones, tangent.reshape(1, -1), (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
  )
  return _broadcast_summed_by_matvec(parameter, rows), spread.astype(tangent.dtype).reshape(*rows, *parameter.shape)


def broadcast_parameter(parameter: jax.Array, rows: tuple[int, ...]) -> jax.Array:
  """`parameter` broadcast to ``(*rows, *parameter.shape)``, e.g. a bias to every token of a batch.

  The value is `jnp.broadcast_to`'s. What differs is the gradient, the sum of the cotangent over
  `rows`: on CPU it is computed as a product with a vector of ones. XLA's CPU backend compiles a
  sum over several leading axes (batch and tokens, batch and pixels) into windowed reductions
  that ran 3–15× slower than that matrix-vector product (``[256, 16, 512] → [512]``: 2.6 against
  0.17 ms; ``[256, 16, 16, 32] → [32]``: 1.0 against 0.3 ms; docs/performance.md), and such sums
  are the gradient of every bias, LayerNorm scale and shift. On GPU and TPU it is the plain
  broadcast, whose gradient is XLA's reduction.

  Args:
    parameter: the array to repeat, e.g. ``[F]``.
    rows: the leading axes to repeat it over, e.g. ``(B, L)``.

  Returns:
    ``[*rows, *parameter.shape]``.

  >>> bias = jnp.array([1.0, 2.0])
  >>> broadcast_parameter(bias, (3,)).tolist()
  [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
  >>> jax.grad(lambda b: jnp.sum(broadcast_parameter(b, (3, 4))))(bias).tolist()
  [12.0, 12.0]
  """
  rows = tuple(rows)
  if not rows:
    return parameter
  if jax.default_backend() != "cpu":
    return jnp.broadcast_to(parameter, (*rows, *parameter.shape))
  return _broadcast_summed_by_matvec(parameter, rows)


def _add_bias_by_broadcast_parameter(layer: nn.Module, flax_layer: type[nn.Module], inputs: jax.Array) -> jax.Array:
  """``flax_layer``'s computation without its bias, in `layer`'s scope, then, with ``use_bias``, the
  bias as Flax adds it (a ``[features]`` parameter named ``"bias"``), broadcast with
  `broadcast_parameter`."""
  fields = {field.name: getattr(layer, field.name) for field in dataclasses.fields(flax_layer) if field.init}
  del fields["parent"], fields["name"]
  unbiased = flax_layer(**{**fields, "use_bias": False})
  # The kernel lives in this layer's own scope, where Flax's layer keeps it, next to the bias.
  nn.share_scope(layer, unbiased)
  y = unbiased(inputs)
  if not layer.use_bias:
    return y
  bias = layer.param("bias", layer.bias_init, (layer.features,), layer.param_dtype)
  bias = layer.promote_dtype(bias, dtype=layer.dtype)[0]
  return y + broadcast_parameter(bias, y.shape[:-1])


class Dense(nn.Dense):
  """`flax.linen.Dense` (same parameters, names and initialisation) whose contraction is, by
  default, `matmul_dot_general` and whose bias is added with `broadcast_parameter`."""

  dot_general: Callable[..., jax.Array] | None = matmul_dot_general

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _add_bias_by_broadcast_parameter(self, nn.Dense, inputs)


class Conv(nn.Conv):
  """`flax.linen.Conv` (same parameters, names and initialisation) whose bias is added with
  `broadcast_parameter`."""

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _add_bias_by_broadcast_parameter(self, nn.Conv, inputs)


class ConvTranspose(nn.ConvTranspose):
  """`flax.linen.ConvTranspose` (same parameters, names and initialisation) whose bias is added
  with `broadcast_parameter`."""

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    return _add_bias_by_broadcast_parameter(self, nn.ConvTranspose, inputs)


# Flax's layers with the contraction above; drop-in replacements (same parameters, names and init).
DenseGeneral = functools.partial(nn.DenseGeneral, dot_general=matmul_dot_general)
MultiHeadDotProductAttention = functools.partial(
    nn.MultiHeadDotProductAttention, qkv_dot_general=matmul_dot_general, out_dot_general=matmul_dot_general
)
