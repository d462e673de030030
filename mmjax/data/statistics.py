"""Preprocessing statistics of a dataset: normalisation moments and word vocabularies.

They are computed once from the training split and stored with the dataset, so every run (and
every host) preprocesses identically. mmjax's own builders put them in the dataset's metadata at
build time; for any other TFDS dataset they are computed on first use and written next to its
files (``<data_dir>/<name>/<version>/mmjax_statistics.json``). Both use this layout, keyed by TFDS feature name::

    {"moments": {"image": {"mean": [per channel], "std": [per channel]}, "features": {…}},
     "vocabulary": {"caption": ["<pad>", "<bos>", "<eos>", "<unk>", "a", …]}}

Images are measured after scaling to [0, 1]; vectors per dimension; audio as one channel.
"""

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from absl import logging

from mmjax.data import tokenizers

FILENAME = "mmjax_statistics.json"
# A standard deviation below this (a constant channel) normalises by 1 instead of blowing up.
MIN_STD = 1e-6


def moments(values: np.ndarray, channel_axis: int | None = -1) -> dict[str, list[float]]:
  """Mean and standard deviation per channel (all other axes pooled), in float64.

  Args:
    values: ``[N, …]`` samples.
    channel_axis: the axis kept apart (the channels of images, the dimensions of vectors); None
      pools everything into one channel.

  >>> moments(np.array([[[0.0, 1.0]], [[2.0, 1.0]]]))
  {'mean': [1.0, 1.0], 'std': [1.0, 0.0]}
  """
  values = np.asarray(values, np.float64)
  if channel_axis is None:
    return {"mean": [float(values.mean())], "std": [float(values.std())]}
  axes = tuple(a for a in range(values.ndim) if a != channel_axis % values.ndim)
  return {"mean": values.mean(axis=axes).tolist(), "std": values.std(axis=axes).tolist()}


def image_moments(images: np.ndarray) -> dict[str, list[float]]:
  """Per-channel moments of ``uint8[N, H, W, C]`` images scaled to [0, 1]."""
  return moments(np.asarray(images, np.float64) / 255.0)


def vocabulary(texts: Iterable[str | bytes]) -> list[str]:
  """The word vocabulary (special tokens first) of `texts`."""
  return tokenizers.build_vocabulary([t.decode("utf-8") if isinstance(t, bytes) else t for t in texts])


def normalizer(stats: Mapping[str, Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
  """``(mean, std)`` as float32 arrays ready to broadcast over the channel axis."""
  mean = np.asarray(stats["mean"], np.float32)
  std = np.maximum(np.asarray(stats["std"], np.float32), MIN_STD)
  return mean, std


def empty() -> dict:
  return {"moments": {}, "vocabulary": {}}


def read(directory: str) -> dict:
  """The statistics stored next to a dataset's files, or empty ones."""
  path = os.path.join(directory, FILENAME)
  if not os.path.exists(path):
    return empty()
  with open(path, encoding="utf-8") as f:
    stored = json.load(f)
  return {**empty(), **stored}


def write(directory: str, stats: dict) -> None:
  """Stores `stats` next to a dataset's files (atomically); read-only directories are skipped."""
  path = os.path.join(directory, FILENAME)
  try:
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(stats, f)
    os.replace(path + ".tmp", path)
  except OSError as error:
    logging.warning("cannot store dataset statistics in %s (%s); they will be computed again next time", path, error)
