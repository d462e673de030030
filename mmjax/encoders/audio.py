"""Audio encoders over ``float32[B, S]`` waveforms in [-1, 1], and the log-mel front end they share.

The front end (`log_mel_spectrogram`) is a pure JAX function; its mel filterbank (`mel_filterbank`)
is built with NumPy in float64 when the function is traced, and enters the computation as a constant.

Conventions of the front end (stated here once, relied on by the encoders and the tests):

* Framing: with ``center=True`` (the default, as in torchaudio and librosa) the waveform is padded
  by ``n_fft // 2`` samples on both sides, reflecting the signal (``pad_mode="reflect"``, torchaudio's
  default; librosa ≥ 0.10 pads with zeros, ``pad_mode="constant"``), so frame ``t`` is centred on
  sample ``t * hop_length`` and there are ``1 + S // hop_length`` frames. With ``center=False`` frame
  ``t`` starts at sample ``t * hop_length`` and there are ``1 + (S - n_fft) // hop_length`` frames.
* Window: periodic ("DFT-even") Hann or Hamming window of length ``n_fft``, as
  ``scipy.signal.get_window(name, n_fft, fftbins=True)`` and ``torch.hann_window`` give.
* Spectrum: the power ``|rfft(frame * window)|²`` of ``n_fft // 2 + 1`` bins, not normalised.
* Mel scale: ``"htk"`` (default; torchaudio's default) is ``2595 log10(1 + f / 700)``; ``"slaney"``
  (librosa's default) is linear below 1 kHz (3 mel per 200 Hz) and logarithmic above (27 mel per
  factor 6.4). Filters are triangles linear in Hz between mel-spaced edges, as in torchaudio and
  librosa (Kaldi and ``tf.signal`` draw them linear in mel instead, which differs slightly).
* Filter norm: ``mel_norm=None`` (default, as torchaudio's default) keeps triangles of peak 1;
  ``"slaney"`` divides each by half its width in Hz so all have the same area (librosa's default
  ``norm="slaney"``). torchaudio's defaults are therefore ``mel_scale="htk", mel_norm=None`` and
  librosa's ``mel_scale="slaney", mel_norm="slaney"``.
* Log: natural ``log(mel + log_offset)``.

The usual settings (VGGish, PANNs, AST): 16 kHz audio, 25 ms windows (``n_fft=400``), 10 ms hop
(``hop_length=160``), Hann window, 64–128 mel bins; these are the defaults here, with 64 bins.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mmjax import checks, linear
from mmjax.encoders import base
from mmjax.encoders.image import ConvStage

# Periodic windows w[n], n = 0 … N - 1.
WINDOWS = {
    "hann": lambda n, size: 0.5 - 0.5 * np.cos(2 * np.pi * n / size),
    "hamming": lambda n, size: 0.54 - 0.46 * np.cos(2 * np.pi * n / size),
}
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")
PAD_MODES = ("reflect", "constant")
# Slaney's Auditory Toolbox mel scale: linear up to 1 kHz, then a fixed ratio per mel.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0
NORMALIZATIONS = ("utterance", "fixed", "none")
# Added to the variance of a log-mel before dividing by its std, so a silent utterance gives zeros.
_UTTERANCE_VARIANCE_EPS = 1e-5


def _hz_to_mel(hz, mel_scale: str) -> np.ndarray:
  hz = np.asarray(hz, np.float64)
  if mel_scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  logarithmic = _SLANEY_BREAK_MEL + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
  return np.where(hz < _SLANEY_BREAK_HZ, hz / _SLANEY_HZ_PER_MEL, logarithmic)


def _mel_to_hz(mel, mel_scale: str) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  if mel_scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  logarithmic = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (np.maximum(mel, _SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL))
  return np.where(mel < _SLANEY_BREAK_MEL, mel * _SLANEY_HZ_PER_MEL, logarithmic)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: str = "htk",
    mel_norm: str | None = None,
) -> np.ndarray:
  """The triangular mel filters mapping a power spectrum to mel energies (a NumPy constant).

  Filter ``m`` rises linearly (in Hz) from edge ``m`` to its peak at edge ``m + 1`` and falls to edge
  ``m + 2``, the ``n_mels + 2`` edges being equally spaced in mel from `f_min` to `f_max`. See the
  module docstring for the scales and norms. A filter narrower than the bin spacing may catch no bin
  (e.g. 128 HTK mels with ``n_fft=400`` at 16 kHz); that is logged, as torchaudio warns, not an error.

  Args:
    sample_rate: samples per second.
    n_fft: FFT size; the spectrum has ``n_fft // 2 + 1`` bins from 0 to ``sample_rate / 2``.
    n_mels: number of filters.
    f_min: lowest edge in Hz.
    f_max: highest edge in Hz; None means ``sample_rate / 2``.
    mel_scale: ``"htk"`` or ``"slaney"``.
    mel_norm: None (peak 1) or ``"slaney"`` (equal area).

  Returns:
    ``float64[n_fft // 2 + 1, n_mels]``, non-negative: ``power @ filterbank`` gives mel energies.

  References:
    Young et al., The HTK Book (mel = 2595 log10(1 + f/700)). Slaney, Auditory Toolbox, Interval
    Research Technical Report 1998-010.

  >>> filterbank = mel_filterbank(sample_rate=16000, n_fft=400, n_mels=64)
  >>> filterbank.shape, filterbank.dtype
  ((201, 64), dtype('float64'))
  >>> bool(filterbank.min() >= 0.0 and filterbank.max() <= 1.0)
  True
  """
  f_max = sample_rate / 2 if f_max is None else f_max
  if mel_scale not in MEL_SCALES:
    raise ValueError(f"mel_filterbank: unknown mel_scale {mel_scale!r}; valid choices: {list(MEL_SCALES)}.")
  if mel_norm not in MEL_NORMS:
    raise ValueError(f"mel_filterbank: unknown mel_norm {mel_norm!r}; valid choices: {list(MEL_NORMS)}.")
  if not 0.0 <= f_min < f_max <= sample_rate / 2:
    raise ValueError(
        f"mel_filterbank: expected 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
        f"got f_min={f_min}, f_max={f_max}."
    )
  if n_mels < 1 or n_fft < 2:
    raise ValueError(f"mel_filterbank: expected n_mels >= 1 and n_fft >= 2, got n_mels={n_mels}, n_fft={n_fft}.")
  bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(f_min, mel_scale), _hz_to_mel(f_max, mel_scale), n_mels + 2), mel_scale)
  lower, peak, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
  rising = (bin_hz[:, None] - lower) / (peak - lower)
  falling = (upper - bin_hz[:, None]) / (upper - peak)
  filterbank = np.maximum(0.0, np.minimum(rising, falling))
  if mel_norm == "slaney":
    filterbank *= 2.0 / (upper - lower)
  empty = np.flatnonzero(filterbank.max(axis=0) == 0.0)
  if empty.size:
    logging.warning(
        "mel_filterbank: filters %s catch no FFT bin (n_mels=%d too many for n_fft=%d); their energy is always 0.",
        empty.tolist(), n_mels, n_fft,
    )
  return filterbank


def _check_length(where: str, num_samples: int, n_fft: int, center: bool, pad_mode: str) -> None:
  """Raises a `ValueError` when a waveform of `num_samples` is too short to give one frame."""
  if center and pad_mode == "reflect":
    needed = n_fft // 2 + 1  # reflection padding needs more samples than it adds
  else:
    needed = 1 if center else n_fft
  if num_samples < needed:
    raise ValueError(
        f"{where}: a waveform of {num_samples} samples is too short for n_fft={n_fft} "
        f"(center={center}, pad_mode={pad_mode!r}); expected at least {needed} samples."
    )


def log_mel_spectrogram(
    waveform: jax.Array,
    sample_rate: int,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 64,
    f_min: float = 0.0,
    f_max: float | None = None,
    window: str = "hann",
    mel_scale: str = "htk",
    mel_norm: str | None = None,
    center: bool = True,
    pad_mode: str = "reflect",
    log_offset: float = 1e-6,
) -> jax.Array:
  """The log-mel spectrogram ``log(|STFT|² @ mel_filterbank + log_offset)`` of waveforms.

  Conventions (padding, window, scales, norms) are in the module docstring. Computed in the
  waveform's dtype, at least float32 (bfloat16 input is promoted; float64 stays float64 under
  ``jax.enable_x64``); the filterbank product runs at full precision on every backend. The settings
  are static: under `jax.jit` bind them with `functools.partial` (or ``static_argnames``).

  Args:
    waveform: ``[..., S]`` samples (any leading dims).
    sample_rate: samples per second.
    n_fft: window and FFT length in samples.
    hop_length: samples between the starts of consecutive frames.
    n_mels: number of mel bins.
    f_min: lowest mel edge in Hz.
    f_max: highest mel edge in Hz; None means ``sample_rate / 2``.
    window: a name in `WINDOWS`.
    mel_scale: ``"htk"`` or ``"slaney"``.
    mel_norm: None or ``"slaney"`` (see `mel_filterbank`).
    center: pad so that frame ``t`` is centred on sample ``t * hop_length``.
    pad_mode: ``"reflect"`` or ``"constant"`` (zeros), used when `center`.
    log_offset: added to the mel energies before the log, bounding silence at ``log(log_offset)``.

  Returns:
    ``[..., frames, n_mels]`` with ``frames = 1 + S // hop_length`` when `center`, else
    ``1 + (S - n_fft) // hop_length``.

  >>> import functools
  >>> tone = jnp.sin(2 * jnp.pi * 1000.0 * jnp.arange(8000) / 16000)  # 0.5 s of 1 kHz at 16 kHz
  >>> log_mel = log_mel_spectrogram(tone, sample_rate=16000)
  >>> log_mel.shape
  (51, 64)
  >>> batched = jax.jit(functools.partial(log_mel_spectrogram, sample_rate=16000, n_mels=32))
  >>> batched(jnp.stack([tone, -tone])).shape
  (2, 51, 32)
  """
  checks.check_dtype("log_mel_spectrogram: waveform", waveform, "float")
  if np.ndim(waveform) < 1:
    raise ValueError("log_mel_spectrogram: waveform: expected shape (..., S), got ().")
  if window not in WINDOWS:
    raise ValueError(f"log_mel_spectrogram: unknown window {window!r}; valid choices: {sorted(WINDOWS)}.")
  if pad_mode not in PAD_MODES:
    raise ValueError(f"log_mel_spectrogram: unknown pad_mode {pad_mode!r}; valid choices: {list(PAD_MODES)}.")
  if hop_length < 1:
    raise ValueError(f"log_mel_spectrogram: expected hop_length >= 1, got {hop_length}.")
  _check_length("log_mel_spectrogram", waveform.shape[-1], n_fft, center, pad_mode)
  filterbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, mel_norm)
  dtype = jnp.promote_types(waveform.dtype, jnp.float32)
  x = jnp.asarray(waveform, dtype)
  if center:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode=pad_mode)
  num_frames = 1 + (x.shape[-1] - n_fft) // hop_length
  frame_samples = hop_length * np.arange(num_frames)[:, None] + np.arange(n_fft)
  frames = x[..., frame_samples] * WINDOWS[window](np.arange(n_fft), n_fft).astype(dtype)
  spectrum = jnp.fft.rfft(frames, axis=-1)
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  # HIGHEST: GPUs and TPUs would otherwise round float32 operands of a matmul to TF32/bfloat16.
  mel = jnp.matmul(power, filterbank.astype(dtype), precision=jax.lax.Precision.HIGHEST)
  return jnp.log(mel + log_offset)


def _conv_stages(
    x: jax.Array,
    channels: Sequence[int],
    strides: Sequence[int],
    kernel_sizes: Sequence[int],
    norm: str,
    dtype: jnp.dtype,
    remat: bool,
    spatial_dims: int,
) -> jax.Array:
  """``x`` through one `ConvStage` per entry (named ``stage{i}`` in the calling module)."""
  stage = nn.remat(ConvStage) if remat else ConvStage
  for index, (width, stride, kernel_size) in enumerate(zip(channels, strides, kernel_sizes)):
    x = stage(width, stride, kernel_size, norm, dtype, spatial_dims, name=f"stage{index}")(x)
  return x


def _pool_and_project(steps: jax.Array, features: int, dtype: jnp.dtype, return_tokens: bool):
  """Mean of ``steps[B, T, C]`` over time → ``projection``; with `return_tokens` every step through it too."""
  projection = linear.Dense(features, dtype=dtype, name="projection")
  pooled = projection(jnp.mean(steps, axis=1))
  if not return_tokens:
    return pooled
  tokens = projection(steps)
  return base.Encoded(pooled, tokens, base.all_valid(tokens))


def _check_stages(encoder: str, channels: Sequence[int], strides: Sequence[int]) -> None:
  if len(channels) != len(strides):
    raise ValueError(
        f"{encoder}: channels {tuple(channels)} and strides {tuple(strides)} must have the same length."
    )


class LogMelCNN(nn.Module):
  """Log-mel spectrogram, normalisation, a 2-D CNN over (time, mel), mean pooling, projection.

  The front end is `log_mel_spectrogram` with this module's settings, always computed in float32
  (``dtype`` applies from the CNN on). Its output is then normalised (`normalization`):

  * ``"utterance"``: each waveform's log-mel minus its mean, divided by its standard deviation, both
    over all its frames and bins. A gain ``g`` adds ``2 log g`` to every cell, so this makes the
    features (nearly, because of ``log_offset``) independent of loudness.
  * ``"fixed"``: ``(log_mel - mean) / std`` with dataset statistics given as `mean` and `std` (e.g.
    `mmjax.data.statistics.moments` of training log-mels with ``channel_axis=None``, as AST's
    AudioSet mean −4.27 and std 4.57).
  * ``"none"``: the log-mel as is.

  The CNN's stages are ``conv(channels[i], stride strides[i]) → norm → gelu`` (`ConvStage`) over the
  ``[B, frames, n_mels, 1]`` image. Tokens are its time steps: the last feature map averaged over
  frequency, ``[B, frames', features]``, all valid; the pooled vector is their mean.

  Attributes:
    features: output dimension of the projection.
    sample_rate: samples per second of the input (``ModalitySpec.sample_rate``).
    n_fft, hop_length, n_mels, f_min, f_max, mel_scale, mel_norm: front-end settings, see
      `log_mel_spectrogram` (Hann window, centred frames with reflection padding, log offset 1e-6).
    normalization: ``"utterance"``, ``"fixed"`` or ``"none"``.
    mean, std: the statistics of ``"fixed"`` normalisation.
    channels: output channels of each convolution.
    strides: stride of each convolution along time and frequency (same length as `channels`).
    kernel_size: square kernel size of every convolution.
    norm: a name in `layers.NORMS`.
    modality: the modality's name, used in errors.
    remat: recompute each stage in the backward pass instead of storing its activations.
    dtype: computation dtype of the CNN and projection (parameters stay float32).

  References:
    Hershey et al., CNN Architectures for Large-Scale Audio Classification, ICASSP 2017 (log-mel
    CNNs, 25 ms / 10 ms / 64 mels). Gong et al., AST: Audio Spectrogram Transformer, Interspeech 2021
    (fixed dataset normalisation).

  >>> encoder = LogMelCNN(features=8, sample_rate=8000, n_fft=128, hop_length=64, n_mels=16, channels=(8, 16),
  ...                    strides=(2, 2))
  >>> waveforms = jnp.zeros((2, 2000))  # 0.25 s at 8 kHz
  >>> variables = encoder.init(jax.random.key(0), waveforms)
  >>> encoder.apply(variables, waveforms).shape
  (2, 8)
  >>> encoder.apply(variables, waveforms, return_tokens=True).tokens.shape  # 32 frames, stride 2 twice
  (2, 8, 8)
  """

  features: int
  sample_rate: int
  n_fft: int = 400
  hop_length: int = 160
  n_mels: int = 64
  f_min: float = 0.0
  f_max: float | None = None
  mel_scale: str = "htk"
  mel_norm: str | None = None
  normalization: str = "utterance"
  mean: float = 0.0
  std: float = 1.0
  channels: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (2, 2, 2)
  kernel_size: int = 3
  norm: str = "layer"
  modality: str = "audio"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, waveforms: jax.Array, *, train: bool = False, return_tokens: bool = False):
    del train  # no dropout or batch statistics
    _check_stages("LogMelCNN", self.channels, self.strides)
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(
          f"LogMelCNN: unknown normalization {self.normalization!r}; valid choices: {list(NORMALIZATIONS)}."
      )
    if self.normalization == "fixed" and not self.std > 0:
      raise ValueError(f"LogMelCNN: fixed normalization needs std > 0, got {self.std}.")
    where = f"LogMelCNN: modality {self.modality!r}"
    base.check_input("LogMelCNN", self.modality, waveforms, (None, None), "float")
    _check_length(where, waveforms.shape[1], self.n_fft, center=True, pad_mode="reflect")
    log_mel = log_mel_spectrogram(
        waveforms.astype(jnp.float32), self.sample_rate, self.n_fft, self.hop_length, self.n_mels,
        self.f_min, self.f_max, mel_scale=self.mel_scale, mel_norm=self.mel_norm,
    )
    if self.normalization == "utterance":
      mean = jnp.mean(log_mel, axis=(1, 2), keepdims=True)
      variance = jnp.var(log_mel, axis=(1, 2), keepdims=True)
      log_mel = (log_mel - mean) * jax.lax.rsqrt(variance + _UTTERANCE_VARIANCE_EPS)
    elif self.normalization == "fixed":
      log_mel = (log_mel - self.mean) / self.std
    x = _conv_stages(
        log_mel[..., None].astype(self.dtype), self.channels, self.strides, [self.kernel_size] * len(self.channels),
        self.norm, self.dtype, self.remat, spatial_dims=2,
    )
    return _pool_and_project(jnp.mean(x, axis=2), self.features, self.dtype, return_tokens)


class WaveformConvEncoder(nn.Module):
  """A 1-D CNN over raw waveforms: a wide strided first layer, strided stages, mean pooling, projection.

  Stage ``i`` is ``conv(channels[i], kernel, stride strides[i]) → norm → gelu`` (`ConvStage`), the
  kernel being `first_kernel_size` samples for stage 0 (M5's 80 samples, 5 ms at 16 kHz: a learned
  filterbank) and `kernel_size` after. Strided convolutions replace M5's max-pooling; a kernel at
  least as long as its stride reads every sample. The defaults downsample by 4⁴ = 256 (62.5 steps
  per second at 16 kHz; wav2vec 2.0's feature encoder: 320). Tokens are the last stage's time steps,
  ``[B, ceil(S / 256), features]`` with the defaults, all valid; the pooled vector is their mean.

  Attributes:
    features: output dimension of the projection.
    channels: output channels of each stage (M5: 128, 128, 256, 512).
    strides: stride of each stage (same length as `channels`).
    first_kernel_size: kernel length of stage 0, in samples.
    kernel_size: kernel length of the later stages.
    norm: a name in `layers.NORMS`.
    modality: the modality's name, used in errors.
    remat: recompute each stage in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  References:
    Dai et al., Very Deep Convolutional Neural Networks for Raw Waveforms, ICASSP 2017 (M5).
    Aytar et al., SoundNet: Learning Sound Representations from Unlabeled Video, NeurIPS 2016.
    Baevski et al., wav2vec 2.0, NeurIPS 2020.

  >>> encoder = WaveformConvEncoder(features=8, channels=(8, 16), strides=(8, 4), first_kernel_size=16)
  >>> waveforms = jnp.zeros((2, 2000))
  >>> variables = encoder.init(jax.random.key(0), waveforms)
  >>> encoder.apply(variables, waveforms).shape
  (2, 8)
  >>> encoder.apply(variables, waveforms, return_tokens=True).tokens.shape  # ceil(2000 / 32) steps
  (2, 63, 8)
  """

  features: int
  channels: Sequence[int] = (128, 128, 256, 512)
  strides: Sequence[int] = (4, 4, 4, 4)
  first_kernel_size: int = 80
  kernel_size: int = 9
  norm: str = "layer"
  modality: str = "audio"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, waveforms: jax.Array, *, train: bool = False, return_tokens: bool = False):
    del train  # no dropout or batch statistics
    _check_stages("WaveformConvEncoder", self.channels, self.strides)
    base.check_input("WaveformConvEncoder", self.modality, waveforms, (None, None), "float")
    kernel_sizes = [self.first_kernel_size] + [self.kernel_size] * (len(self.channels) - 1)
    x = _conv_stages(
        waveforms[..., None].astype(self.dtype), self.channels, self.strides, kernel_sizes,
        self.norm, self.dtype, self.remat, spatial_dims=1,
    )
    return _pool_and_project(x, self.features, self.dtype, return_tokens)
