"""The pre-LayerNorm transformer block shared by the text and image (ViT) encoders and fusions."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax import normalization


class TransformerBlock(nn.Module):
  """Pre-LayerNorm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

  num_heads: int
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    y = normalization.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    y = linear.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout_rate, name="attention"
    )(y, y, mask=attention_mask, deterministic=not train)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = normalization.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
    y = linear.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(y)
    y = linear.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(y))
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
