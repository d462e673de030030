"""Config schemas as data, checked before anything is built or compiled.

A schema is a nested dict mirroring a config section: leaves are `Field`s, inner dicts are
sub-sections, and `Entries` are sections whose keys are free names (modalities, for example), each
value following one schema, or a schema chosen by the value itself (a modality's options depend on
its kind). `validate` reports every problem at once (unknown or missing keys with the valid ones
listed, wrong types, values outside a range or not among the choices).

>>> schema = {"loss": Field(str, choices=("clip", "siglip")), "steps": Field(int, low=1)}
>>> validate({"loss": "clip", "steps": 10}, schema)
>>> validate({"loss": "triplet", "step": 10}, schema)
Traceback (most recent call last):
...
mmjax.schema.ConfigError: invalid config:
  loss: 'triplet' is not a valid choice; valid choices: ['clip', 'siglip']
  step: unknown key; valid keys here: ['loss', 'steps']
  steps: missing; valid keys here: ['loss', 'steps']
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
  """A config that cannot be run; the message lists every problem found."""


@dataclasses.dataclass(frozen=True)
class Field:
  """One config value.

  Attributes:
    types: accepted Python type(s); ``int`` is accepted where ``float`` is.
    choices: if set, the valid values.
    low: inclusive lower bound for numbers (or for every item of a sequence).
    high: inclusive upper bound.
    items: for sequence fields (``types=(tuple, list)``), the type of every item.
    nullable: whether None is accepted.
    required: whether the key must be present (False for overrides of other settings).
  """

  types: type | tuple[type, ...]
  choices: Sequence[Any] | None = None
  low: float | None = None
  high: float | None = None
  items: type | None = None
  nullable: bool = False
  required: bool = True

  def problems(self, value: Any) -> list[str]:
    if value is None:
      return [] if self.nullable else ["must not be None"]
    types = self.types if isinstance(self.types, tuple) else (self.types,)
    if float in types:
      types = types + (int,)
    if isinstance(value, bool) and bool not in types:
      return [f"expected {_names(types)}, got bool {value!r}"]
    if not isinstance(value, types):
      return [f"expected {_names(types)}, got {type(value).__name__} {value!r}"]
    if self.choices is not None and value not in self.choices:
      return [f"{value!r} is not a valid choice; valid choices: {sorted(self.choices)}"]
    values = list(value) if self.items is not None else [value]
    if self.items is not None:
      wrong = [v for v in values if not isinstance(v, self.items) or isinstance(v, bool)]
      if wrong:
        return [f"every item must be {self.items.__name__}, got {list(value)!r}"]
    for v in values:
      if self.low is not None and v < self.low:
        return [f"{value!r} is below the minimum {self.low}"]
      if self.high is not None and v > self.high:
        return [f"{value!r} is above the maximum {self.high}"]
    return []


@dataclasses.dataclass(frozen=True)
class Entries:
  """A section of freely named entries, each following the same schema.

  Attributes:
    schema: a `Field` (entries are values), a nested schema dict (entries are sections), or a
      function from an entry's value to the schema it must follow.
    names: if set, the names an entry may have.

  >>> rates = {"dropout": Entries(Field(float, low=0.0, high=1.0), names=("image", "text"))}
  >>> validate({"dropout": {"image": 0.5, "audio": 2.0}}, rates)
  Traceback (most recent call last):
  ...
  mmjax.schema.ConfigError: invalid config:
    dropout.audio: unknown name; valid names here: ['image', 'text']
    dropout.audio: 2.0 is above the maximum 1.0
  """

  schema: "Field | Mapping | Callable[[Any], Field | Mapping]"
  names: Sequence[str] | None = None


def _names(types: tuple[type, ...]) -> str:
  return " or ".join(sorted({t.__name__ for t in types}))


def _entry_problems(value: Any, entries: Entries, path: str) -> list[str]:
  if not isinstance(value, Mapping):
    return [f"{path}: expected a section of named entries, got {value!r}"]
  found = []
  for name in sorted(value):
    if entries.names is not None and name not in entries.names:
      found.append(f"{path}.{name}: unknown name; valid names here: {sorted(entries.names)}")
    schema = entries.schema(value[name]) if callable(entries.schema) else entries.schema
    found.extend(_value_problems(value[name], schema, f"{path}.{name}"))
  return found


def _value_problems(value: Any, schema: "Field | Mapping | Entries", path: str) -> list[str]:
  if isinstance(schema, Entries):
    return _entry_problems(value, schema, path)
  if isinstance(schema, Mapping):
    if not isinstance(value, Mapping):
      return [f"{path}: expected a section with keys {sorted(schema)}, got {value!r}"]
    return _problems(value, schema, f"{path}.")
  return [f"{path}: {problem}" for problem in schema.problems(value)]


def _problems(config: Mapping, schema: Mapping, prefix: str) -> list[str]:
  found = []
  valid = sorted(schema)
  for key in sorted(set(config) | set(schema)):
    path = f"{prefix}{key}"
    if key not in schema:
      found.append(f"{path}: unknown key; valid keys here: {valid}")
    elif key not in config:
      if not isinstance(schema[key], Field) or schema[key].required:
        found.append(f"{path}: missing; valid keys here: {valid}")
    else:
      found.extend(_value_problems(config[key], schema[key], path))
  return found


def problems(config: Mapping, schema: Mapping) -> list[str]:
  """Every way `config` (a dict or an `ml_collections.ConfigDict`) departs from `schema`."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return _problems(config, schema, "")


def validate(config: Mapping, schema: Mapping) -> None:
  """Raises `ConfigError` listing every way `config` departs from `schema`.

  Args:
    config: a dict or an `ml_collections.ConfigDict`.
    schema: nested dict of `Field`s.
  """
  found = problems(config, schema)
  if found:
    raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in found))
