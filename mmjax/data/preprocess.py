"""Per-kind preprocessing: raw TFDS values of one modality → a static-shape NumPy array.

One preprocessor per modality kind (`mmjax.data.spec.KINDS`). Each is built from the modality's
config section, its TFDS feature and the dataset's statistics, and turns a list of raw values (as
a TFDS data source returns them) into the batch array for that modality.

Modality dropout lives here too: which modalities of which samples a training run hides, as a
pure function of (seed, position in the example stream, modality name), so it needs no state of
its own and a resumed run hides exactly what an uninterrupted one would.
"""

import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from mmjax.data import statistics, tokenizers
from mmjax.schema import ConfigError

IMAGE_SCALINGS = ("standardize", "unit", "symmetric")
VECTOR_SCALINGS = ("standardize", "none")


class Preprocessor(Protocol):
  shape: tuple[int, ...]

  def __call__(self, values: Sequence[Any]) -> np.ndarray:
    """The ``[N, *shape]`` array of `values`."""


class ImagePreprocessor:
  """``uint8[H, W, C]`` images → float32, scaled as `scaling` says.

  ``"standardize"``: ``(x / 255 − mean) / std`` per channel with the training split's moments;
  ``"unit"``: ``x / 255`` in [0, 1] (Bernoulli likelihoods); ``"symmetric"``: in [−1, 1] (tanh
  generators).

  >>> pre = ImagePreprocessor((1, 1, 1), "unit")
  >>> pre([np.array([[[255]]], np.uint8)]).tolist()
  [[[[1.0]]]]
  """

  def __init__(self, shape: tuple[int, ...], scaling: str, moments: Mapping | None = None):
    self.shape = tuple(shape)
    self.scaling = scaling
    if scaling == "standardize":
      self.mean, self.std = statistics.normalizer(moments)

  def __call__(self, values: Sequence[np.ndarray]) -> np.ndarray:
    pixels = np.stack(values).astype(np.float32) / 255.0
    if self.scaling == "standardize":
      return (pixels - self.mean) / self.std
    if self.scaling == "symmetric":
      return pixels * 2.0 - 1.0
    return pixels


class TextPreprocessor:
  """Strings → ``int32[length]`` token ids (see `mmjax.data.tokenizers`)."""

  def __init__(self, tokenizer, length: int):
    self.tokenizer = tokenizer
    self.shape = (length,)

  def __call__(self, values: Sequence[str | bytes]) -> np.ndarray:
    return self.tokenizer.encode([v.decode("utf-8") if isinstance(v, bytes) else v for v in values], self.shape[0])


class AudioPreprocessor:
  """Waveforms → ``float32[length]`` in [−1, 1]: integer samples divided by their type's range,
  then cut or zero-padded at the end to `length` samples.

  >>> AudioPreprocessor(4)([np.array([16384, -32768], np.int16)]).tolist()
  [[0.5, -1.0, 0.0, 0.0]]
  """

  def __init__(self, length: int):
    self.shape = (length,)

  def __call__(self, values: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(values), self.shape[0]), np.float32)
    for row, wave in enumerate(values):
      wave = np.asarray(wave).reshape(-1)
      if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(-np.iinfo(wave.dtype).min)
      kept = wave[: self.shape[0]]
      out[row, : len(kept)] = kept
    return out


class VectorPreprocessor:
  """Float vectors → ``float32[D]``, standardised per dimension or left as they are."""

  def __init__(self, shape: tuple[int, ...], scaling: str, moments: Mapping | None = None):
    self.shape = tuple(shape)
    self.scaling = scaling
    if scaling == "standardize":
      self.mean, self.std = statistics.normalizer(moments)

  def __call__(self, values: Sequence[np.ndarray]) -> np.ndarray:
    vectors = np.stack(values).astype(np.float32)
    return (vectors - self.mean) / self.std if self.scaling == "standardize" else vectors


class LabelPreprocessor:
  """Class indices → ``int32[]``."""

  shape: tuple[int, ...] = ()

  def __call__(self, values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, np.int32)


def make_tokenizer(config, vocabulary: Sequence[str] | None):
  """The tokenizer a text modality's section names."""
  if config.tokenizer == "word" and vocabulary is None:
    raise ConfigError(f"text feature {config.feature!r} has no stored vocabulary for the word tokenizer.")
  return tokenizers.make_tokenizer(config.tokenizer, vocabulary)


# ------------------------------------------------------------------------------------------------
# Modality dropout

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """A bijective 64-bit mixer (Steele et al. 2014): consecutive inputs give unrelated outputs."""
  x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(_MASK64)
  x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(_MASK64)
  x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(_MASK64)
  return x ^ (x >> np.uint64(31))


def uniform_draws(seed: int, positions: np.ndarray, stream: str) -> np.ndarray:
  """Uniform [0, 1) numbers, one per position, a pure function of (seed, position, stream name).

  >>> a = uniform_draws(0, np.arange(3), "image")
  >>> bool(np.all(a == uniform_draws(0, np.arange(3), "image"))), bool(np.any(a != uniform_draws(1, np.arange(3), "image")))
  (True, True)
  """
  with np.errstate(over="ignore"):
    key = _splitmix64(np.uint64(seed) ^ (np.uint64(zlib.crc32(stream.encode())) << np.uint64(32)))
    bits = _splitmix64(np.asarray(positions, np.uint64) ^ key)
  return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def dropout_masks(seed: int, positions: np.ndarray, rates: Mapping[str, float]) -> dict[str, np.ndarray]:
  """``{modality: bool[N]}``: True where modality dropout keeps the modality of the sample at each
  stream position; each modality is dropped independently with its rate.

  >>> keep = dropout_masks(0, np.arange(100_000), {"audio": 0.3})["audio"]
  >>> round(1 - float(keep.mean()), 2)
  0.3
  """
  return {modality: uniform_draws(seed, positions, f"dropout/{modality}") >= rate for modality, rate in rates.items()}
