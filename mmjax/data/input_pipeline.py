"""Input pipelines: TFDS data sources → Grain datasets of static-shape batches.

A batch is a dict keyed by modality, plus the label and a per-sample presence mask per modality::

    {"image": float32[B, H, W, C], "text": int32[B, L], "label": int32[B],
     "present": {"image": bool[B], "text": bool[B]}}

Training batches are drawn from an endless Grain `MapDataset`: the example order is a seeded
shuffle that changes every epoch, a host reads only its own slice of every global batch, and a
batch at step ``k`` is a pure function of (seed, k). The Grain iterator's state (a step counter)
goes into checkpoints, so a resumed run sees exactly the batches it would have seen.
Evaluation batches cover a split once, the last one padded with rows whose presence is False.
"""

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import mm_digits, tokenizers
from mmjax.data.prompts import class_prompts
from mmjax.schema import ConfigError, Field

Batch = dict[str, np.ndarray | dict[str, np.ndarray]]

# Datasets that mmjax can build itself, by the name used in `config.data.name`.
BUILDERS = {"mm_digits": mm_digits.prepare}

CONFIG_SCHEMA = {
    "name": Field(str, choices=tuple(BUILDERS)),
    "data_dir": Field(str),  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
    "tokenizer": Field(str, choices=tokenizers.TOKENIZERS),
    "text_length": Field(int, low=2),
    "batch_size": Field(int, low=1),
    "cache": Field(bool),
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know about its data to build itself.

  Attributes:
    modalities: per-example shape and dtype of every modality (no batch dimension).
    vocab_size: size of the text vocabulary (tokens are ``0 … vocab_size - 1``).
    class_names: names of the label classes.
    num_examples: examples per split.
  """

  modalities: Mapping[str, jax.ShapeDtypeStruct]
  vocab_size: int
  class_names: tuple[str, ...]
  num_examples: Mapping[str, int]


class ImageCaptionPreprocessor:
  """Raw TFDS examples → a numpy batch: images normalised, captions tokenized."""

  def __init__(self, tokenizer, text_length: int, pixel_mean: float, pixel_std: float):
    self.tokenizer = tokenizer
    self.text_length = text_length
    self.pixel_mean = pixel_mean
    self.pixel_std = pixel_std

  def images(self, pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255.0 - self.pixel_mean) / self.pixel_std).astype(np.float32)

  def texts(self, texts: Sequence[str | bytes]) -> np.ndarray:
    decoded = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
    return self.tokenizer.encode(decoded, self.text_length)

  def __call__(self, examples: Sequence[Mapping]) -> Batch:
    return {
        "image": self.images(np.stack([e["image"] for e in examples])),
        "text": self.texts([e["caption"] for e in examples]),
        "label": np.asarray([e["label"] for e in examples], np.int32),
    }


class SplitReader:
  """Reads preprocessed batches of one split by example index.

  With `cache`, the whole split is read and preprocessed once and batches are gathered from memory
  (right for datasets of a few GB at most); otherwise every batch is read from the data source.
  """

  def __init__(self, source, preprocess, cache: bool):
    self._source = source
    self._preprocess = preprocess
    self._cache = preprocess(source.__getitems__(range(len(source)))) if cache else None

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: np.ndarray) -> Batch:
    if self._cache is not None:
      batch = {key: value[indices] for key, value in self._cache.items()}
    else:
      batch = self._preprocess(self._source.__getitems__(indices.tolist()))
    present = np.ones(len(indices), np.bool_)
    batch["present"] = {modality: present for modality in ("image", "text")}
    return batch


class ImageCaptionData:
  """An image–caption–label dataset ready for training and evaluation."""

  def __init__(self, builder: tfds.core.DatasetBuilder, tokenizer: str, text_length: int, cache: bool = True):
    metadata = builder.info.metadata
    self.tokenizer = tokenizers.make_tokenizer(tokenizer, metadata["vocabulary"])
    self.preprocess = ImageCaptionPreprocessor(
        self.tokenizer, text_length, metadata["pixel_mean"], metadata["pixel_std"]
    )
    self.prompt_templates = tuple(metadata["prompt_templates"])
    self.splits = {
        split: SplitReader(builder.as_data_source(split=split), self.preprocess, cache)
        for split in builder.info.splits
    }
    self.spec = DataSpec(
        modalities={
            "image": jax.ShapeDtypeStruct(builder.info.features["image"].shape, np.float32),
            "text": jax.ShapeDtypeStruct((text_length,), np.int32),
        },
        vocab_size=self.tokenizer.vocab_size,
        class_names=tuple(builder.info.features["label"].names),
        num_examples={split: len(reader) for split, reader in self.splits.items()},
    )

  def train_dataset(
      self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1, split: str = "train"
  ) -> grain.MapDataset:
    """The endless stream of this host's part of every global batch of `batch_size`.

    Rows ``process_index, process_index + process_count, …`` of every global batch belong to this
    host, so the union over hosts of step ``k``'s batches is the single-host batch of step ``k``.
    """
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be divisible by the process count {process_count}.")
    reader = self.splits[split]
    order = grain.MapDataset.range(len(reader)).shuffle(seed=seed).repeat(None)
    host_rows = order[process_index::process_count]
    return host_rows.batch(batch_size // process_count, drop_remainder=True).map(reader.read)

  def eval_batches(
      self, batch_size: int, process_index: int = 0, process_count: int = 1, split: str = "test"
  ) -> Iterator[Batch]:
    """One pass over `split` in order, in global batches of `batch_size`, the last one padded.

    Padding rows repeat example 0 and are marked absent in ``batch["present"]``. Like
    `train_dataset`, a host gets rows ``process_index::process_count`` of every global batch.
    """
    reader = self.splits[split]
    for start in range(0, len(reader), batch_size):
      indices = np.arange(start, min(start + batch_size, len(reader)))
      valid = np.arange(batch_size) < len(indices)
      indices = np.concatenate([indices, np.zeros(batch_size - len(indices), indices.dtype)])
      rows = slice(process_index, None, process_count)
      batch = reader.read(indices[rows])
      batch["present"] = {modality: valid[rows] for modality in batch["present"]}
      yield batch

  def class_prompts(self) -> np.ndarray:
    """``int32[num_classes, num_templates, L]`` tokenized zero-shot prompts."""
    prompts = class_prompts(self.spec.class_names, self.prompt_templates)
    return np.stack([self.preprocess.texts(per_class) for per_class in prompts])


DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # TFDS's own default


def resolve_data_dir(configured: str | None) -> str:
  """The data directory: `configured`, else ``$MMJAX_DATA_DIR``, else ``~/tensorflow_datasets``.

  A directory named explicitly (by the config or the environment) must exist, so a typo fails at
  once instead of silently building a second copy of the data elsewhere; the default one is
  created on demand.
  """
  source, explicit = ("data.data_dir", configured) if configured else ("$MMJAX_DATA_DIR", os.environ.get("MMJAX_DATA_DIR"))
  if not explicit:
    path = os.path.expanduser(DEFAULT_DATA_DIR)
    os.makedirs(path, exist_ok=True)
    return path
  path = os.path.abspath(os.path.expanduser(explicit))
  if not os.path.isdir(path):
    raise ConfigError(
        f"data directory {path!r} (from {source}) does not exist. Create it, or leave data.data_dir "
        f"and $MMJAX_DATA_DIR unset to use {DEFAULT_DATA_DIR}."
    )
  return path


def load(name: str, data_dir: str | None, tokenizer: str, text_length: int, cache: bool = True) -> ImageCaptionData:
  """Builds dataset `name` if needed and returns it ready for the pipeline.

  Args:
    name: one of `BUILDERS`.
    data_dir: TFDS data directory; empty or None means ``$MMJAX_DATA_DIR`` or
      ``~/tensorflow_datasets``.
    tokenizer: ``"word"`` (vocabulary stored with the dataset) or ``"byte"``.
    text_length: tokens per caption, BOS and EOS included.
    cache: keep the preprocessed splits in memory.
  """
  if name not in BUILDERS:
    raise ValueError(f"Unknown dataset {name!r}; valid choices: {sorted(BUILDERS)}.")
  directory = resolve_data_dir(data_dir)
  try:
    builder = BUILDERS[name](directory)
    return ImageCaptionData(builder, tokenizer, text_length, cache)
  except OSError as error:
    raise ConfigError(f"cannot build {name} into {directory!r}: {error}") from error
  except ValueError as error:  # unreadable metadata: TFDS reads JSON, never unpickles
    raise ConfigError(
        f"the {name} dataset in {directory!r} is unreadable ({type(error).__name__}: {error}). "
        f"Delete {os.path.join(directory, name)!r} to have it rebuilt."
    ) from error


def from_config(config) -> ImageCaptionData:
  """`load` with the arguments of the ``data`` config section."""
  return load(config.name, config.data_dir, config.tokenizer, config.text_length, config.cache)
