"""Audio decoder: a latent ``[B, Z]`` to a waveform ``[B, S]``."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.decoders import base
from mmjax.decoders.layers import ConvTransposeTrunk

# The waveform's output link. Data waveforms lie in [-1, 1] (see `mmjax.data.spec`): "tanh" keeps
# samples there (a GAN generator, as WaveGAN); "linear" gives unbounded means for a Gaussian or
# Laplace likelihood, whose gradients a saturated tanh would stop.
OUTPUTS = {"tanh": jnp.tanh, "linear": lambda x: x}


class ConvTransposeAudioDecoder(nn.Module):
  """A 1-D conv-transpose decoder (WaveGAN-style) to ``num_samples`` waveform samples.

  The latent is projected to ``s₀ × channels[0]`` features, each further entry of `channels` adds
  a stage ``conv-transpose(kernel_size, stride) → norm → activation`` multiplying the length by
  `stride`, a 1-channel convolution of ``output_kernel_size`` gives the waveform, and `output`
  its link. As for images, ``s₀ = ceil(S / stride^stages)`` and any excess is cropped in the
  middle: 16,000 samples (1 s at 16 kHz) come from 250 with three stride-4 stages, exactly.

  Attributes:
    num_samples: ``S``, samples per waveform (a ``ModalitySpec``'s ``shape[0]``).
    channels: features of the stem, then of each upsampling stage.
    stride: upsampling factor of each stage (WaveGAN: 4).
    kernel_size: kernel of the conv-transposes (WaveGAN: 25).
    output_kernel_size: kernel of the final convolution.
    norm: a name in `mmjax.encoders.layers.NORMS`.
    activation: a name in `mmjax.decoders.layers.ACTIVATIONS` (WaveGAN: ReLU).
    output: ``"tanh"`` (samples in [-1, 1]) or ``"linear"`` (see `OUTPUTS`).
    modality: the modality's name, for errors.
    remat: recompute each stage in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  References:
    Donahue et al., Adversarial Audio Synthesis (WaveGAN), 2019.

  >>> decoder = ConvTransposeAudioDecoder(num_samples=100, channels=(8, 8, 8), kernel_size=8)
  >>> latent = jnp.zeros((2, 6))
  >>> decoder.apply(decoder.init(jax.random.key(0), latent), latent).shape
  (2, 100)
  """

  num_samples: int
  channels: Sequence[int] = (256, 128, 64, 32)
  stride: int = 4
  kernel_size: int = 25
  output_kernel_size: int = 25
  norm: str = "layer"
  activation: str = "relu"
  output: str = "tanh"
  modality: str = "audio"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    where = base.describe(self)
    if self.output not in OUTPUTS:
      raise ValueError(f"{where}: unknown output {self.output!r}; valid choices: {sorted(OUTPUTS)}.")
    x = ConvTransposeTrunk(
        size=(self.num_samples,), channels=tuple(self.channels), stride=self.stride, kernel_size=self.kernel_size,
        norm=self.norm, activation=self.activation, where=where, remat=self.remat, dtype=self.dtype, name="trunk",
    )(latent)
    x = linear.Conv(1, (self.output_kernel_size,), dtype=self.dtype, name="output")(x)
    return OUTPUTS[self.output](x[..., 0])
