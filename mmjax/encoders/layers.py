"""Building blocks shared by the encoders: normalisation choices and masked pooling."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import normalization

# Normalisations an encoder config may name. Batch norm is left out on purpose: across a
# contrastive batch it leaks information between the samples being contrasted.
NORMS: dict[str, Callable[..., nn.Module] | None] = {
    "layer": normalization.LayerNorm,
    "rms": nn.RMSNorm,
    "group": functools.partial(nn.GroupNorm, num_groups=None, group_size=8),
    "none": None,
}


def make_norm(kind: str, dtype, name: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """A normalisation layer by name (see `NORMS`); ``"none"`` gives the identity."""
  if kind not in NORMS:
    raise ValueError(f"Unknown norm {kind!r}; valid choices: {sorted(NORMS)}.")
  factory = NORMS[kind]
  return (lambda x: x) if factory is None else factory(dtype=dtype, name=name)


def masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of ``x[B, L, D]`` over the positions where ``valid[B, L]`` holds (zero if none)."""
  weights = valid.astype(x.dtype)[..., None]
  return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1)


def first_position(x: jax.Array, valid: jax.Array) -> jax.Array:
  """``x[:, 0]``: the BOS / class token."""
  del valid
  return x[:, 0]


def last_valid_position(x: jax.Array, valid: jax.Array) -> jax.Array:
  """The last position where `valid` holds in each row (the EOS token for our tokenizers)."""
  last = jnp.maximum(jnp.sum(valid, axis=1) - 1, 0)
  return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]


POOLINGS = {"mean": masked_mean, "first": first_position, "last": last_valid_position}


def pooling(kind: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A pooling function by name (see `POOLINGS`)."""
  if kind not in POOLINGS:
    raise ValueError(f"Unknown pooling {kind!r}; valid choices: {sorted(POOLINGS)}.")
  return POOLINGS[kind]
