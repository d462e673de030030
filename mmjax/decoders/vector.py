"""Vector decoder: a latent ``[B, Z]`` to feature means ``[B, D]``."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.decoders import base
from mmjax.decoders.layers import MLPTrunk


class MLPVectorDecoder(nn.Module):
  """An MLP to the means (or any unbounded parameters) of a vector modality's ``D`` features.

  `depth` hidden layers ``Dense(width) → norm → activation``, then ``Dense(features)``.

  Attributes:
    features: ``D``, the vector's size (a ``ModalitySpec``'s ``shape[0]``).
    width: hidden units per layer.
    depth: hidden layers (at least 1).
    norm: a name in `mmjax.encoders.layers.NORMS`.
    activation: a name in `mmjax.decoders.layers.ACTIVATIONS`.
    modality: the modality's name, for errors.
    remat: recompute each hidden layer (after the first) in the backward pass.
    dtype: computation dtype (parameters stay float32).

  >>> decoder = MLPVectorDecoder(features=5, width=16, depth=2)
  >>> latent = jnp.zeros((3, 4))
  >>> decoder.apply(decoder.init(jax.random.key(0), latent), latent).shape
  (3, 5)
  """

  features: int
  width: int = 256
  depth: int = 2
  norm: str = "layer"
  activation: str = "gelu"
  modality: str = "vector"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = MLPTrunk(
        self.width, self.depth, self.norm, self.activation, where=base.describe(self), remat=self.remat,
        dtype=self.dtype, name="trunk",
    )(latent)
    return linear.Dense(self.features, dtype=self.dtype, name="output")(x)
