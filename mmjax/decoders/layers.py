"""Building blocks shared by the decoders: activations, an MLP trunk and a conv-transpose trunk."""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.decoders.base import LatentProjection
from mmjax.encoders.layers import make_norm

# Activations a decoder config may name. "swish" is the MVAE decoders' (x·σ(x)), "relu" DCGAN's.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "swish": nn.swish,
    "leaky_relu": nn.leaky_relu,
    "tanh": jnp.tanh,
}


def activation(kind: str) -> Callable[[jax.Array], jax.Array]:
  """An activation function by name (see `ACTIVATIONS`)."""
  if kind not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {kind!r}; valid choices: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[kind]


class DenseBlock(nn.Module):
  """``Dense → norm → activation``: one hidden layer of `MLPTrunk`."""

  features: int
  norm: str
  activation: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = linear.Dense(self.features, dtype=self.dtype, name="dense")(x)
    return activation(self.activation)(make_norm(self.norm, self.dtype, name="norm")(x))


class MLPTrunk(nn.Module):
  """`depth` hidden layers of ``Dense(width) → norm → activation`` on a latent.

  The first layer is a `LatentProjection` (it checks the latent, naming `where`).
  """

  width: int
  depth: int
  norm: str
  activation: str
  where: str
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array) -> jax.Array:
    if self.depth < 1:
      raise ValueError(f"{self.where}: depth must be at least 1, got {self.depth}.")
    x = LatentProjection(self.width, where=self.where, dtype=self.dtype, name="latent_projection")(latent)
    x = activation(self.activation)(make_norm(self.norm, self.dtype, name="norm0")(x))
    block = nn.remat(DenseBlock) if self.remat else DenseBlock
    for index in range(1, self.depth):
      x = block(self.width, self.norm, self.activation, self.dtype, name=f"block{index}")(x)
    return x


class UpsampleStage(nn.Module):
  """``conv-transpose (×stride) → norm → activation`` over 1, 2 or 3 spatial axes."""

  channels: int
  stride: int
  kernel_size: int
  norm: str
  activation: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    spatial = x.ndim - 2
    # "SAME" makes every spatial size exactly stride × the input's.
    x = linear.ConvTranspose(
        self.channels, (self.kernel_size,) * spatial, strides=(self.stride,) * spatial, padding="SAME",
        dtype=self.dtype, name="conv_transpose",
    )(x)
    return activation(self.activation)(make_norm(self.norm, self.dtype, name="norm")(x))


def stem_size(size: Sequence[int], factor: int) -> tuple[int, ...]:
  """The smallest feature map that, upsampled by `factor`, covers `size`: ``ceil(size / factor)``.

  >>> stem_size((28, 28), 4), stem_size((28, 28), 8), stem_size((100,), 16)
  ((7, 7), (4, 4), (7,))
  """
  return tuple(-(-s // factor) for s in size)


def center_crop(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """``x[B, *spatial, C]`` cropped to `size` in the middle (an odd excess drops the extra element at the end).

  >>> center_crop(jnp.arange(8).reshape(1, 8, 1), (5,))[0, :, 0]
  Array([1, 2, 3, 4, 5], dtype=int32)
  """
  offsets = [(have - want) // 2 for have, want in zip(x.shape[1:-1], size)]
  index = tuple(slice(offset, offset + want) for offset, want in zip(offsets, size))
  return x[(slice(None), *index)]


class ConvTransposeTrunk(nn.Module):
  """A latent to a feature map ``[B, *size, channels[-1]]``, DCGAN-style.

  A `LatentProjection` to a small map of ``channels[0]`` features (the stem) → norm → activation,
  then one `UpsampleStage` per further entry of `channels`, each multiplying every spatial size by
  `stride`. The stem is ``ceil(size / stride^stages)`` (`stem_size`), so the upsampled map covers
  `size` exactly when it is divisible by ``stride^stages`` (28 = 7·4, 32 = 2·16) and otherwise
  exceeds it by less than ``stride^stages``: the excess is cropped in the middle (`center_crop`).
  """

  size: tuple[int, ...]
  channels: Sequence[int]
  stride: int
  kernel_size: int
  norm: str
  activation: str
  where: str
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array) -> jax.Array:
    if not self.channels:
      raise ValueError(f"{self.where}: channels must name at least the stem's, got {tuple(self.channels)}.")
    stem = stem_size(self.size, self.stride ** (len(self.channels) - 1))
    projection = LatentProjection(
        math.prod(stem) * self.channels[0], where=self.where, dtype=self.dtype, name="latent_projection"
    )
    x = projection(latent)
    x = x.reshape(x.shape[0], *stem, self.channels[0])
    x = activation(self.activation)(make_norm(self.norm, self.dtype, name="stem_norm")(x))
    stage = nn.remat(UpsampleStage) if self.remat else UpsampleStage
    for index, channels in enumerate(self.channels[1:]):
      x = stage(
          channels, self.stride, self.kernel_size, self.norm, self.activation, self.dtype, name=f"stage{index}"
      )(x)
    return center_crop(x, self.size)
