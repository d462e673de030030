"""Decoders by name, built from a `ModalitySpec`: the table configs choose from."""

import dataclasses
from collections.abc import Callable

import flax.linen as nn

from mmjax.data.spec import ModalitySpec
from mmjax.decoders.audio import ConvTransposeAudioDecoder
from mmjax.decoders.image import ConvTransposeImageDecoder, MLPImageDecoder
from mmjax.decoders.label import MLPLabelDecoder
from mmjax.decoders.text import TransformerTextDecoder
from mmjax.decoders.vector import MLPVectorDecoder

# Valid decoder names for each modality kind.
DECODERS: dict[str, dict[str, type[nn.Module]]] = {
    "image": {"conv_transpose": ConvTransposeImageDecoder, "mlp": MLPImageDecoder},
    "label": {"mlp": MLPLabelDecoder},
    "text": {"transformer": TransformerTextDecoder},
    "vector": {"mlp": MLPVectorDecoder},
    "audio": {"conv_transpose": ConvTransposeAudioDecoder},
}

# Per kind: the per-example rank a spec's shape must have, and the decoder fields the spec sets.
_FROM_SPEC: dict[str, tuple[int, Callable[[ModalitySpec], dict]]] = {
    "image": (3, lambda spec: {"shape": tuple(spec.shape)}),
    "label": (0, lambda spec: {"num_classes": spec.num_classes}),
    "text": (1, lambda spec: {"length": spec.shape[0], "vocab_size": spec.vocab_size}),
    "vector": (1, lambda spec: {"features": spec.shape[0]}),
    "audio": (1, lambda spec: {"num_samples": spec.shape[0]}),
}


# Attributes every decoder has that are not options of the decoder itself.
_COMMON = ("parent", "name", "modality", "remat", "dtype")


def options(kind: str, name: str) -> dict:
  """The options of decoder `name` for `kind` (attributes neither the spec nor the caller sets),
  with their defaults.

  >>> options("label", "mlp")
  {'width': 512, 'depth': 3, 'norm': 'none', 'activation': 'swish'}
  """
  decoder = DECODERS[kind][name]
  spec_fields = _spec_fields(kind)
  return {
      field.name: field.default
      for field in dataclasses.fields(decoder)
      if field.name not in (*_COMMON, *spec_fields) and field.default is not dataclasses.MISSING
  }


def _spec_fields(kind: str) -> set[str]:
  rank = _FROM_SPEC[kind][0]
  example = ModalitySpec(kind, (1,) * rank, num_classes=1, vocab_size=1, sample_rate=1)
  return set(_FROM_SPEC[kind][1](example))


def make_decoder(spec: ModalitySpec, name: str, *, modality: str | None = None, **options) -> nn.Module:
  """The decoder `name` for a modality described by `spec`, its output sizes taken from the spec.

  Args:
    spec: the modality (kind, shape, ``num_classes`` / ``vocab_size``).
    name: a name in ``DECODERS[spec.kind]``.
    modality: the modality's name, for errors (default: its kind).
    **options: the decoder's other attributes (``channels``, ``width``, ``norm``, ``dtype``, …).

  Returns:
    The (unbound) linen module.

  Raises:
    ValueError: for an unknown name (listing the valid ones), an unknown option (listing the
      valid ones), an option the spec sets, or a spec shape that does not fit its kind.

  >>> spec = ModalitySpec("image", (28, 28, 1))
  >>> make_decoder(spec, "mlp", width=64).shape
  (28, 28, 1)
  >>> make_decoder(spec, "resnet")
  Traceback (most recent call last):
  ...
  ValueError: unknown decoder 'resnet' for modality 'image' (kind 'image'); valid decoders: ['conv_transpose', 'mlp'].
  """
  modality = spec.kind if modality is None else modality
  choices = DECODERS[spec.kind]
  if name not in choices:
    raise ValueError(
        f"unknown decoder {name!r} for modality {modality!r} (kind {spec.kind!r}); valid decoders: {sorted(choices)}."
    )
  rank, fields_from_spec = _FROM_SPEC[spec.kind]
  if len(spec.shape) != rank:
    raise ValueError(
        f"modality {modality!r}: a {spec.kind} modality needs a per-example shape of rank {rank}, got {spec.shape}."
    )
  decoder = choices[name]
  from_spec = fields_from_spec(spec)
  settable = {field.name for field in dataclasses.fields(decoder)} - {"parent", "name", "modality", *from_spec}
  clashing = sorted(set(options) & set(from_spec))
  if clashing:
    raise ValueError(f"modality {modality!r}: {clashing} come from the ModalitySpec; do not pass them as options.")
  unknown = sorted(set(options) - settable)
  if unknown:
    raise ValueError(
        f"modality {modality!r}: unknown options {unknown} for {decoder.__name__}; valid options: {sorted(settable)}."
    )
  return decoder(**from_spec, modality=modality, **options)
