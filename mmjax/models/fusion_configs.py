"""Fusions chosen by name in the config, with their options as data.

A model that fuses modalities names its fusion and holds the options of every fusion of
`mmjax.fusion.FUSIONS` (derived from the fusions' defaults)::

    fusion="low_rank", fusion_options=fusion_options(low_rank=dict(rank=8))

so ``--config.model.fusion=bottleneck`` switches fusions from the command line. The output width
(``features``) is the model's, not an option.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn

from mmjax.fusion import FUSIONS as FUSION_MODULES
from mmjax.fusion import graph, late, multiplicative
from mmjax.models.choices import Choice, ChoiceTable, as_tuples
from mmjax.models.encoder_configs import DTYPES
from mmjax.schema import Field

# Attributes that are not options: set by the model, or not expressible as config data.
_NOT_OPTIONS = ("parent", "name", "features", "dtype", "edges")
# Options whose values come from a table.
_CHOICES = {
    "combine": late.COMBINATIONS,
    "form": multiplicative.FORMS,
    "conv": tuple(graph.CONVOLUTIONS),
}


def _field(option: str, default) -> Field:
  if option in _CHOICES:
    return Field(str, choices=tuple(_CHOICES[option]))
  if isinstance(default, bool):
    return Field(bool)
  if isinstance(default, float):
    return Field(float, low=0.0, high=1.0 if option.endswith("rate") else None)
  if isinstance(default, int):
    return Field(int, low=0 if option == "fusion_layer" else 1)
  return Field(type(default))


def _options(module: type[nn.Module]) -> dict:
  return {
      f.name: (f.default, _field(f.name, f.default))
      for f in dataclasses.fields(module)
      if f.name not in _NOT_OPTIONS and f.default is not dataclasses.MISSING
  }


def _build(module: type[nn.Module]):
  def build(options, features: int, dtype) -> nn.Module:
    return module(features=features, **as_tuples(options), dtype=dtype)

  return build


def _heads_divide_width(options) -> list[str]:
  if "num_heads" in options and "width" in options and options["width"] % options["num_heads"]:
    return [f"width {options['width']} must be divisible by num_heads {options['num_heads']}"]
  return []


FUSIONS = ChoiceTable({
    name: Choice(kinds=None, options=_options(module), build=_build(module), problems=_heads_divide_width)
    for name, module in FUSION_MODULES.items()
})


def fusion_options(**overrides: Mapping) -> dict:
  """Every fusion's options with their defaults, updated by ``overrides[fusion] = {option: value}``.

  >>> fusion_options(low_rank=dict(rank=8))["low_rank"]
  {'rank': 8}
  """
  section = FUSIONS.section(None, next(iter(FUSIONS.choices)), **overrides)
  del section["name"]
  return section


def schema(options: Mapping) -> dict:
  """The schemas of ``fusion`` (a name) and of ``fusion_options`` (the fusions it lists)."""
  listed = FUSIONS.section_schema(None, options)
  return {"fusion": listed.pop("name"), "fusion_options": listed}


def problems(name: str, options: Mapping) -> list[str]:
  """Problems of the chosen fusion's options."""
  return FUSIONS.section_problems("model.fusion_options", {"name": name, **options})


def modality_count_problems(name: str, modalities) -> list[str]:
  """The fusion `name` cannot fuse that many `modalities` (GMU takes two, attention fusions two or more)."""
  if name not in FUSION_MODULES:
    return []  # the schema reports an unknown name
  fewest, most = FUSION_MODULES[name].modality_count
  if fewest <= len(modalities) and (most is None or len(modalities) <= most):
    return []
  wanted = f"exactly {fewest}" if most == fewest else f"at least {fewest}" if most is None else f"{fewest} to {most}"
  return [f"model.fusion: {name!r} fuses {wanted} modalities; model.modalities names {len(modalities)}: {list(modalities)}"]


def build_fusion(name: str, options: Mapping, features: int, dtype: str) -> nn.Module:
  """Fusion `name` with its `options` (``fusion_options``) and output width `features` (for late
  fusion: the number of classes)."""
  return FUSIONS.build({"name": name, **options}, features, DTYPES[dtype])


def module(name: str) -> type[nn.Module]:
  """The fusion module class `name` (its ``needs_tokens`` and ``outputs_predictions``)."""
  return FUSION_MODULES[name]

