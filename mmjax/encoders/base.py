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

from collections.abc import Sequence
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
