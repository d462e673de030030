"""Fixtures shared by the loss tests."""

import contextlib

import jax
import numpy as np
import pytest


@contextlib.contextmanager
def raises_exactly(message: str):
  """`pytest.raises(ValueError)` whose message is exactly `message`, so that a name changed or
  decorated anywhere in it (the function's, the argument's) fails the test. Notes that JAX adds to
  errors raised under a transformation (PEP 678 ``__notes__``) are not part of the message."""
  with pytest.raises(ValueError) as raised:
    yield raised
  assert str(raised.value) == message, f"message {str(raised.value)!r}, expected {message!r}"


def assert_trees_close(got, want) -> None:
  """See the `assert_close` fixture (a function for `chex.TestCase` classes, which take no fixtures)."""
  for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    want_leaf = np.asarray(want_leaf)
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-5 * max(np.max(np.abs(want_leaf)), 1e-3))


@pytest.fixture
def assert_close():
  """Asserts two pytrees equal within 1e-5, relative to the largest entry of each expected leaf.

  float32 losses sum up to B² terms, so a tolerance relative to each entry would fail on the
  gradient entries that are nearly zero.
  """
  return assert_trees_close
