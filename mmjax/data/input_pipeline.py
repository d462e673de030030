"""The ``data`` config section → a `MultimodalData` ready for training and evaluation.

A config names a TFDS dataset (one of mmjax's own builders, which are built offline on first use,
or any TFDS dataset already prepared as array_record in the data directory) and maps its features
to modalities::

    config.data = dict(
        name="mm_digits", data_dir="",
        modalities=dict(image=modality("image", "image"),
                        text=modality("caption", "text", tokenizer="word", length=16)),
        label="label", splits=dict(train="train", eval="test"),
        batch_size=256, cache=True, modality_dropout=dict())

Every field is checked by `config_schema` / `config_problems` before anything is read.
"""

import os

import tensorflow_datasets as tfds

from mmjax.data import mm_digits, mm_shapes, mnist_svhn, preprocess, tokenizers
from mmjax.data.dataset import ModalityConfig, MultimodalData
from mmjax.data.spec import KINDS, LABEL_KEY, RESERVED_KEYS
from mmjax.schema import ConfigError, Entries, Field

# Datasets that mmjax builds itself (offline, on first use), by the name used in `config.data.name`;
# ``name/config`` picks one of a builder's configs (``mm_shapes/missing``).
BUILDERS = {"mm_digits": mm_digits.prepare, "mm_shapes": mm_shapes.prepare, "mnist_svhn": mnist_svhn.prepare}

# The options of a modality section, by kind, with their defaults.
KIND_OPTIONS = {
    "image": {"scaling": "standardize"},
    "vector": {"scaling": "standardize"},
    "text": {"tokenizer": "word", "length": 16},
    "audio": {"length": 0, "sample_rate": 0},
    "label": {},
}
_OPTION_FIELDS = {
    "image": {"scaling": Field(str, choices=preprocess.IMAGE_SCALINGS)},
    "vector": {"scaling": Field(str, choices=preprocess.VECTOR_SCALINGS)},
    "text": {"tokenizer": Field(str, choices=tokenizers.TOKENIZERS), "length": Field(int, low=2)},
    "audio": {"length": Field(int, low=0), "sample_rate": Field(int, low=0)},
    "label": {},
}
_COMMON_FIELDS = {"feature": Field(str), "kind": Field(str, choices=tuple(KINDS)), "present_feature": Field(str)}


def modality(feature: str, kind: str, present_feature: str = "", **options) -> dict:
  """A ``data.modalities.<name>`` section with the kind's defaults for options not given.

  >>> modality("caption", "text", length=12)
  {'feature': 'caption', 'kind': 'text', 'present_feature': '', 'tokenizer': 'word', 'length': 12}
  """
  if kind not in KIND_OPTIONS:
    raise ValueError(f"unknown modality kind {kind!r}; valid kinds: {sorted(KIND_OPTIONS)}.")
  unknown = sorted(set(options) - set(KIND_OPTIONS[kind]))
  if unknown:
    raise ValueError(f"options {unknown} do not apply to kind {kind!r}; its options: {sorted(KIND_OPTIONS[kind])}.")
  return {"feature": feature, "kind": kind, "present_feature": present_feature, **KIND_OPTIONS[kind], **options}


def _modality_schema(section) -> dict:
  kind = section.get("kind") if hasattr(section, "get") else None
  return {**_COMMON_FIELDS, **_OPTION_FIELDS.get(kind, {})}


def config_schema(config) -> dict:
  """The schema of the ``data`` section (modality dropout may name only configured modalities)."""
  modalities = config.get("modalities") if hasattr(config, "get") else None
  names = tuple(modalities) if hasattr(modalities, "keys") else None
  return {
      "name": Field(str),
      "data_dir": Field(str),  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
      "modalities": Entries(_modality_schema),
      "label": Field(str),  # the ClassLabel feature served as batch["label"]; "" for none
      "splits": {"train": Field(str), "eval": Field(str)},
      "batch_size": Field(int, low=1),
      "cache": Field(bool),
      "modality_dropout": Entries(Field(float, low=0.0, high=1.0), names=names),
  }


def config_problems(config) -> list[str]:
  """Problems of the ``data`` section that involve several fields or the installed datasets."""
  problems = []
  if not config.modalities:
    problems.append("data.modalities: a dataset needs at least one modality")
  reserved = sorted(set(config.modalities) & set(RESERVED_KEYS))
  if reserved:
    problems.append(f"data.modalities: names {reserved} are reserved")
  if LABEL_KEY in config.modalities and config.modalities[LABEL_KEY].get("kind") != "label":
    problems.append(f"data.modalities.{LABEL_KEY}: a modality named {LABEL_KEY!r} is the class label and must be of kind 'label'")
  if _base_name(config.name) not in BUILDERS and _base_name(config.name) not in tfds.list_builders(with_community_datasets=False):
    problems.append(
        f"data.name: {config.name!r} is neither one of mmjax's datasets {sorted(BUILDERS)} nor a registered TFDS dataset"
    )
  return problems


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


def _base_name(name: str) -> str:
  """The dataset of a TFDS name that may carry a config and a version (``name/config:1.0.0``)."""
  return name.split(":")[0].split("/")[0]


def builder(name: str, directory: str) -> tfds.core.DatasetBuilder:
  """Dataset `name` in `directory`: one of mmjax's (built there if needed) or a TFDS dataset."""
  if _base_name(name) in BUILDERS:
    variant = name.partition("/")[2]
    return BUILDERS[_base_name(name)](directory, variant or "default")
  try:
    return tfds.builder(name, data_dir=directory)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ConfigError(f"data.name: {name!r} is neither one of mmjax's datasets {sorted(BUILDERS)} nor a TFDS dataset") from error


def from_config(config) -> MultimodalData:
  """The dataset the ``data`` config section describes (built first if it is one of mmjax's)."""
  directory = resolve_data_dir(config.data_dir)
  try:
    dataset = builder(config.name, directory)
    return MultimodalData(
        dataset,
        {name: ModalityConfig.from_section(section) for name, section in config.modalities.items()},
        label=config.label,
        splits=dict(config.splits),
        cache=config.cache,
        modality_dropout=dict(config.modality_dropout),
        statistics_dir=os.path.join(directory, dataset.info.full_name),
    )
  except OSError as error:
    raise ConfigError(f"cannot build {config.name} into {directory!r}: {error}") from error
  except ValueError as error:
    if isinstance(error, ConfigError):
      raise
    # Unreadable metadata: TFDS reads JSON, never unpickles.
    raise ConfigError(
        f"the {config.name} dataset in {directory!r} is unreadable ({type(error).__name__}: {error}). "
        f"Delete {os.path.join(directory, config.name)!r} to have it rebuilt."
    ) from error
