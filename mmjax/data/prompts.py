"""Class prompts for zero-shot classification."""

from collections.abc import Sequence


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
  """``prompts[c][t]``: template ``t`` filled in for class ``c``.

  Templates may use ``{name}`` (the class name) and ``{index}`` (the class number).

  >>> class_prompts(["zero", "one"], ["a {name}", "the digit {index}"])
  [['a zero', 'the digit 0'], ['a one', 'the digit 1']]
  """
  return [[t.format(name=name, index=c) for t in templates] for c, name in enumerate(class_names)]
