"""Image encoders."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.encoders import base
from mmjax.encoders import layers
from mmjax.encoders.vector import ACTIVATIONS

# How `ConvEncoder` reduces its last feature map before the projection: the mean over cells, or all
# cells flattened (the MMVAE SVHN encoder's final 4×4 convolution over a 4×4 map is a dense layer on them).
CONV_POOLINGS = ("mean", "flatten")


class ConvStage(nn.Module):
  """``conv → norm → activation`` (gelu by default): one stage of `ConvEncoder` and of the audio encoders.

  `spatial_dims` is 2 for images and spectrograms ``[B, H, W, C]``, 1 for waveforms ``[B, S, C]``;
  the kernel is `kernel_size` long along every spatial axis.
  """

  channels: int
  stride: int
  kernel_size: int
  norm: str
  dtype: jnp.dtype = jnp.float32
  spatial_dims: int = 2
  activation: str = "gelu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = (self.kernel_size,) * self.spatial_dims
    x = linear.Conv(self.channels, kernel, strides=self.stride, dtype=self.dtype, name="conv")(x)
    return ACTIVATIONS[self.activation](layers.make_norm(self.norm, self.dtype, name="norm")(x))


class ConvEncoder(nn.Module):
  """A stack of convolutions, pooling and a linear projection.

  Each stage is ``conv(channels[i], stride strides[i]) → norm → activation`` ("SAME" padding).
  With ``pooling="mean"`` the projection reads the mean over the cells of the last feature map, and
  ``return_tokens=True`` also gives the cells as tokens, ``[B, H' * W', features]`` in row-major
  order, all valid, whose mean is the pooled output. With ``pooling="flatten"`` it reads all cells
  at once (position-aware, for a fixed image size) and there are no per-cell tokens.

  MMVAE's SVHN encoder (Shi et al. 2019) is ``channels=(32, 64, 128), strides=(2, 2, 2),
  kernel_size=4, norm="none", activation="relu", pooling="flatten"``: 32×32 → 4×4×128, then a
  dense layer on the 2,048 values (their code's 4×4 "valid" convolution onto the latent).

  Attributes:
    features: output dimension of the projection.
    channels: output channels of each convolution.
    strides: stride of each convolution (same length as `channels`).
    kernel_size: square kernel size of every convolution.
    norm: a name in `layers.NORMS`.
    activation: a name in `mmjax.encoders.vector.ACTIVATIONS`.
    pooling: a name in `CONV_POOLINGS`.
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
  >>> svhn = ConvEncoder(features=20, channels=(32, 64, 128), strides=(2, 2, 2), kernel_size=4,
  ...                    norm="none", activation="relu", pooling="flatten")
  >>> params = svhn.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  >>> params["projection"]["kernel"].shape
  (2048, 20)

  References:
    Shi, Siddharth, Paige & Torr, Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models (MMVAE), NeurIPS 2019.
  """

  features: int
  channels: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (1, 2, 2)
  kernel_size: int = 3
  norm: str = "layer"
  activation: str = "gelu"
  pooling: str = "mean"
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
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ConvEncoder ({self.modality}): unknown activation {self.activation!r}; valid choices: {sorted(ACTIVATIONS)}.")
    if self.pooling not in CONV_POOLINGS:
      raise ValueError(f"ConvEncoder ({self.modality}): unknown pooling {self.pooling!r}; valid choices: {list(CONV_POOLINGS)}.")
    if self.pooling == "flatten" and return_tokens:
      raise ValueError(f"ConvEncoder ({self.modality}): pooling 'flatten' has no per-cell tokens; use pooling 'mean'.")
    base.check_input("ConvEncoder", self.modality, images, (None, None, None, None), "float")
    x = images.astype(self.dtype)
    stage = nn.remat(ConvStage) if self.remat else ConvStage
    for index, (channels, stride) in enumerate(zip(self.channels, self.strides)):
      x = stage(
          channels, stride, self.kernel_size, self.norm, self.dtype, activation=self.activation, name=f"stage{index}"
      )(x)
    projection = linear.Dense(self.features, dtype=self.dtype, name="projection")
    if self.pooling == "flatten":
      return projection(x.reshape(x.shape[0], -1))
    cells = x.reshape(x.shape[0], -1, x.shape[-1])
    return base.project_outputs(projection, jnp.mean(x, axis=(1, 2)), cells, return_tokens)
