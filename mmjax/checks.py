"""Input checks shared by losses, encoders and models.

Every check raises a `ValueError` that names the offending modality (or argument), the expected
shape or dtype, and what it got, so a wrong input never turns into silent broadcasting deep inside
a compiled function. Checks only read static shapes and dtypes: they work under `jit`, `grad` and
`vmap` (where they see the per-example shapes).
"""

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

# A dimension given as a string must take the same size wherever the same string appears
# (for example "B" for a batch dimension shared by two modalities).
Dim = int | str | None


def _format(shape: Sequence[Dim]) -> str:
  inner = ", ".join("?" if d is None else str(d) for d in shape)
  return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_shape(
    name: str,
    array,
    expected: Sequence[Dim],
    bindings: dict[str, int] | None = None,
) -> dict[str, int]:
  """Checks that `array` has the `expected` shape; returns the symbolic dimensions it bound.

  Args:
    name: what the array is, as the user knows it, e.g. ``"modality 'image'"``.
    array: anything with a ``shape``.
    expected: one entry per dimension: an int (exact size), a string (a named size that must agree
      with every other use of that name, including those in `bindings`) or None (any size).
    bindings: sizes already bound to names by earlier checks.

  Returns:
    `bindings` extended with the names this shape bound.

  Raises:
    ValueError: naming `name`, the expected and the actual shape.

  >>> check_shape("modality 'text'", np.zeros((4, 16)), ("B", 16))
  {'B': 4}
  >>> check_shape("modality 'text'", np.zeros((4, 8)), ("B", 16))
  Traceback (most recent call last):
  ...
  ValueError: modality 'text': expected shape (B, 16), got (4, 8).
  """
  prior = dict(bindings or {})
  bindings = dict(prior)
  actual = tuple(np.shape(array))
  described = _format(expected)
  mismatch = len(actual) != len(expected)
  if not mismatch:
    for want, got in zip(expected, actual):
      if isinstance(want, str):
        if bindings.setdefault(want, got) != got:
          mismatch = True
      elif want is not None and want != got:
        mismatch = True
  if mismatch:
    bound = {k: v for k, v in prior.items() if k in expected}
    context = f" with {', '.join(f'{k}={v}' for k, v in bound.items())}" if bound else ""
    raise ValueError(f"{name}: expected shape {described}{context}, got {_format(actual)}.")
  return bindings


def check_dtype(name: str, array, kind: str) -> None:
  """Checks the dtype family of `array`: ``'float'``, ``'int'`` or ``'bool'``.

  >>> check_dtype("modality 'text'", np.zeros(3, np.float32), "int")
  Traceback (most recent call last):
  ...
  ValueError: modality 'text': expected an int array, got float32.
  """
  dtype = jnp.result_type(array)
  families = {
      "float": jnp.issubdtype(dtype, jnp.floating),
      "int": jnp.issubdtype(dtype, jnp.integer),
      "bool": dtype == jnp.bool_,
  }
  if kind not in families:
    raise ValueError(f"Unknown dtype kind {kind!r}; valid kinds: {sorted(families)}.")
  if not families[kind]:
    raise ValueError(f"{name}: expected a{'n' if kind == 'int' else ''} {kind} array, got {dtype}.")


def check_modalities(inputs: Mapping, required: Sequence[str], where: str) -> None:
  """Checks that every `required` modality is a key of `inputs`.

  >>> check_modalities({"image": 0}, ["image", "text"], "DualEncoder")
  Traceback (most recent call last):
  ...
  ValueError: DualEncoder: missing modality 'text'; got modalities ['image'], expected ['image', 'text'].
  """
  for modality in required:
    if modality not in inputs:
      raise ValueError(
          f"{where}: missing modality {modality!r}; got modalities {sorted(inputs)}, "
          f"expected {sorted(required)}."
      )
