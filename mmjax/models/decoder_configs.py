"""Decoders chosen per modality by name in the config, with their options as data.

A generative model's config holds one section per modality it decodes, like its encoders::

    decoders=dict(image=decoder_section("image", "conv_transpose", conv_transpose=dict(channels=(64, 32))),
                  label=decoder_section("label", "mlp"))

The names and options per kind are those of `mmjax.decoders.DECODERS`; this module turns them into
`mmjax.models.choices` tables (one per kind) with schemas derived from the decoders' defaults.
"""

from collections.abc import Mapping

import flax.linen as nn

from mmjax.data.spec import ModalitySpec
from mmjax.decoders import audio as audio_decoders, layers as decoder_layers, registry
from mmjax.encoders import layers as encoder_layers
from mmjax.models.choices import Choice, ChoiceTable, as_tuples
from mmjax.models.encoder_configs import DTYPES
from mmjax.schema import Field

# Options whose values come from a table.
_CHOICES = {
    "norm": tuple(encoder_layers.NORMS),
    "activation": tuple(decoder_layers.ACTIVATIONS),
    "output": tuple(audio_decoders.OUTPUTS),
}


def _field(option: str, default) -> Field:
  if option in _CHOICES:
    return Field(str, choices=_CHOICES[option])
  if isinstance(default, tuple):
    return Field((tuple, list), items=int, low=1)
  if isinstance(default, float):
    return Field(float, low=0.0, high=1.0 if option.endswith("rate") else None)
  return Field(type(default), low=1 if isinstance(default, int) else None)


def _build(kind: str, name: str):
  def build(options, spec: ModalitySpec, modality: str, dtype, remat: bool) -> nn.Module:
    return registry.make_decoder(spec, name, modality=modality, dtype=dtype, remat=remat, **as_tuples(options))

  return build


DECODERS = {
    kind: ChoiceTable({
        name: Choice(
            kinds=(kind,),
            options={option: (default, _field(option, default)) for option, default in registry.options(kind, name).items()},
            build=_build(kind, name),
        )
        for name in names
    })
    for kind, names in registry.DECODERS.items()
}


def decoder_section(kind: str, name: str, **overrides: Mapping) -> dict:
  """A modality's decoder section: `name` chosen, every decoder of `kind` with its defaults,
  updated by ``overrides[decoder] = {option: value}``.

  >>> decoder_section("image", "mlp", mlp=dict(width=256))["mlp"]
  {'width': 256, 'depth': 3, 'norm': 'none', 'activation': 'swish'}
  """
  return DECODERS[kind].section(kind, name, **overrides)


def build_decoder(section: Mapping, spec: ModalitySpec, modality: str, dtype: str, remat: bool) -> nn.Module:
  """The decoder a modality's section chooses, built for `spec`."""
  return DECODERS[spec.kind].build(section, spec, modality, DTYPES[dtype], remat)


def section_schema(kind: str | None, section: Mapping) -> dict:
  """The schema of a decoder section for a modality of `kind`."""
  if kind not in DECODERS:
    return {"name": Field(str, choices=())}
  return DECODERS[kind].section_schema(kind, section)
