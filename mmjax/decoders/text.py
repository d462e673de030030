"""Text decoder: a latent ``[B, Z]`` to per-position token logits ``[B, L, vocab_size]``, all at once."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax import normalization
from mmjax.decoders import base
from mmjax.decoders.base import LatentProjection
from mmjax.encoders.transformer import TransformerBlock


class TransformerTextDecoder(nn.Module):
  """A non-autoregressive decoder: learned position queries, conditioned on the latent, through a
  small transformer.

  The latent is projected to ``width`` and added to each of ``length`` learned position queries;
  `depth` pre-LN transformer blocks (`mmjax.encoders.TransformerBlock`, full attention: every
  position is an output) let the positions exchange information; a final LayerNorm and one
  ``Dense(vocab_size)`` shared by all positions give the logits. Tokens are independent given the
  latent (a factorised likelihood, as the multimodal VAEs use for captions), so one pass decodes
  the whole sequence; padding is just the pad token's logit at those positions.

  Why not an MLP to ``L·vocab`` logits: its output layer alone has ``width·L·vocab`` parameters and
  learns each position's vocabulary separately; here the vocabulary projection is shared by the
  positions (``width·vocab``), the parameter count hardly grows with `length`, and attention lets
  positions coordinate (word order, agreement) instead of each guessing its token alone.

  Attributes:
    length: ``L``, tokens per sequence (a ``ModalitySpec``'s ``shape[0]``).
    vocab_size: number of token ids.
    width: model width.
    depth: transformer blocks.
    num_heads: attention heads per block (must divide `width`).
    mlp_ratio: hidden width of each block's MLP relative to `width`.
    dropout_rate: dropout in attention and residual branches (training only; needs a ``dropout``
      rng with ``train=True``).
    modality: the modality's name, for errors.
    remat: recompute each block in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  >>> decoder = TransformerTextDecoder(length=6, vocab_size=20, width=16, depth=1, num_heads=2)
  >>> latent = jnp.zeros((3, 8))
  >>> decoder.apply(decoder.init(jax.random.key(0), latent), latent).shape
  (3, 6, 20)
  """

  length: int
  vocab_size: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  modality: str = "text"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, *, train: bool = False) -> jax.Array:
    where = base.describe(self)
    if self.width % self.num_heads:
      raise ValueError(f"{where}: width {self.width} must be divisible by num_heads {self.num_heads}.")
    condition = LatentProjection(self.width, where=where, dtype=self.dtype, name="latent_projection")(latent)
    queries = self.param("position_queries", nn.initializers.normal(0.02), (self.length, self.width), jnp.float32)
    x = queries.astype(self.dtype)[None] + condition[:, None, :]
    block = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
    for index in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"block{index}")(x, None, train)
    x = normalization.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    return linear.Dense(self.vocab_size, dtype=self.dtype, name="output")(x)
