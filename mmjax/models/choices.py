"""Modules chosen by name in a config, with their options as data: the machinery behind the
encoder, decoder and fusion tables (`encoder_configs`, `decoder_configs`, `fusion_configs`).

A config section for one choice is ``{"name": <chosen>, <choice>: {options}, …}``: it holds the
options of every choice that fits (the modality's kind, for encoders and decoders), so
``--config.model.encoders.text.name=transformer`` switches from the command line and the
options of each stay at hand.

>>> table = ChoiceTable({"mlp": Choice(kinds=("vector",), options={"width": (8, Field(int, low=1))}, build=dict)})
>>> table.section("vector", "mlp", mlp=dict(width=4))
{'name': 'mlp', 'mlp': {'width': 4}}
>>> table.build(table.section("vector", "mlp"))
{'width': 8}
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from mmjax.schema import Field


@dataclasses.dataclass(frozen=True)
class Choice:
  """One entry of a `ChoiceTable`.

  Attributes:
    kinds: the modality kinds it applies to (None: any).
    options: option → (default, `Field`).
    build: ``build(options, *args, **kwargs)``: the module (arguments as the table's user passes).
    problems: checks across options, ``problems(options) -> [message]``.
    stateful: whether the module built with these options keeps mutable state (batch statistics).
  """

  kinds: tuple[str, ...] | None
  options: Mapping[str, tuple[Any, Field]]
  build: Callable[..., Any]
  problems: Callable[[Mapping], list[str]] = lambda options: []
  stateful: Callable[[Mapping], bool] = lambda options: False

  @property
  def defaults(self) -> dict:
    return {key: default for key, (default, _) in self.options.items()}

  @property
  def schema(self) -> dict:
    return {key: field for key, (_, field) in self.options.items()}


@dataclasses.dataclass(frozen=True)
class ChoiceTable:
  """Named `Choice`s, and the config sections that pick one of them."""

  choices: Mapping[str, Choice]

  def names_for(self, kind: str | None) -> tuple[str, ...]:
    """The choices that apply to modalities of `kind` (or to anything, for kind-free tables)."""
    return tuple(name for name, choice in self.choices.items() if choice.kinds is None or kind in choice.kinds)

  def section(self, kind: str | None, name: str, **overrides: Mapping) -> dict:
    """A section with `name` chosen and every applicable choice's options: defaults updated by
    ``overrides[choice] = {option: value}``."""
    valid = self.names_for(kind)
    if name not in valid:
      raise ValueError(f"{name!r} is not a valid choice{_for(kind)}; valid choices: {sorted(valid)}.")
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
      raise ValueError(f"{unknown} are not valid choices{_for(kind)}; valid choices: {sorted(valid)}.")
    for choice, options in overrides.items():
      extra = sorted(set(options) - set(self.choices[choice].options))
      if extra:
        raise ValueError(f"{choice}: unknown options {extra}; valid options: {sorted(self.choices[choice].options)}.")
    return {"name": name, **{choice: {**self.choices[choice].defaults, **overrides.get(choice, {})} for choice in valid}}

  def section_schema(self, kind: str | None, section: Mapping) -> dict:
    """The schema of a section: the chosen name, and the options of those applicable choices the
    section lists (any other key is reported as unknown)."""
    valid = self.names_for(kind)
    listed = set(section) if hasattr(section, "keys") else set()
    return {"name": Field(str, choices=valid), **{c: self.choices[c].schema for c in valid if c in listed}}

  def section_problems(self, path: str, section: Mapping) -> list[str]:
    """Problems of a schema-valid section across its options."""
    name = section["name"]
    if name not in section:
      return [f"{path}: the chosen {name!r} has no options section {path}.{name}"]
    return [f"{path}.{name}: {problem}" for problem in self.choices[name].problems(section[name])]

  def stateful(self, section: Mapping) -> bool:
    return self.choices[section["name"]].stateful(section[section["name"]])

  def build(self, section: Mapping, *args, **kwargs):
    """The chosen module, built from its options (and the caller's arguments)."""
    return self.choices[section["name"]].build(dict(section[section["name"]]), *args, **kwargs)


def _for(kind: str | None) -> str:
  return "" if kind is None else f" for kind {kind!r}"


def as_tuples(options: Mapping) -> dict:
  """Options with lists turned into tuples (linen module attributes must be hashable)."""
  return {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
