"""One dataset class for any number of modalities, read from TFDS without TensorFlow.

A dataset is described as data: which TFDS features become which modalities, each with a kind
(`mmjax.data.spec.KINDS`) and its preprocessing; which feature holds the class label; which
boolean features say whether a modality is present in an example. `MultimodalData` reads the
splits through TFDS data sources (array_record), preprocesses them per kind
(`mmjax.data.preprocess`) with statistics stored with the dataset (`mmjax.data.statistics`), and
serves static-shape batches::

    {modality: array[B, …], "label": int32[B], "present": {modality: bool[B]}}

Training batches come from an endless Grain `MapDataset`: a seeded shuffle that changes every
epoch, each host reading only its own rows of every global batch, and optional modality dropout;
the batch at step ``k`` is a pure function of (seed, k), so the Grain iterator's state (a step
counter, saved in checkpoints) is all a resumed run needs. Evaluation batches cover a split once,
the last one padded with rows whose presence is False.
"""

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import preprocess, statistics
from mmjax.data.prompts import class_prompts
from mmjax.data.spec import KINDS, LABEL_KEY, DataSpec, ModalitySpec
from mmjax.schema import ConfigError

Batch = dict[str, Any]
# Examples read to compute statistics for a dataset that has none stored: enough for moments and a
# vocabulary of any dataset mmjax is used with on one machine; evenly spaced over the split.
STATISTICS_SAMPLE = 50_000


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
  """How one modality is read: a ``data.modalities.<name>`` config section.

  Attributes:
    feature: the TFDS feature holding it.
    kind: one of `mmjax.data.spec.KINDS`.
    present_feature: a boolean TFDS feature telling whether the example has this modality ("": always).
    scaling: images: ``standardize`` / ``unit`` / ``symmetric``; vectors: ``standardize`` / ``none``.
    tokenizer: text: ``word`` (the vocabulary stored with the dataset) or ``byte``.
    length: text: tokens per sequence; audio: samples per clip (0: the feature's fixed length).
    sample_rate: audio: samples per second (0: from the feature or the dataset's metadata).
  """

  feature: str
  kind: str
  present_feature: str = ""
  scaling: str = "standardize"
  tokenizer: str = "word"
  length: int = 0
  sample_rate: int = 0

  @classmethod
  def from_section(cls, section: Mapping) -> "ModalityConfig":
    section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    return cls(**section)


def _feature_kinds(feature) -> tuple[str, ...]:
  """The modality kinds a TFDS feature can be read as."""
  if isinstance(feature, tfds.features.ClassLabel):
    return ("label",)
  if isinstance(feature, tfds.features.Image):
    return ("image",)
  if isinstance(feature, tfds.features.Text):
    return ("text",)
  if type(feature).__name__ == "Audio":
    return ("audio",)
  if isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 1:
    return ("audio", "vector")
  return ()


class MultimodalData:
  """A TFDS dataset served as multimodal batches.

  Args:
    builder: a TFDS builder whose splits can be read as data sources (array_record).
    modalities: ``{name: ModalityConfig}``.
    label: the `ClassLabel` feature served as ``batch["label"]``; "" for none.
    splits: ``{"train": split, "eval": split}`` TFDS split names (slices such as
      ``"train[:90%]"`` allowed).
    cache: read and preprocess each split once and keep it in memory (right for datasets of a few
      GB at most); otherwise every batch is read from the data source.
    modality_dropout: ``{modality: probability}`` of hiding a modality of a training example.
    statistics_dir: where statistics the dataset lacks are stored once computed (default: the
      builder's own directory, ``<data_dir>/<name>/<config>/<version>``).
  """

  def __init__(
      self,
      builder: tfds.core.DatasetBuilder,
      modalities: Mapping[str, ModalityConfig],
      label: str,
      splits: Mapping[str, str],
      cache: bool = True,
      modality_dropout: Mapping[str, float] | None = None,
      statistics_dir: str | None = None,
  ):
    self.name = builder.name
    self.modalities = dict(modalities)
    self.label = label
    self.modality_dropout = dict(modality_dropout or {})
    self._features = builder.info.features
    self._check_features()
    self.sources = {role: _data_source(builder, split) for role, split in splits.items()}
    stats = self._statistics(builder, self.sources["train"], statistics_dir or builder.data_dir)
    self.preprocessors = {name: self._preprocessor(name, config, stats) for name, config in self.modalities.items()}
    self.readers = {role: SplitReader(source, self.read_examples, cache) for role, source in self.sources.items()}
    metadata = builder.info.metadata or {}
    self.spec = DataSpec(
        modalities={name: self._modality_spec(name, config, metadata) for name, config in self.modalities.items()},
        class_names=tuple(self._features[label].names) if label else (),
        num_examples={role: len(reader) for role, reader in self.readers.items()},
        prompt_templates=tuple(metadata.get("prompt_templates", ())),
    )

  # ---------------------------------------------------------------------------------------------
  # Description and checks

  def _check_features(self) -> None:
    available = sorted(self._features.keys())
    problems = []
    for name, config in self.modalities.items():
      where = f"data.modalities.{name}"
      if config.kind not in KINDS:
        problems.append(f"{where}.kind: {config.kind!r} is not a valid choice; valid choices: {sorted(KINDS)}")
        continue
      if config.feature not in self._features:
        problems.append(f"{where}.feature: {self.name} has no feature {config.feature!r}; its features: {available}")
        continue
      feature = self._features[config.feature]
      usable = _feature_kinds(feature)
      if config.kind not in usable:
        problems.append(
            f"{where}: feature {config.feature!r} is a {type(feature).__name__}{_shape_of(feature)}, which cannot be "
            f"read as kind {config.kind!r}; kinds it can be read as: {list(usable)}"
        )
      if config.kind in ("image", "vector") and None in tuple(feature.shape):
        problems.append(f"{where}: feature {config.feature!r} has no fixed shape {tuple(feature.shape)}; mmjax needs static shapes")
      if config.kind == "audio" and not config.length and None in tuple(feature.shape):
        problems.append(f"{where}.length: feature {config.feature!r} has variable length; set the number of samples")
      if config.present_feature and config.present_feature not in self._features:
        problems.append(f"{where}.present_feature: {self.name} has no feature {config.present_feature!r}; its features: {available}")
    if self.label and (self.label not in self._features or not isinstance(self._features[self.label], tfds.features.ClassLabel)):
      labels = sorted(k for k, f in self._features.items() if isinstance(f, tfds.features.ClassLabel))
      problems.append(f"data.label: {self.label!r} is not a ClassLabel feature of {self.name}; its ClassLabel features: {labels}")
    if LABEL_KEY in self.modalities and self.modalities[LABEL_KEY].feature != self.label:
      problems.append(f"data.modalities.{LABEL_KEY}: a modality named {LABEL_KEY!r} must read the data.label feature {self.label!r}")
    if problems:
      raise ConfigError(f"dataset {self.name} does not fit the config:\n" + "\n".join(f"  {p}" for p in problems))

  def _modality_spec(self, name: str, config: ModalityConfig, metadata: Mapping) -> ModalitySpec:
    shape = self.preprocessors[name].shape
    if config.kind == "label":
      return ModalitySpec("label", shape, num_classes=self._features[config.feature].num_classes)
    if config.kind == "text":
      return ModalitySpec("text", shape, vocab_size=self.preprocessors[name].tokenizer.vocab_size)
    if config.kind == "audio":
      feature = self._features[config.feature]
      rate = config.sample_rate or getattr(feature, "sample_rate", None) or metadata.get("sample_rate", {}).get(config.feature)
      if not rate:
        raise ConfigError(
            f"data.modalities.{name}.sample_rate: the sample rate of {config.feature!r} is not stored with {self.name}; set it."
        )
      return ModalitySpec("audio", shape, sample_rate=int(rate))
    return ModalitySpec(config.kind, shape)

  def _statistics(self, builder, train_source, directory: str) -> dict:
    """The dataset's stored statistics, computing (and storing in `directory`) the ones this
    config needs and the dataset lacks."""
    stats = statistics.empty()
    for key in stats:
      stats[key].update((builder.info.metadata or {}).get(key, {}))
    stored = statistics.read(directory)
    for key in stats:
      for feature, value in stored[key].items():
        stats[key].setdefault(feature, value)
    needed = {
        config.feature: config.kind
        for config in self.modalities.values()
        if (config.kind in ("image", "vector") and config.scaling == "standardize" and config.feature not in stats["moments"])
        or (config.kind == "text" and config.tokenizer == "word" and config.feature not in stats["vocabulary"])
    }
    if not needed:
      return stats
    indices = np.unique(np.linspace(0, len(train_source) - 1, min(len(train_source), STATISTICS_SAMPLE)).astype(int))
    examples = train_source.__getitems__(indices.tolist())
    for feature, kind in needed.items():
      values = [example[feature] for example in examples]
      if kind == "image":
        stats["moments"][feature] = statistics.image_moments(np.stack(values))
      elif kind == "vector":
        stats["moments"][feature] = statistics.moments(np.stack(values))
      else:
        stats["vocabulary"][feature] = statistics.vocabulary(values)
    statistics.write(directory, {key: {**stored[key], **{f: stats[key][f] for f in needed if f in stats[key]}} for key in stats})
    return stats

  def _preprocessor(self, name: str, config: ModalityConfig, stats: Mapping) -> preprocess.Preprocessor:
    feature = self._features[config.feature]
    valid_scalings = {"image": preprocess.IMAGE_SCALINGS, "vector": preprocess.VECTOR_SCALINGS}.get(config.kind)
    if valid_scalings and config.scaling not in valid_scalings:
      raise ConfigError(f"data.modalities.{name}.scaling: {config.scaling!r} is not valid for {config.kind}; valid choices: {list(valid_scalings)}")
    if config.kind == "image":
      return preprocess.ImagePreprocessor(tuple(feature.shape), config.scaling, stats["moments"].get(config.feature))
    if config.kind == "vector":
      return preprocess.VectorPreprocessor(tuple(feature.shape), config.scaling, stats["moments"].get(config.feature))
    if config.kind == "text":
      if config.length < 2:
        raise ConfigError(f"data.modalities.{name}.length: a text modality needs a length of at least 2 tokens, got {config.length}")
      tokenizer = preprocess.make_tokenizer(config, stats["vocabulary"].get(config.feature))
      return preprocess.TextPreprocessor(tokenizer, config.length)
    if config.kind == "audio":
      return preprocess.AudioPreprocessor(config.length or int(feature.shape[0]))
    return preprocess.LabelPreprocessor()

  # ---------------------------------------------------------------------------------------------
  # Reading

  def read_examples(self, examples: Sequence[Mapping]) -> Batch:
    """Raw TFDS examples → a batch (presence from the stored presence features)."""
    batch: Batch = {}
    present = {}
    for name, config in self.modalities.items():
      batch[name] = self.preprocessors[name]([example[config.feature] for example in examples])
      present[name] = (
          np.asarray([bool(example[config.present_feature]) for example in examples])
          if config.present_feature
          else np.ones(len(examples), np.bool_)
      )
      _hide(batch, name, ~present[name])
    if self.label:
      batch[LABEL_KEY] = np.asarray([example[self.label] for example in examples], np.int32)
    batch["present"] = present
    return batch

  def train_dataset(self, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """The endless stream of this host's part of every global batch of `batch_size`.

    Rows ``process_index, process_index + process_count, …`` of every global batch belong to this
    host, so the union over hosts of step ``k``'s batches is the single-host batch of step ``k``.
    Modality dropout hides modalities at random, drawn from (seed, position in the example stream,
    modality), so it too is the same on any number of hosts and after a resume.
    """
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be divisible by the process count {process_count}.")
    rates = self.modality_dropout
    unknown = sorted(set(rates) - set(self.modalities))
    if unknown:
      raise ConfigError(f"data.modality_dropout: unknown modalities {unknown}; modalities: {sorted(self.modalities)}")
    reader = self.readers["train"]
    order = grain.MapDataset.range(len(reader)).shuffle(seed=seed).repeat(None)
    positioned = order.map_with_index(lambda position, index: (position, index))
    host_rows = positioned[process_index::process_count]

    def read(rows: tuple[np.ndarray, np.ndarray]) -> Batch:
      positions, indices = rows
      batch = reader.read(indices)
      for name, keep in preprocess.dropout_masks(seed, positions, rates).items():
        batch["present"][name] = batch["present"][name] & keep
        _hide(batch, name, ~keep)
      return batch

    return host_rows.batch(batch_size // process_count, drop_remainder=True).map(read)

  def eval_batches(
      self, batch_size: int, process_index: int = 0, process_count: int = 1, split: str = "eval"
  ) -> Iterator[Batch]:
    """One pass over the `split` role ("eval" or "train") in order, in global batches of
    `batch_size`, the last one padded.

    Padding rows repeat example 0 and are marked absent in ``batch["present"]``. Like
    `train_dataset`, a host gets rows ``process_index::process_count`` of every global batch.
    """
    reader = self.readers[split]
    for start in range(0, len(reader), batch_size):
      indices = np.arange(start, min(start + batch_size, len(reader)))
      valid = np.arange(batch_size) < len(indices)
      indices = np.concatenate([indices, np.zeros(batch_size - len(indices), indices.dtype)])
      rows = slice(process_index, None, process_count)
      batch = reader.read(indices[rows])
      batch["present"] = {modality: mask & valid[rows] for modality, mask in batch["present"].items()}
      yield batch

  def class_prompts(self, modality: str) -> np.ndarray | None:
    """``int32[num_classes, num_templates, L]`` zero-shot prompts tokenized as text `modality`, or
    None when the dataset has no prompt templates or class names."""
    if not (self.spec.prompt_templates and self.spec.class_names):
      return None
    prompts = class_prompts(self.spec.class_names, self.spec.prompt_templates)
    return np.stack([self.preprocessors[modality](per_class) for per_class in prompts])


class SplitReader:
  """Reads preprocessed batches of one split by example index, from memory or from the source."""

  def __init__(self, source, read_examples, cache: bool):
    self._source = source
    self._read_examples = read_examples
    self._cache = read_examples(source.__getitems__(list(range(len(source))))) if cache else None

  def __len__(self) -> int:
    return len(self._source)

  def read(self, indices: np.ndarray) -> Batch:
    if self._cache is None:
      return self._read_examples(self._source.__getitems__(np.asarray(indices).tolist()))
    return _take(self._cache, np.asarray(indices))


def _hide(batch: Batch, modality: str, absent: np.ndarray) -> None:
  """Zeros the values of `modality` where it is `absent`: a stored placeholder is not data.

  A modality named "label" is the class label itself, which evaluation reads as the target, so its
  values stay; only its presence mask says it is hidden.
  """
  if modality != LABEL_KEY:
    batch[modality][absent] = 0


def _take(tree, indices: np.ndarray):
  if isinstance(tree, dict):
    return {key: _take(value, indices) for key, value in tree.items()}
  return tree[indices]


def _shape_of(feature) -> str:
  shape = getattr(feature, "shape", None)
  return "" if shape is None or isinstance(feature, (tfds.features.ClassLabel, tfds.features.Text)) else f" of shape {tuple(shape)}"


def _data_source(builder, split: str):
  """The split's data source, or a `ConfigError` saying why the dataset cannot be read."""
  try:
    return builder.as_data_source(split=split)
  except (FileNotFoundError, AssertionError, ValueError, NotImplementedError) as error:
    raise ConfigError(
        f"cannot read split {split!r} of {builder.name} from {builder.data_dir} ({type(error).__name__}: {error}). "
        "mmjax reads TFDS datasets prepared as array_record (`tfds build --file_format=array_record`) and never "
        "downloads; prepare it on a machine with internet access and copy the data directory here."
    ) from error
