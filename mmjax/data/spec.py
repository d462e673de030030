"""What a model needs to know about its data: every modality's kind, shape, dtype and sizes.

A batch holds one array per modality (leading batch dimension), the class label of every sample
when the dataset has one, and a per-sample presence mask per modality::

    {"image": float32[B, H, W, C], "text": int32[B, L], "audio": float32[B, S],
     "vector": float32[B, D], <label modality>: int32[B],
     "label": int32[B], "present": {modality: bool[B]}}

An absent modality's values are zeros and mean nothing; models read the mask.
"""

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np

# Modality kinds, with the dtype a batch holds for each.
KINDS = {
    "image": np.float32,   # [H, W, C], normalised
    "text": np.int32,      # [L] token ids, padded
    "audio": np.float32,   # [S] waveform samples in [-1, 1]
    "vector": np.float32,  # [D] features, normalised
    "label": np.int32,     # [] class index
}
# Keys of a batch that are not modalities.
RESERVED_KEYS = ("present",)
LABEL_KEY = "label"


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  """One modality as models see it.

  Attributes:
    kind: one of `KINDS`.
    shape: per-example shape (no batch dimension).
    num_classes: for ``label`` modalities, the number of classes.
    vocab_size: for ``text`` modalities, the number of token ids (``0 … vocab_size - 1``).
    sample_rate: for ``audio`` modalities, samples per second.
  """

  kind: str
  shape: tuple[int, ...]
  num_classes: int | None = None
  vocab_size: int | None = None
  sample_rate: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown modality kind {self.kind!r}; valid kinds: {sorted(KINDS)}.")
    required = {"label": "num_classes", "text": "vocab_size", "audio": "sample_rate"}.get(self.kind)
    if required and getattr(self, required) is None:
      raise ValueError(f"a {self.kind} modality needs {required}.")

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(KINDS[self.kind])

  @property
  def struct(self) -> jax.ShapeDtypeStruct:
    """Per-example shape and dtype."""
    return jax.ShapeDtypeStruct(self.shape, self.dtype)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know about its data to build itself.

  Attributes:
    modalities: every modality by name.
    class_names: names of the classes of ``batch["label"]``; empty when the dataset has no label.
    num_examples: examples per split.
    prompt_templates: templates for zero-shot class prompts (``"a photo of a {name}"``), if the
      dataset has any.

  >>> spec = DataSpec({"image": ModalitySpec("image", (8, 8, 1)), "digit": ModalitySpec("label", (), num_classes=10)},
  ...                 class_names=tuple("0123456789"), num_examples={"train": 100})
  >>> spec.of_kind("label")
  ('digit',)
  >>> spec.batch_struct(4)["present"]["image"].shape
  (4,)
  """

  modalities: Mapping[str, ModalitySpec]
  class_names: tuple[str, ...] = ()
  num_examples: Mapping[str, int] = dataclasses.field(default_factory=dict)
  prompt_templates: tuple[str, ...] = ()

  def __post_init__(self):
    reserved = sorted(set(self.modalities) & set(RESERVED_KEYS))
    if reserved:
      raise ValueError(f"modality names {reserved} are reserved; rename them.")
    if LABEL_KEY in self.modalities and self.modalities[LABEL_KEY].kind != "label":
      raise ValueError(f"a modality named {LABEL_KEY!r} must be of kind 'label' (it is the class label).")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def of_kind(self, kind: str) -> tuple[str, ...]:
    """Names of the modalities of `kind`, in order."""
    return tuple(name for name, modality in self.modalities.items() if modality.kind == kind)

  def batch_struct(self, batch_size: int) -> dict:
    """Shape/dtype structs of a batch of `batch_size`."""
    batch = {
        name: jax.ShapeDtypeStruct((batch_size, *modality.shape), modality.dtype)
        for name, modality in self.modalities.items()
    }
    if self.class_names:
      batch[LABEL_KEY] = jax.ShapeDtypeStruct((batch_size,), np.int32)
    batch["present"] = {name: jax.ShapeDtypeStruct((batch_size,), np.bool_) for name in self.modalities}
    return batch
