"""What every encoder returns, and the input check every encoder starts with.

Every encoder is a linen module called as ``encoder(x, train=False, return_tokens=False)``:

* by default it returns the pooled ``[B, features]`` vector of each sample;
* with ``return_tokens=True`` it returns an `Encoded`: the same pooled vector plus its sequence of
  per-position features ``[B, T, features]`` (text tokens, image patches or feature-map cells,
  audio frames; one position for vectors and labels) and a ``bool[B, T]`` validity mask (False at
  padding). Token features go through the same output projection as the pooled vector, so the
  attention and transformer fusions can mix them with pooled features of other modalities.

Every encoder names the modality it encodes (its ``modality`` attribute) in its errors.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmjax import checks


class Encoded(NamedTuple):
  """An encoder's outputs with ``return_tokens=True``.

  Attributes:
    pooled: ``[B, features]``, what the encoder returns by default.
    tokens: ``[B, T, features]`` per-position features.
    valid: ``bool[B, T]``; False marks padding positions, which carry no information.
  """

  pooled: jax.Array
  tokens: jax.Array
  valid: jax.Array


def check_input(encoder: str, modality: str, x, expected: Sequence[checks.Dim], dtype_kind: str | None = None) -> None:
  """Raises a `ValueError` naming the encoder and modality when `x` does not fit `expected`.

  Args:
    encoder: the encoder's class name.
    modality: the modality it encodes.
    x: the input.
    expected: per-dimension sizes as in `mmjax.checks.check_shape` (None: any size).
    dtype_kind: ``"float"``, ``"int"`` or None (any dtype).

  >>> import numpy as np
  >>> check_input("ConvEncoder", "image", np.zeros((2, 8, 8)), (None, None, None, None))
  Traceback (most recent call last):
  ...
  ValueError: ConvEncoder: modality 'image': expected shape (?, ?, ?, ?), got (2, 8, 8).
  """
  where = f"{encoder}: modality {modality!r}"
  checks.check_shape(where, x, expected)
  if dtype_kind is not None:
    checks.check_dtype(where, x, dtype_kind)


def all_valid(tokens: jax.Array) -> jax.Array:
  """``bool[B, T]`` of True: every position of ``tokens[B, T, D]`` is real (images, audio)."""
  return jnp.ones(tokens.shape[:2], jnp.bool_)


def project_outputs(
    projection: Callable[[jax.Array], jax.Array],
    pooled: jax.Array,
    tokens: jax.Array,
    return_tokens: bool,
    valid: jax.Array | None = None,
) -> jax.Array | Encoded:
  """An encoder's return value: its output `projection` applied to the pooled features and, when
  `return_tokens` is set, to the token features too, so both live in the same space.

  Args:
    projection: the encoder's output layer, ``[..., D] -> [..., features]``.
    pooled: ``[B, D]`` pooled features.
    tokens: ``[B, T, D]`` per-position features (only projected when `return_tokens` is set).
    return_tokens: return an `Encoded` rather than the projected pooled features alone.
    valid: ``bool[B, T]``; None means every position is valid.

  Returns:
    ``projection(pooled)`` ``[B, features]``, or with `return_tokens` an `Encoded` of it, the
    projected tokens ``[B, T, features]`` and `valid`.

  >>> double = lambda x: 2 * x
  >>> encoded = project_outputs(double, jnp.ones((2, 3)), jnp.ones((2, 5, 3)), return_tokens=True)
  >>> encoded.pooled.shape, encoded.tokens.shape, bool(encoded.valid.all())
  ((2, 3), (2, 5, 3), True)
  >>> project_outputs(double, jnp.ones((2, 3)), jnp.ones((2, 5, 3)), return_tokens=False).shape
  (2, 3)
  """
  pooled = projection(pooled)
  if not return_tokens:
    return pooled
  tokens = projection(tokens)
  return Encoded(pooled, tokens, all_valid(tokens) if valid is None else valid)
