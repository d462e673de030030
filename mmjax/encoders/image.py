"""Image encoders."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders import base
from mmjax.encoders import layers


class ConvStage(nn.Module):
  """``conv → norm → gelu``: one stage of `ConvEncoder` and of the audio encoders.

  `spatial_dims` is 2 for images and spectrograms ``[B, H, W, C]``, 1 for waveforms ``[B, S, C]``;
  the kernel is `kernel_size` long along every spatial axis.
  """

  channels: int
  stride: int
  kernel_size: int
  norm: str
  dtype: jnp.dtype = jnp.float32
  spatial_dims: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = (self.kernel_size,) * self.spatial_dims
    x = nn.Conv(self.channels, kernel, strides=self.stride, dtype=self.dtype, name="conv")(x)
    return nn.gelu(layers.make_norm(self.norm, self.dtype, name="norm")(x))


class ConvEncoder(nn.Module):
  """A stack of convolutions, global average pooling and a linear projection.

  Each stage is ``conv(channels[i], stride strides[i]) → norm → gelu``. With ``return_tokens=True``
  the tokens are the cells of the last feature map, ``[B, H' * W', features]`` in row-major order,
  all valid; the pooled output (the projection of the mean over cells) equals their mean.

  Attributes:
    features: output dimension of the projection.
    channels: output channels of each convolution.
    strides: stride of each convolution (same length as `channels`).
    kernel_size: square kernel size of every convolution.
    norm: a name in `layers.NORMS`.
    remat: recompute each stage in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).
    modality: the modality encoded, named in errors.

  >>> encoder = ConvEncoder(features=16, channels=(8, 16), strides=(1, 2))
  >>> images = jnp.zeros((4, 8, 8, 1))
  >>> variables = encoder.init(jax.random.key(0), images)
  >>> encoder.apply(variables, images).shape
  (4, 16)
  >>> encoder.apply(variables, images, return_tokens=True).tokens.shape
  (4, 16, 16)
  """

  features: int
  channels: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (1, 2, 2)
  kernel_size: int = 3
  norm: str = "layer"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  modality: str = "image"

  @nn.compact
  def __call__(
      self, images: jax.Array, *, train: bool = False, return_tokens: bool = False
  ) -> jax.Array | base.Encoded:
    del train  # no dropout or batch statistics
    if len(self.channels) != len(self.strides):
      raise ValueError(
          f"ConvEncoder: channels {tuple(self.channels)} and strides {tuple(self.strides)} "
          "must have the same length."
      )
    base.check_input("ConvEncoder", self.modality, images, (None, None, None, None), "float")
    x = images.astype(self.dtype)
    stage = nn.remat(ConvStage) if self.remat else ConvStage
    for index, (channels, stride) in enumerate(zip(self.channels, self.strides)):
      x = stage(channels, stride, self.kernel_size, self.norm, self.dtype, name=f"stage{index}")(x)
    cells = x.reshape(x.shape[0], -1, x.shape[-1])
    projection = nn.Dense(self.features, dtype=self.dtype, name="projection")
    return base.project_outputs(projection, jnp.mean(x, axis=(1, 2)), cells, return_tokens)
