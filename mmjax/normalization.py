"""Layer normalisation whose scale and shift gradients are matrix-vector products on CPU.

`LayerNorm` computes what `flax.linen.LayerNorm` computes with its default axes (statistics over
the last axis, in at least float32), with the same parameters, names and initialisation, so a
checkpoint of one loads into the other. Its scale and shift are broadcast with
`mmjax.linear.broadcast_parameter`, which makes their gradients (sums over every leading row)
products with a vector of ones on XLA's CPU backend instead of its slower windowed reductions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

from mmjax import linear


class LayerNorm(nn.Module):
  """Layer normalisation over the last axis: ``(x - mean) / sqrt(var + epsilon) * scale + bias``.

  Attributes:
    epsilon: added to the variance.
    dtype: the output dtype (by default, inferred from the input and parameters).
    param_dtype: the dtype of `scale` and `bias`.
    use_bias: learn a shift.
    use_scale: learn a scale.
    bias_init: initialiser of the shift (zeros).
    scale_init: initialiser of the scale (ones).
    use_fast_variance: the variance as ``mean(x²) - mean(x)²`` (Flax's default) instead of
      ``mean((x - mean(x))²)``.

  >>> norm = LayerNorm()
  >>> x = jnp.array([[1.0, 2.0, 3.0]])
  >>> variables = norm.init(jax.random.key(0), x)
  >>> norm.apply(variables, x).round(3).tolist()
  [[-1.225..., 0.0, 1.225...]]
  """

  epsilon: float = 1e-6
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: nn.initializers.Initializer = nn.initializers.zeros
  scale_init: nn.initializers.Initializer = nn.initializers.ones
  use_fast_variance: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises `x` ``[..., F]`` over its last axis."""
    features, rows = x.shape[-1], x.shape[:-1]
    statistics = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    mean = jnp.mean(statistics, axis=-1, keepdims=True)
    if self.use_fast_variance:
      variance = jnp.maximum(0.0, jnp.mean(lax.square(statistics), axis=-1, keepdims=True) - lax.square(mean))
    else:
      variance = jnp.mean(lax.square(statistics - mean), axis=-1, keepdims=True)
    multiplier = lax.rsqrt(variance + self.epsilon)
    parameters = []
    if self.use_scale:
      scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
      parameters.append(scale)
      multiplier = multiplier * linear.broadcast_parameter(scale, rows)
    y = (x - mean) * multiplier
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
      parameters.append(bias)
      y = y + linear.broadcast_parameter(bias, rows)
    return jnp.asarray(y, dtypes.canonicalize_dtype(x, *parameters, dtype=self.dtype))
