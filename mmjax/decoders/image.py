"""Image decoders: a latent ``[B, Z]`` to per-pixel logits or means ``[B, H, W, C]``.

Outputs are unbounded (no sigmoid or tanh): the caller applies the likelihood's link, e.g. a
Bernoulli on logits, or a Gaussian or Laplace mean, or ``tanh`` for a GAN generator's images in
[-1, 1].
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.decoders import base
from mmjax.decoders.layers import ConvTransposeTrunk, MLPTrunk, center_crop, stem_size


def _check_image_shape(decoder: nn.Module) -> None:
  if len(decoder.shape) != 3:
    raise ValueError(f"{base.describe(decoder)}: shape must be (H, W, C), got {tuple(decoder.shape)}.")


class ConvTransposeImageDecoder(nn.Module):
  """DCGAN-style decoder: a dense stem, conv-transpose upsampling stages and a final convolution.

  The latent is projected to a ``h₀ × w₀ × channels[0]`` map, each further entry of `channels` adds
  a stage ``conv-transpose(kernel_size, stride) → norm → activation`` multiplying the map's size by
  `stride`, and a ``output_kernel_size`` convolution gives the `shape`'s ``C`` channels.

  Output size: ``(h₀, w₀) = ceil((H, W) / stride^stages)``, so the map reaches ``H × W`` exactly
  when ``stride^stages`` divides them (28×28 from 7×7 with two stride-2 stages, 32×32 from 4×4 with
  three, 8×8 from 2×2 with two) and otherwise overshoots by less than ``stride^stages``, the excess
  being cropped in the middle before the final convolution (28×28 with three stages: 4×4 → 32×32 →
  crop). Any ``H × W`` therefore works; choose `channels` so that little is cropped.

  With ``output_stride > 1`` the final layer is a conv-transpose of that stride instead (the trunk
  then builds the ``ceil(H / output_stride)`` map, and the output is cropped to ``H × W``), as in
  MMVAE's SVHN decoder (Shi et al. 2019): ``channels=(128, 64, 32), output_stride=2,
  output_kernel_size=4, norm="none"`` gives 4×4×128 → 8×8×64 → 16×16×32 → 32×32×3, the stem being
  their 4×4 conv-transpose of the 1×1 latent (a dense layer) and every upsampling kernel 4×4.

  Attributes:
    shape: the image's ``(H, W, C)`` (a ``ModalitySpec``'s shape).
    channels: features of the stem, then of each upsampling stage (DCGAN halves them per stage).
    stride: upsampling factor of each stage.
    kernel_size: square kernel of the conv-transposes (DCGAN: 4 with stride 2; a multiple of the
      stride avoids checkerboard artefacts).
    output_kernel_size: square kernel of the final convolution (or conv-transpose).
    output_stride: upsampling factor of the final layer (1: a plain convolution).
    norm: a name in `mmjax.encoders.layers.NORMS` (``"none"`` included), after the stem and each stage.
    activation: a name in `mmjax.decoders.layers.ACTIVATIONS` (DCGAN: ReLU).
    modality: the modality's name, for errors.
    remat: recompute each stage in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  References:
    Radford et al., Unsupervised Representation Learning with Deep Convolutional GANs (DCGAN), 2016.
    Shi, Siddharth, Paige & Torr, Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models (MMVAE), NeurIPS 2019.

  >>> decoder = ConvTransposeImageDecoder(shape=(28, 28, 1), channels=(16, 8, 8))
  >>> latent = jnp.zeros((2, 10))
  >>> variables = decoder.init(jax.random.key(0), latent)
  >>> decoder.apply(variables, latent).shape
  (2, 28, 28, 1)
  >>> svhn = ConvTransposeImageDecoder(shape=(32, 32, 3), channels=(128, 64, 32), output_stride=2,
  ...                                  output_kernel_size=4, norm="none")
  >>> params = svhn.init(jax.random.key(0), jnp.zeros((1, 20)))["params"]
  >>> params["trunk"]["latent_projection"]["kernel"].shape, params["output"]["kernel"].shape
  ((20, 2048), (4, 4, 32, 3))
  """

  shape: tuple[int, int, int]
  channels: Sequence[int] = (128, 64, 32)
  stride: int = 2
  kernel_size: int = 4
  output_kernel_size: int = 3
  output_stride: int = 1
  norm: str = "layer"
  activation: str = "relu"
  modality: str = "image"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no dropout or batch statistics
    _check_image_shape(self)
    if self.output_stride < 1:
      raise ValueError(f"{base.describe(self)}: output_stride must be at least 1, got {self.output_stride}.")
    height, width, channels = self.shape
    kernel = (self.output_kernel_size,) * 2
    x = ConvTransposeTrunk(
        size=stem_size((height, width), self.output_stride), channels=tuple(self.channels), stride=self.stride,
        kernel_size=self.kernel_size, norm=self.norm, activation=self.activation, where=base.describe(self),
        remat=self.remat, dtype=self.dtype, name="trunk",
    )(latent)
    if self.output_stride == 1:
      return linear.Conv(channels, kernel, dtype=self.dtype, name="output")(x)
    x = linear.ConvTranspose(
        channels, kernel, strides=(self.output_stride,) * 2, padding="SAME", dtype=self.dtype, name="output"
    )(x)
    return center_crop(x, (height, width))


class MLPImageDecoder(nn.Module):
  """An MLP to all ``H·W·C`` pixels at once: the MVAE's MNIST decoder by default.

  `depth` hidden layers ``Dense(width) → norm → activation``, then ``Dense(H·W·C)`` reshaped to the
  image. The defaults are the MVAE's (Wu & Goodman 2018, public code): three hidden layers of 512
  Swish units, no normalisation (960,784 parameters for a 64-d latent and 28×28×1 images).

  Attributes:
    shape: the image's ``(H, W, C)``.
    width: hidden units per layer.
    depth: hidden layers (at least 1).
    norm: a name in `mmjax.encoders.layers.NORMS`.
    activation: a name in `mmjax.decoders.layers.ACTIVATIONS`.
    modality: the modality's name, for errors.
    remat: recompute each hidden layer (after the first) in the backward pass.
    dtype: computation dtype (parameters stay float32).

  References:
    Wu & Goodman, Multimodal Generative Models for Scalable Weakly-Supervised Learning (MVAE), 2018.

  >>> decoder = MLPImageDecoder(shape=(8, 8, 1), width=32, depth=2)
  >>> latent = jnp.zeros((2, 10))
  >>> variables = decoder.init(jax.random.key(0), latent)
  >>> decoder.apply(variables, latent).shape
  (2, 8, 8, 1)
  """

  shape: tuple[int, int, int]
  width: int = 512
  depth: int = 3
  norm: str = "none"
  activation: str = "swish"
  modality: str = "image"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    _check_image_shape(self)
    x = MLPTrunk(
        self.width, self.depth, self.norm, self.activation, where=base.describe(self), remat=self.remat,
        dtype=self.dtype, name="trunk",
    )(latent)
    x = linear.Dense(math.prod(self.shape), dtype=self.dtype, name="output")(x)
    return x.reshape(x.shape[0], *self.shape)
