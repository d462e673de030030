"""Label (categorical) decoder: a latent ``[B, Z]`` to class logits ``[B, num_classes]``."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.decoders import base
from mmjax.decoders.layers import MLPTrunk


class MLPLabelDecoder(nn.Module):
  """An MLP to the logits of a categorical distribution over the classes.

  `depth` hidden layers ``Dense(width) → norm → activation``, then ``Dense(num_classes)``. The
  defaults are the MVAE's label decoder (three hidden layers of 512 Swish units; 563,722 parameters
  for a 64-d latent and 10 classes).

  Attributes:
    num_classes: number of classes (a ``ModalitySpec``'s ``num_classes``).
    width: hidden units per layer.
    depth: hidden layers (at least 1).
    norm: a name in `mmjax.encoders.layers.NORMS`.
    activation: a name in `mmjax.decoders.layers.ACTIVATIONS`.
    modality: the modality's name, for errors.
    remat: recompute each hidden layer (after the first) in the backward pass.
    dtype: computation dtype (parameters stay float32).

  References:
    Wu & Goodman, Multimodal Generative Models for Scalable Weakly-Supervised Learning (MVAE), 2018.

  >>> decoder = MLPLabelDecoder(num_classes=10, width=16, depth=1)
  >>> latent = jnp.zeros((3, 4))
  >>> decoder.apply(decoder.init(jax.random.key(0), latent), latent).shape
  (3, 10)
  """

  num_classes: int
  width: int = 512
  depth: int = 3
  norm: str = "none"
  activation: str = "swish"
  modality: str = "label"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = MLPTrunk(
        self.width, self.depth, self.norm, self.activation, where=base.describe(self), remat=self.remat,
        dtype=self.dtype, name="trunk",
    )(latent)
    return linear.Dense(self.num_classes, dtype=self.dtype, name="output")(x)
